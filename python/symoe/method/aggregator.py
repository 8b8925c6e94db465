"""Choosing the task's aggregator (SYMBOLIC_MOE.md section 5): a synthetic benchmark built from
the profiling generations (per validation question one correct and two wrong chains of thought,
shuffled), answered by every candidate; the best one wins. Blanks as in the authors' code: an
empty correct answer where none exists, and two empty wrong ones where fewer than two exist."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from ..config.pool import Config
from ..generation import Engine, Sampling
from ..generation.batch import generate_jobs
from ..store import Store
from .datasets import Question
from .grading import answer_of, is_correct
from .requests import Requests


def synthetic_items(questions: Sequence[Question], records: Sequence[Mapping[str, Any]], seed: int = 0
                    ) -> list[tuple[Question, list[str]]]:
    """Per question: one correct and two wrong responses from the pool's profiling runs, shuffled
    (a lone wrong response is dropped for two blanks, as the authors' code does)."""
    rng = random.Random(seed)
    by_q: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        by_q.setdefault(r["question"], []).append(r)
    items = []
    for q in questions:
        rs = by_q.get(q.id, [])
        right = [r["text"] for r in rs if r["correct"]]
        wrong = [r["text"] for r in rs if not r["correct"]]
        chosen = [rng.choice(right) if right else ""] + (rng.sample(wrong, 2) if len(wrong) >= 2 else ["", ""])
        rng.shuffle(chosen)
        items.append((q, chosen))
    return items


def select_aggregator(questions: Sequence[Question], records: Sequence[Mapping[str, Any]], cfg: Config, store: Store,
                      engine: Engine, sampling: Sampling, candidates: Sequence[str] | None = None,
                      progress: bool = True) -> tuple[str, dict[str, float]]:
    """Score every pool model as aggregator on the synthetic benchmark; returns the best and all scores."""
    candidates = list(candidates or cfg.names)
    items = synthetic_items(questions, records, sampling.seed)
    if not items:
        raise ValueError("the validation split is empty: no synthetic aggregation benchmark")
    build = Requests(cfg, sampling)
    jobs = [(m, [build.aggregator_benchmark(m, q, resp) for q, resp in items]) for m in candidates]
    gens = generate_jobs(cfg, jobs, store, engine, progress, "aggregator benchmark")
    table = {}
    for m, reqs in jobs:
        ok = [is_correct(answer_of(gens[r.key].text, q), q.gold, q.kind) for (q, _), r in zip(items, reqs)]
        table[m] = sum(ok) / len(ok)
    best = max(candidates, key=lambda m: (table[m], -candidates.index(m)))
    return best, table
