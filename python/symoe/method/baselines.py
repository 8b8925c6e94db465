"""The experts of the baselines that do not route by keywords (single-best, self-moa, top-k,
random): known before any keyword is generated, so a run's forecast plans them exactly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .routing import Assignment, Profiles, route


def fixed_assignment(profiles: Profiles, ids: Sequence[str], k: int, seed: int, baseline: str) -> Assignment:
    """``baseline``'s experts for the questions ``ids`` (models ranked by profiled accuracy)."""
    acc = profiles.accuracy
    ranked = sorted(profiles.models, key=lambda m: (-acc.get(m, 0.0), profiles.models.index(m)))
    if baseline == "single-best":
        experts = np.full((len(ids), 1), profiles.models.index(ranked[0]))
    elif baseline == "self-moa":  # the best model sampled k times (arXiv 2502.00674), then aggregated
        experts = np.full((len(ids), k), profiles.models.index(ranked[0]))
    elif baseline == "top-k":
        experts = np.tile([profiles.models.index(m) for m in ranked[:k]], (len(ids), 1))
    elif baseline == "random":  # uniform draws, same counter-based stream
        flat = Profiles(profiles.models, ("-",), np.zeros((len(profiles.models), 1), dtype=np.int64))
        experts = route(flat, [[] for _ in ids], k=k, seed=seed, rare_threshold=0).experts
    else:
        raise ValueError(f"baseline {baseline!r} routes by keywords: its experts are not fixed")
    return Assignment(profiles.models, experts, tuple(ids), seed)
