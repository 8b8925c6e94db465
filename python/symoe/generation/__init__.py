"""Generation: the engine interface and its implementations (request and result records are
re-exported from ``symoe.records``), batch generation for the pipeline's stages (keywords,
profiling, aggregator selection) and load/offload timing. Imports store, records, config and below."""

from ..records import Generation, Request, Sampling, SamplingParams, seed_for
from .engine import BatchInfo, Clock, Engine, EngineError, EngineTimeout, ModelSettings

__all__ = ["BatchInfo", "Clock", "Engine", "EngineError", "EngineTimeout", "Generation", "ModelSettings", "Request",
           "Sampling", "SamplingParams", "seed_for"]
