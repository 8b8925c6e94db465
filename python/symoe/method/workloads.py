"""Synthetic workloads for benchmarks and the planning demo (clearly not measured data)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .routing import Profiles


def skewed_profiles(models: Sequence[str], categories: Sequence[str], seed: int = 0,
                    keywords_per_category: int = 10) -> Profiles:
    """Synthetic skill profiles as skill routing produces them: a few strong generalists, three
    specialists per category, noise elsewhere. Keywords are ``<category>-<i>``."""
    rng = np.random.default_rng(seed)
    M, C = len(models), len(categories)
    general = np.zeros(M)
    general[: min(M, 6)] = [0.6, 0.45, 0.3, 0.15, 0.1, 0.05][: min(M, 6)]
    spec = np.zeros((M, C))
    for c in range(C):
        spec[rng.choice(M, min(3, M), replace=False), c] = 4
    mat = rng.normal(-1, 2, size=(M, C * keywords_per_category)) + general[:, None]
    mat += np.repeat(spec, keywords_per_category, axis=1)
    vocab = tuple(f"{c}-{i}" for c in categories for i in range(keywords_per_category))
    return Profiles(tuple(models), vocab, np.round(mat).astype(np.int64))


def category_keywords(categories_of_questions: Sequence[str], seed: int = 0,
                      keywords_per_category: int = 10) -> list[list[str]]:
    """2-5 synthetic keywords per question, drawn from its category's keywords."""
    rng = np.random.default_rng(seed + 1)
    return [[f"{c}-{int(j)}" for j in rng.integers(0, keywords_per_category, size=rng.integers(2, 6))]
            for c in categories_of_questions]
