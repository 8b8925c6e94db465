"""The live Ray side: joining a cluster, discovering devices and lost nodes, the Ray engine and
actor. Ray is imported only when a live cluster is asked. Imports generation, config and below;
never execution.
"""
