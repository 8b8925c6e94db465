"""The whole method as one run: keywords -> matching -> routing -> plan -> experts -> aggregation
-> grading, with every generation in the durable store so any stage resumes."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np

from .datasets import Question
from .execution import RunOptions, RunReport, run_plan
from .generation import Sampling
from .keywords import annotate
from .matching import Embedder, match_keywords
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


def run_pipeline(questions: Sequence[Question], cfg: Config, profiles: Profiles, task: Task, store: Store,
                 out_dir: str | Path, sampling: Sampling, k: int = 3, seed: int = 0, rare_threshold: float = 0.05,
                 baseline: Baseline = "none", similarity_floor: float | None = None,
                 options: RunOptions = RunOptions()) -> PipelineResult:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_pool(profiles, cfg, task)
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
