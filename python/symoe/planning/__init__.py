"""Planning: the plan type and its simulation, the planner, steps, endpoint plans, the polish
(constraint solver) and its bound, and input checks. Imports method, config, generation and below;
never execution, evaluation or the pipeline.
"""
