"""Generation: typed requests and results, the engine interface and its implementations, and
batch generation for the pipeline's stages (keywords, profiling, aggregator selection)."""

from .engine import BatchInfo, Clock, Engine, EngineError, EngineTimeout, ModelSettings
from .requests import Generation, Request, Requests, Sampling, SamplingParams, seed_for

__all__ = ["BatchInfo", "Clock", "Engine", "EngineError", "EngineTimeout", "Generation", "ModelSettings", "Request",
           "Requests", "Sampling", "SamplingParams", "seed_for"]
