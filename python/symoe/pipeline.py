"""The whole method as one run: keywords -> matching -> routing -> plan -> experts -> aggregation
-> grading, with every generation in the durable store so any stage resumes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .config.pool import Config
from .errors import SymoeError, require
from .evaluation.from_store import (
    agreed_answer,
    grade_from_store,
    missing_experts,
    result_rows,
    write_jsonl,
)
from .execution import RunReport, run_plan
from .execution.launch import Launch, plan_engines, stage_engine
from .execution.prediction import Comparison, RunPrediction, compare, predict_run
from .execution.settings import BASELINES, NO_AGGREGATOR, ROUTED, Baseline, RunSettings
from .generation import Clock, Engine, ModelSettings, Sampling
from .method.baselines import fixed_assignment
from .method.datasets import Question
from .method.embedding_speed import observe_embedder
from .method.keywords import annotate
from .method.matching import Embedder, match_keywords
from .method.requests import Requests
from .method.routing import Assignment, Profiles, route
from .models.fetch import check_models
from .planning.plan import Plan
from .planning.planner import plan
from .planning.steps import StepKind
from .store import Store

__all__ = ["BASELINES", "NO_AGGREGATOR", "ROUTED", "Baseline", "EngineFactory", "RunResult", "RunSettings", "Task",
           "check_pool", "check_run", "forecast", "run_pipeline"]
EngineFactory = Callable[[Config], Sequence[Engine]]    # one engine per device, fresh for each run of a plan


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
        """Read a task config JSON."""
        try:
            d = json.loads(Path(path).read_text())
            return cls(d["name"], d["aggregator"], d["keyword_model"], d.get("candidates", {}), d.get("note", ""))
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"task config {path}: {e}") from e

    def save(self, path: str | Path) -> None:
        """Write the task config as JSON."""
        Path(path).write_text(json.dumps(asdict(self), indent=1))


@dataclass
class RunResult:
    """What a run produced: its report, plan, assignment, keywords and stage times."""

    report: RunReport
    plan: Plan
    assignment: Assignment
    keywords: dict[str, list[str]]
    matched: dict[str, list[str]]
    stage_seconds: dict[str, float]
    aggregations_skipped: int = 0
    prediction: Comparison | None = None  # predicted beside measured, per stage and step kind (as in summary.json)


def check_pool(profiles: Profiles, cfg: Config, task: Task) -> None:
    """Refuse profiles or task choices naming models outside the pool."""
    for m in profiles.models:
        if m not in cfg.names:
            raise ValueError(f"profile for model {m!r}, which is not in the pool ({', '.join(cfg.names)})")
    for what, m in (("aggregator", task.aggregator), ("keyword model", task.keyword_model)):
        if m not in cfg.names:
            raise ValueError(f"task {task.name}: {what} {m!r} is not in the pool")


def check_run(questions: Sequence[Question], cfg: Config, profiles: Profiles, task: Task, settings: RunSettings) -> None:
    """Everything a run can be refused for beyond its settings (checked when they were made),
    checked before the keyword stage loads its model."""
    check_pool(profiles, cfg, task)
    baseline = settings.baseline
    if baseline == "top-k" and settings.k > len(profiles.models):
        raise SymoeError(f"k={settings.k} for the top-k baseline, but only {len(profiles.models)} models are profiled")
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            raise SymoeError(f"questions: duplicate question id {q.id!r}")
        seen.add(q.id)
    if baseline == "oracle":  # computed from stored generations: no model is loaded
        return
    used = list(profiles.models)
    if baseline in ROUTED:
        used.append(task.keyword_model)
        for module in ("tokenizers", "safetensors"):  # matching's embedder: fail before keywords cost minutes
            require(module, "keyword matching")
    if baseline not in NO_AGGREGATOR:
        used.append(task.aggregator)
    check_models(cfg, used)
    for m in dict.fromkeys(used):  # engine settings, e.g. a context longer than the model's own
        ModelSettings.of(cfg, m)


def _check_stored_keywords(questions: Sequence[Question], cfg: Config, task: Task, store: Store,
                           sampling: Sampling) -> None:
    build = Requests(cfg, sampling)
    keys = [r.key for q in questions for r in build.keywords(task.keyword_model, q)]
    if len(store.existing(keys)) < len(keys):
        raise SymoeError(f"oracle baseline: store {store.path} lacks keyword samples of these questions: run "
                         f"Symbolic-MoE (no --baseline) on the same questions, store, seed and k first")


def _run(p: Plan, questions: Sequence[Question], store: Store, run_dir: Path, settings: RunSettings,
         engines: EngineFactory | None, clock: Clock | None, launch: Launch) -> RunReport:
    made = engines(p.config) if engines else plan_engines(p.config, run_dir / "logs", launch) if launch.fake else None
    return run_plan(p, questions, store, run_dir, settings.sampling, options=settings.options, engines=made,
                    clock=clock or launch.fake)


def _then(first: RunReport, second: RunReport, reused_again: int) -> RunReport:
    """Two runs one after the other as one report (the second's steps shifted by the first's time;
    ``reused_again``: the second's reuses of what the first generated, not counted twice)."""
    # The second run starts once the first has finished (its unloads included).
    shifted = [replace(r, start=r.start + first.finish, end=r.end + first.finish,
                       predicted_start=r.predicted_start + first.predicted_makespan,
                       predicted_end=r.predicted_end + first.predicted_makespan) for r in second.steps]
    return RunReport(second.run_id, first.steps + shifted, second.results, first.finish + second.makespan,
                     first.predicted_makespan + second.predicted_makespan, first.generated + second.generated,
                     first.reused + second.reused - reused_again, first.retries + second.retries,
                     finish=first.finish + second.finish)


def forecast(questions: Sequence[Question], cfg: Config, profiles: Profiles, task: Task, store: Store, out_dir: str | Path,
             settings: RunSettings) -> RunPrediction:
    """The run predicted before it starts, stage by stage (:mod:`symoe.execution.prediction`)."""
    sampling, k, seed, baseline = settings.sampling, settings.k, settings.seed, settings.baseline
    return predict_run(questions, cfg, profiles, task.keyword_model, store, sampling, Path(out_dir).parent / "embeddings.npz",
                       routed=baseline in ROUTED, assignment=None if baseline in ROUTED else
                       fixed_assignment(profiles, [q.id for q in questions], k, seed, baseline),
                       aggregator=None if baseline in NO_AGGREGATOR else task.aggregator, k=k, seed=seed,
                       rare_threshold=settings.rare_threshold, generates=baseline != "oracle")


def run_pipeline(questions: Sequence[Question], cfg: Config, profiles: Profiles, task: Task, store: Store,
                 out_dir: str | Path, settings: RunSettings, engines: EngineFactory | None = None,
                 clock: Clock | None = None, predicted: RunPrediction | None = None, launch: Launch = Launch()) -> RunResult:
    """The run ``settings`` ask for on ``questions``; results, plans and logs in ``out_dir``. With
    ``skip_agreed``, where all k extracted answers are equal that answer is final (the question's
    aggregator is -1 in the saved plan). ``engines``/``clock``: for tests and what-if runs
    (default: the engines :mod:`symoe.execution.launch` picks). ``predicted``: this run's
    :func:`forecast` when the caller made it already (planned once, not again here). ``launch``: the
    keyword stage's engine and, unless ``engines`` are given, the plan's (a ``fake`` clock: all fake)."""
    check_run(questions, cfg, profiles, task, settings)
    sampling, k, seed = settings.sampling, settings.k, settings.seed
    baseline, skip_agreed = settings.baseline, settings.skip_agreed
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SymoeError(f"output folder {out}: {e.strerror}") from e
    t_run = time.perf_counter()
    if predicted is None:
        predicted = forecast(questions, cfg, profiles, task, store, out, settings)
    times: dict[str, float] = {}
    ids = [q.id for q in questions]
    kws: dict[str, list[str]] = {}
    matched: dict[str, list[str]] = {}
    t = time.perf_counter()
    if baseline == "oracle":
        _check_stored_keywords(questions, cfg, task, store, sampling)
    if baseline in ROUTED:
        kws = annotate(questions, cfg, task.keyword_model, store, stage_engine(cfg, out / "logs", launch), sampling,
                       progress=settings.options.progress)
        times["keywords"] = time.perf_counter() - t
        t = time.perf_counter()
        embedder = Embedder(out.parent / "embeddings.npz")
        loaded = time.perf_counter() - t
        matched = match_keywords(kws, profiles.vocabulary, embedder, settings.similarity_floor)
        times["matching"] = time.perf_counter() - t
        observe_embedder(embedder, loaded)  # this machine's embedding speed, for the next forecast
        t = time.perf_counter()
        a = route(profiles, [matched[i] for i in ids], k=k, seed=seed, rare_threshold=settings.rare_threshold,
                  question_ids=ids)
    else:
        a = fixed_assignment(profiles, ids, k, seed, baseline)
    times["routing"] = time.perf_counter() - t
    a.save(out / "assignment.jsonl")
    t = time.perf_counter()
    agg = None if baseline in NO_AGGREGATOR else task.aggregator
    hashes = tuple(q.text_hash for q in questions)
    skipped = [False] * len(questions)
    if skip_agreed and agg is not None:  # experts first; aggregation planned only where they disagree
        p_experts = plan(a, cfg, optimize_s=settings.optimize_s)
        p_experts.question_hashes = hashes
        times["planning"] = time.perf_counter() - t
        t = time.perf_counter()
        first = _run(p_experts, questions, store, out / "run-experts", settings, engines, clock, launch)
        times["generation"] = time.perf_counter() - t
        t = time.perf_counter()
        skipped = [agreed_answer(r.expert_answers) is not None for r in first.results]
        p = plan(a, cfg, aggregator=[None if s else agg for s in skipped], optimize_s=settings.optimize_s)
    else:
        p = plan(a, cfg, aggregator=agg, optimize_s=settings.optimize_s)
    p.question_hashes = hashes
    p.to_json(out / "plan.json")
    times["planning"] = times.get("planning", 0.0) + time.perf_counter() - t
    t = time.perf_counter()
    if baseline == "oracle":  # an upper bound for any aggregator, from the stored expert answers
        miss = missing_experts(p, questions, sampling, store)
        if miss:
            raise SymoeError(f"oracle baseline: store {store.path} lacks {miss} expert generation(s) of this routing: "
                             f"run Symbolic-MoE (no --baseline) on the same questions, store, seed and k first")
        report = RunReport("oracle", [], grade_from_store(p, questions, sampling, store, oracle=True).results,
                           0.0, 0.0, 0, len(questions) * p.k)
    else:
        report = _run(p, questions, store, out / "run", settings, engines, clock, launch)
        if skip_agreed and agg is not None:
            report = _then(first, report, len(questions) * p.k)
    times["generation"] = times.get("generation", 0.0) + time.perf_counter() - t
    used = grade_from_store(p, questions, sampling, store, oracle=baseline == "oracle")
    write_jsonl(out / "results.jsonl", result_rows(questions, report.results, kws, matched, skipped))
    times["other"] = time.perf_counter() - t_run - sum(times.values())  # forecast, grading, writing results
    plans = [] if baseline == "oracle" else [p_experts, p] if skip_agreed and agg is not None else [p]
    checked = compare(predicted, plans, times, report)
    summary = {"baseline": baseline, "preset": settings.preset.name, "rare_threshold": settings.rare_threshold,
               "skip_agreed": skip_agreed,
               "questions": len(questions),
               "accuracy": report.accuracy, "experts_used": sorted({e for r in report.results for e in r.experts}),
               "aggregations": sum(r.aggregator is not None for r in report.results),
               "aggregations_skipped": sum(skipped), "model_calls": used.calls, "tokens": used.tokens,
               "loads": sum(1 for s in report.steps if s.kind == StepKind.LOAD), "makespan_s": report.makespan,
               "predicted_makespan_s": report.predicted_makespan, "wall_s": sum(times.values()),
               "stage_seconds": times, "generated": report.generated, "reused": report.reused,
               "sampling": asdict(sampling), "prediction": checked.to_dict()}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return RunResult(report, p, a, kws, matched, times, sum(skipped), checked)
