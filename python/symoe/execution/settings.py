"""One run's settings, from ``symoe run`` (or ``SymbolicMoE``'s arguments) to the pipeline: the
method's choices (k, seed, preset, thresholds, baseline), the sampling and the run options, checked
once when made, with the preset resolved once (:meth:`RunSettings.of`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from .._core import MAX_K
from ..config.presets import PRESETS, RARE_THRESHOLD, Preset
from ..config.presets import preset as get_preset
from ..errors import SymoeError
from ..records import Sampling
from .scheduler import RunOptions

if TYPE_CHECKING:
    from ..config.pool import Config

Baseline = Literal["none", "single-best", "top-k", "random", "majority", "self-moa", "oracle"]
BASELINES: tuple[str, ...] = Baseline.__args__  # type: ignore[attr-defined]
NO_AGGREGATOR = ("single-best", "majority", "oracle")  # baselines whose final answer is not aggregated
ROUTED = ("none", "majority", "oracle")                 # baselines that route by keywords as Symbolic-MoE does


@dataclass(frozen=True)
class RunSettings:
    """Everything a run is asked to do, checked when made (a bad value is refused before any
    stage starts). ``preset``: "symoe" or "reference" (the authors' code, see
    :mod:`symoe.config.presets`), whose rare-expert filter ``rare_threshold`` holds unless given;
    ``skip_agreed``: the experts run first, and aggregation is planned only where their k
    extracted answers differ; ``optimize_s``: the plans' polish budget (``plan()``'s; None: its
    default, 0: the heuristic plan alone)."""

    sampling: Sampling = Sampling()
    k: int = 3
    seed: int = 0
    preset: Preset = PRESETS["symoe"]
    rare_threshold: float = RARE_THRESHOLD
    similarity_floor: float | None = None
    baseline: Baseline = "none"
    skip_agreed: bool = False
    optimize_s: float | None = None
    options: RunOptions = field(default_factory=RunOptions)

    @classmethod
    def of(cls, cfg: Config, *, preset: str = "symoe", rare_threshold: float | None = None,
           sampling: Sampling | None = None, max_tokens: int | None = None, seed: int = 0,
           **kw: object) -> RunSettings:
        """The settings for a run on pool ``cfg``: ``preset`` resolved by name, ``rare_threshold``
        the preset's unless given, ``sampling`` the pool's (its ``[engine] max_tokens`` unless
        ``max_tokens`` is given) unless given; the other fields as named in ``kw``."""
        pre = get_preset(preset)
        return cls(sampling=sampling or Sampling.for_pool(cfg, max_tokens, seed), seed=seed, preset=pre,
                   rare_threshold=pre.rare_threshold if rare_threshold is None else rare_threshold,
                   **kw)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise SymoeError(f"baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}")
        if self.skip_agreed and self.baseline in NO_AGGREGATOR:
            raise SymoeError(f"skip_agreed: the {self.baseline} baseline runs no aggregator, so there is nothing to skip")
        k, seed = self.k, self.seed
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
            raise SymoeError(f"k must be an integer in [1, {MAX_K}], got {k!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
            raise SymoeError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        if not (math.isfinite(self.rare_threshold) and self.rare_threshold <= 1):
            raise SymoeError(f"rare_threshold must be finite and at most 1, got {self.rare_threshold!r}")
        if self.similarity_floor is not None and not math.isfinite(self.similarity_floor):
            raise SymoeError(f"similarity_floor must be finite, got {self.similarity_floor!r}")
        s = self.sampling
        for what, v in (("max_tokens", s.max_tokens), ("aggregate_max_tokens", s.aggregate_max_tokens)):
            if v < 1:
                raise SymoeError(f"{what} must be >= 1, got {v}")
