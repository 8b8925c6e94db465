"""Runs seen correct a measured curve: the median ratio of their measured to predicted seconds (each
predicted from the model's figures with its lengths scaled to that run's mean) rescales the model's
rates, so a calibration on a quiet machine and runs under load (or the reverse) meet in the middle of
what runs actually take."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict

from .spec import ModelSpec

if TYPE_CHECKING:
    from .pool import Config

MIN_RUNS = 3            # fewer runs seen (runs, not their generate steps): the calibration's figures alone
FACTOR_RANGE = (0.25, 4.0)  # a ratio beyond this says the figures are for other conditions, not slower rates: disregarded


class Fit(NamedTuple):
    """The rescaling runs seen give: rates divided by ``factor``, from ``runs`` runs."""

    factor: float
    runs: int


class RunSeen(BaseModel):
    """One generate step of a finished run: its requests, their prompt and output tokens in all,
    its seconds, the role and the engine share (``profile.engine_share``) it ran on."""

    model_config = ConfigDict(extra="ignore")
    n: int
    prompt_tokens: int
    tokens: int
    seconds: float
    role: str
    share: str
    run: str = ""  # the run's id (observe): MIN_RUNS counts runs, not their steps


def rate_factor(cfg: Config, m: ModelSpec, runs: Sequence[RunSeen], share: str) -> Fit | None:
    """Measured / predicted generation seconds of ``m``'s generate steps seen on ``share`` (median),
    or None with steps of fewer than :data:`MIN_RUNS` runs, no measured curve, or a median beyond
    :data:`FACTOR_RANGE`."""
    seen = [r for r in runs if r.share == share and r.n > 0 and r.tokens > 0 and r.role in ("expert", "aggregate")]
    count = len({r.run for r in seen})
    if count < MIN_RUNS or m.decode_curve is None:
        return None
    ratios = step_ratios(cfg, m, seen)
    f = float(np.median(ratios)) if ratios else 0.0
    return Fit(f, count) if FACTOR_RANGE[0] <= f <= FACTOR_RANGE[1] else None


def step_ratios(cfg: Config, m: ModelSpec, seen: Sequence[RunSeen]) -> list[float]:
    """Measured / predicted seconds (overhead aside) of each generate step seen, predicted from
    ``m``'s figures with its lengths scaled to that step's mean."""
    ratios = []
    for r in seen:
        q = getattr(m, f"{r.role}_output_quantiles") or (r.tokens / r.n,)
        mean = float(np.mean(q)) or 1.0
        upd: dict[str, Any] = {f"{r.role}_prompt_tokens": r.prompt_tokens / r.n, f"{r.role}_output_tokens": r.tokens / r.n,
                               f"{r.role}_output_quantiles": tuple(x * r.tokens / r.n / mean for x in q)}
        one = replace(m, **upd)
        work = replace(cfg, models=(one,)).run_seconds(m.name, r.role, r.n) - m.overhead_s
        if work > 0:
            ratios.append(max(r.seconds - m.overhead_s, 1e-3) / work)
    return ratios


def scaled(m: ModelSpec, factor: float) -> ModelSpec:
    """``m`` with its prefill and decode rates divided by ``factor`` (its runs ``factor`` times longer)."""
    curve = None if m.decode_curve is None else tuple(x / factor for x in m.decode_curve)
    return replace(m, decode_curve=curve, prefill_tps=m.prefill_tps / factor, decode_tps=m.decode_tps / factor,
                   stream_tps=m.stream_tps / factor)
