"""One model of the pool and one device, as the planner and the engines see them (the TOML tables
they come from: :mod:`.pool_file`; the whole pool: :mod:`.pool`)."""

from __future__ import annotations

from typing import Literal

from pydantic import FiniteFloat, PositiveInt
from pydantic.dataclasses import dataclass

from .pool_file import CostDefaults, DevicesTable, NonNeg, Rate, Seconds

__all__ = ["ModelSpec", "Device"]

_COST = CostDefaults()


@dataclass(frozen=True)
class ModelSpec:
    """One model of the pool and its cost-model figures (bytes, seconds, tokens per second).

    ``load_s`` is a cold start; ``park_s``/``wake_s`` the sleep-mode offload and return
    (``park_s < 0``: not supported). ``decode_tps``/``prefill_tps`` hold for a saturated batch,
    ``stream_tps`` for one sequence alone. ``max_tokens``, ``max_model_len`` and
    ``trust_remote_code`` are engine settings (None: the run's and ``[engine]``'s). The
    ``*_tokens`` figures are this model's expected tokens per request by role (reasoning models
    write far more than others; None: the config's ``[tokens]``). The measured form (see
    :mod:`.pool_file`): ``decode_curve`` (tokens/s at 1, 2, 4, ... sequences in flight),
    ``max_seqs`` and the ``*_output_quantiles``; with any of them a run is timed by its drain.
    """

    name: str
    weight_bytes: NonNeg
    path: str | None = None
    extra_bytes: NonNeg = 0.0
    load_s: Seconds = 0.0
    unload_s: Seconds = 0.0
    park_s: FiniteFloat = -1.0
    wake_s: Seconds = 0.0
    overhead_s: Seconds = _COST.overhead_s
    prefill_tps: Rate = _COST.prefill_tps
    decode_tps: Rate = _COST.decode_tps
    stream_tps: Rate = _COST.stream_tps
    chat: bool = True  # instruct model with a chat template (False: plain completion)
    max_tokens: PositiveInt | None = None
    max_model_len: PositiveInt | None = None
    trust_remote_code: bool = False  # the model's own code from its folder (GLM-4, InternLM3)
    expert_prompt_tokens: NonNeg | None = None
    expert_output_tokens: NonNeg | None = None
    aggregate_prompt_tokens: NonNeg | None = None
    aggregate_output_tokens: NonNeg | None = None
    endpoint: str | None = None  # remote: behind this OpenAI-compatible server (no local memory)
    served_name: str | None = None
    api_key_env: str | None = None  # the variable's NAME; the key itself is read at run time only
    max_concurrency: PositiveInt = 8
    serve: Literal["vllm"] | None = None
    decode_curve: tuple[Rate, ...] | None = None
    max_seqs: PositiveInt | None = None
    expert_output_quantiles: tuple[NonNeg, ...] | None = None
    aggregate_output_quantiles: tuple[NonNeg, ...] | None = None
    keywords_output_quantiles: tuple[NonNeg, ...] | None = None  # the keyword stage only (Python forecast)
    keywords_prompt_tokens: NonNeg | None = None  # a keyword request's prompt (None: its expert prompt's)

    @property
    def resident_bytes(self) -> float:
        """Device memory the model holds while loaded: weights plus engine extras."""
        return self.weight_bytes + self.extra_bytes


@dataclass(frozen=True)
class Device:
    """One device's memory and abilities."""

    memory_bytes: Rate
    overlap_load: bool = DevicesTable.model_fields["overlap_load"].default  # load beside a generation
    host_bytes: NonNeg = 0.0  # host memory for weights parked by sleep mode
    endpoint: str | None = None  # plans only: the virtual device of this endpoint model
