"""The tiny model pool: fetching and converting weights, and load/offload timing. Imports only
config and below.
"""
