"""Evaluation: results read back from the store, comparison tables. Imports execution, planning,
method and below; never the pipeline or the CLI.
"""
