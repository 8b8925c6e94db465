"""The whole method as one run: keywords -> matching -> routing -> plan -> experts -> aggregation
-> grading, with every generation in the durable store so any stage resumes."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np

from . import _core
from .datasets import Question
from .errors import SymoeError
from .execution import RunOptions, RunReport, run_plan
from .generation import Sampling
from .keywords import annotate
from .matching import Embedder, match_keywords
from .models import check_models
from .planning import Config, Plan, plan
from .routing import Assignment, Profiles, route
from .store import Store

Baseline = Literal["none", "single-best", "top-k", "random", "majority"]


@dataclass(frozen=True)
class Task:
    """Per-task choices the pipeline produced: the aggregator and the keyword model."""

    name: str
    aggregator: str
    keyword_model: str
    candidates: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @classmethod
    def from_json(cls, path: str | Path) -> Task:
        try:
            d = json.loads(Path(path).read_text())
            return cls(d["name"], d["aggregator"], d["keyword_model"], d.get("candidates", {}), d.get("note", ""))
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"task config {path}: {e}") from e

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1))


def bundled(name: str) -> Path:
    return Path(str(resources.files("symoe") / "data" / name))


@dataclass
class PipelineResult:
    report: RunReport
    plan: Plan
    assignment: Assignment
    keywords: dict[str, list[str]]
    matched: dict[str, list[str]]
    stage_seconds: dict[str, float]


def check_pool(profiles: Profiles, cfg: Config, task: Task) -> None:
    for m in profiles.models:
        if m not in cfg.names:
            raise ValueError(f"profile for model {m!r}, which is not in the pool ({', '.join(cfg.names)})")
    for what, m in (("aggregator", task.aggregator), ("keyword model", task.keyword_model)):
        if m not in cfg.names:
            raise ValueError(f"task {task.name}: {what} {m!r} is not in the pool")


def check_run(questions: Sequence[Question], cfg: Config, profiles: Profiles, task: Task, sampling: Sampling,
              k: int, seed: int, baseline: Baseline, rare_threshold: float = 0.05,
              similarity_floor: float | None = None) -> None:
    """Everything a run can be refused for, checked before the keyword stage loads its model
    (routing would find a bad k or seed only after keywords and matching)."""
    check_pool(profiles, cfg, task)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= _core.MAX_K:
        raise SymoeError(f"k must be an integer in [1, {_core.MAX_K}], got {k!r}")
    if baseline == "top-k" and k > len(profiles.models):
        raise SymoeError(f"k={k} for the top-k baseline, but only {len(profiles.models)} models are profiled")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise SymoeError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    if not (math.isfinite(rare_threshold) and rare_threshold <= 1):
        raise SymoeError(f"rare_threshold must be finite and at most 1, got {rare_threshold!r}")
    if similarity_floor is not None and not math.isfinite(similarity_floor):
        raise SymoeError(f"similarity_floor must be finite, got {similarity_floor!r}")
    for what, v in (("max_tokens", sampling.max_tokens), ("aggregate_max_tokens", sampling.aggregate_max_tokens)):
        if v < 1:
            raise SymoeError(f"{what} must be >= 1, got {v}")
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            raise SymoeError(f"questions: duplicate question id {q.id!r}")
        seen.add(q.id)
    used = list(profiles.models)
    if baseline in ("none", "majority"):
        used.append(task.keyword_model)
    if baseline not in ("single-best", "majority"):
        used.append(task.aggregator)
    check_models(cfg, used)


def run_pipeline(questions: Sequence[Question], cfg: Config, profiles: Profiles, task: Task, store: Store,
                 out_dir: str | Path, sampling: Sampling, k: int = 3, seed: int = 0, rare_threshold: float = 0.05,
                 baseline: Baseline = "none", similarity_floor: float | None = None,
                 options: RunOptions = RunOptions()) -> PipelineResult:
    check_run(questions, cfg, profiles, task, sampling, k, seed, baseline, rare_threshold, similarity_floor)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SymoeError(f"output folder {out}: {e.strerror}") from e
    times: dict[str, float] = {}
    ids = [q.id for q in questions]
    kws: dict[str, list[str]] = {}
    matched: dict[str, list[str]] = {}
    t = time.perf_counter()
    if baseline in ("none", "majority"):
        kws = annotate(questions, cfg, task.keyword_model, store, out, sampling, progress=options.progress)
        times["keywords"] = time.perf_counter() - t
        t = time.perf_counter()
        matched = match_keywords(kws, profiles.vocabulary, Embedder(out.parent / "embeddings.npz"), similarity_floor)
        times["matching"] = time.perf_counter() - t
        t = time.perf_counter()
        a = route(profiles, [matched[i] for i in ids], k=k, seed=seed, rare_threshold=rare_threshold, question_ids=ids)
    else:
        acc = profiles.accuracy
        ranked = sorted(profiles.models, key=lambda m: (-acc.get(m, 0.0), profiles.models.index(m)))
        if baseline == "single-best":
            experts = np.full((len(ids), 1), profiles.models.index(ranked[0]))
        elif baseline == "top-k":
            experts = np.tile([profiles.models.index(m) for m in ranked[:k]], (len(ids), 1))
        else:  # random: uniform draws, same counter-based stream
            flat = Profiles(profiles.models, ("-",), np.zeros((len(profiles.models), 1), dtype=np.int64))
            experts = route(flat, [[] for _ in ids], k=k, seed=seed, rare_threshold=0).experts
        a = Assignment(profiles.models, experts, tuple(ids), seed)
    times["routing"] = time.perf_counter() - t
    a.save(out / "assignment.jsonl")
    t = time.perf_counter()
    agg = None if baseline in ("single-best", "majority") else task.aggregator
    p = plan(a, cfg, aggregator=agg)
    p.question_hashes = tuple(q.text_hash for q in questions)
    p.to_json(out / "plan.json")
    times["planning"] = time.perf_counter() - t
    t = time.perf_counter()
    report = run_plan(p, questions, store, out / "run", sampling, options=options)
    times["generation"] = time.perf_counter() - t
    with open(out / "results.jsonl", "w") as f:
        for qu, r in zip(questions, report.results):
            f.write(json.dumps({"id": r.id, "keywords": kws.get(qu.id, []), "matched_keywords": matched.get(qu.id, []),
                                "experts": r.experts, "expert_answers": r.expert_answers, "aggregator": r.aggregator,
                                "final_answer": r.final_answer, "gold": r.gold, "correct": r.correct}) + "\n")
    summary = {"baseline": baseline, "questions": len(questions), "accuracy": report.accuracy,
               "experts_used": sorted({e for r in report.results for e in r.experts}),
               "loads": sum(1 for s in report.steps if s.kind == "load"), "makespan_s": report.makespan,
               "predicted_makespan_s": report.predicted_makespan, "stage_seconds": times,
               "generated": report.generated, "reused": report.reused}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return PipelineResult(report, p, a, kws, matched, times)
