"""The tiny model pool: fetching and converting weights (load/offload timing is
``symoe.generation.loadbench``). Imports only config and below.
"""
