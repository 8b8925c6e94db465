"""Model profiles (SYMBOLIC_MOE.md section 2): every pool model answers every validation question
once; ``profile[m][kw] += 1`` if right, ``-= 1`` if wrong, for each keyword of the question."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config.pool import Config
from ..generation import Engine, Sampling
from ..generation.batch import generate_jobs
from ..store import Store
from .datasets import Question
from .grading import answer_of, is_correct
from .requests import Requests
from .routing import Profiles


def build_profiles(records: Sequence[Mapping[str, Any]], keywords: Mapping[str, Sequence[str]],
                   models: Sequence[str]) -> Profiles:
    """records: {model, question, correct}. Keywords may repeat within a question; each counts."""
    prof: dict[str, dict[str, int]] = {m: {} for m in models}
    right: dict[str, list[bool]] = {m: [] for m in models}
    for r in records:
        m = r["model"]
        if m not in prof:
            raise ValueError(f"profiling record for model {m!r}, which is not in the pool")
        right[m].append(bool(r["correct"]))
        for kw in keywords.get(r["question"], ()):
            prof[m][kw] = prof[m].get(kw, 0) + (1 if r["correct"] else -1)
    acc = {m: (sum(v) / len(v) if v else 0.0) for m, v in right.items()}
    if not any(prof.values()):
        # Every validation question lacked keywords: keep a (zero) profile so routing stays defined.
        return Profiles.from_dict({m: {"(none)": 0} for m in models}, acc)
    return Profiles.from_dict(prof, acc)


def profile_pool(questions: Sequence[Question], keywords: Mapping[str, Sequence[str]], cfg: Config, store: Store,
                 engine: Engine, sampling: Sampling, models: Sequence[str] | None = None,
                 progress: bool = True) -> tuple[Profiles, list[dict[str, Any]]]:
    """Profiles and the graded profiling generations (kept: aggregator selection needs them)."""
    if not questions:
        raise ValueError("the validation split is empty: nothing to profile on")
    models = list(models or cfg.names)
    build = Requests(cfg, sampling)
    jobs = [(m, [build.expert(m, q, 0) for q in questions]) for m in models]
    gens = generate_jobs(cfg, jobs, store, engine, progress, "profiling")
    records = []
    for m, reqs in jobs:
        for q, r in zip(questions, reqs):
            text = gens[r.key].text
            ans = answer_of(text, q)
            records.append({"model": m, "question": q.id, "answer": ans, "gold": q.gold,
                            "correct": is_correct(ans, q.gold, q.kind), "text": text})
    return build_profiles(records, keywords, models), records


def save_records(records: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Write graded profiling generations as JSONL."""
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Read graded profiling generations."""
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
