"""Checks of planning input that need the pool's names and files, which the C++ core never sees
(it would name a model by its index, or a plan file's inner field)."""

from __future__ import annotations

import numpy as np

from ..config.pool import GB, Config
from ..errors import SymoeError


def check_fits(config: Config, experts: np.ndarray, aggregator: np.ndarray | None) -> None:
    """Refuse a model the plan uses that no device can hold, naming it and the keys that set its size."""
    biggest = max(d.memory_bytes for d in config.devices)
    used = np.unique(experts if aggregator is None else np.concatenate([experts.ravel(), aggregator]))
    for m in (config.models[i] for i in used if i >= 0):
        if m.resident_bytes > biggest * (1 + 1e-12):  # the core's own tolerance (cpp/plan.hpp fits)
            where = f"{config.source}: " if config.source else ""
            raise SymoeError(
                f"{where}model {m.name!r} needs {m.resident_bytes / GB:.2f} GB (weights {m.weight_bytes / GB:.2f} GB, set "
                f"by weight_bytes, weight_gb or params_b x dtype_bytes in its [[model]] entry, plus engine extras "
                f"{m.extra_bytes / GB:.2f} GB, set by extra_bytes, extra_gb or extra_fraction) but the largest device "
                f"has {biggest / GB:.2f} GB ([devices] memory_gb, or --memory-gb): use devices with more memory or "
                f"leave the model out of the pool")


def check_plan_shape(source: str, k: int, experts: object, hashes: tuple[object, ...]) -> None:
    """Refuse a plan file whose ``k`` disagrees with its experts, or whose question hashes do not
    match its questions, saying what the plan was made for."""
    rows = np.asarray(experts, dtype=object)
    if rows.ndim == 2 and rows.shape[1] != k:
        raise SymoeError(f"plan {source} was made with k={rows.shape[1]} (experts per question) but its 'k' says {k}: "
                         f"a plan runs with the k it was made with; for k={k}, route again with -k {k} and make a new "
                         f"plan with symoe plan")
    n = len(rows) if rows.ndim == 2 else rows.size // max(k, 1)
    if hashes and len(hashes) != n:
        raise SymoeError(f"plan {source} holds {n} questions but records {len(hashes)} question texts "
                         f"(question_hashes): the file was edited or is for other questions; make the plan again "
                         f"with symoe plan --questions")
    if not all(isinstance(h, str) for h in hashes):
        raise SymoeError(f"plan {source}: question_hashes must be strings (Question.text_hash)")
