"""The Symbolic-MoE method itself: datasets, prompts, keywords, matching, profiling, aggregator
choice, routing, answer extraction and grading. Imports config, generation, store and below; never
planning, execution or the pipeline.
"""
