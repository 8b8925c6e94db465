"""The whole run predicted, stage by stage, before it starts; and beside what was measured.

keywords: the keyword model's load, a run of the samples the store lacks (the cost model's
``Config.run_seconds``, lengths capped at the samples' new-token cap) and its unload; matching:
the embedder's load and the texts its cache lacks at this machine's measured seconds per text
(:mod:`symoe.method.embedding_speed`);
routing and planning: negligible, predicted 0 and measured; generation: the simulated plan
(aggregation included), until its last step ends. Before routing the plan is not known: the
forecast plans a *prior* routing (every question asking for the whole profile vocabulary, so
experts are drawn by overall competence); once the real plan exists its simulation replaces it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..config.pool import Config
from ..config.spec import ModelSpec
from ..generation import Sampling
from ..method.datasets import Question
from ..method.embedding_speed import EmbeddingSpeed, uncached, usable_speed
from ..method.keywords import filter_keywords
from ..method.requests import Requests
from ..method.routing import Assignment, Profiles, route
from ..planning.plan import Plan
from ..planning.planner import plan
from ..planning.steps import StepKind
from ..store import Store
from .report import RunReport, StepRecord

STAGES = ("keywords", "matching", "routing", "planning", "generation", "other")
STEP_GROUPS = ("load", "expert run", "aggregate run", "park/wake/unload", "pause")
# Distinct keywords per question before any are generated (5 samples at T=0.7, kept when seen
# twice; the tiny pool's keyword model gave 32 for the sample's first 6 questions, 12 for its
# first 2); once the samples are stored the prediction counts the real ones.
KEYWORDS_PER_QUESTION = 5.0


@dataclass(frozen=True)
class RunPrediction:
    """Predicted seconds per stage and per plan step group, with what they rest on."""

    stages: dict[str, float]
    step_groups: dict[str, float]
    makespan: float                 # the plan's last result (trailing unloads excluded)
    keyword_requests: int           # keyword samples the store lacks
    matching_texts: float           # texts the embeddings cache lacks (estimated before keywords exist)
    embedding: EmbeddingSpeed
    generation_basis: str           # "prior routing", "plan" or "nothing to generate"
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        """The whole run, in seconds."""
        return sum(self.stages.values())

    def with_plans(self, plans: Sequence[Plan]) -> RunPrediction:
        """Generation from the plans the run executes (one after the other), not the prior."""
        return replace(self, stages={**self.stages, "generation": sum(plan_seconds(p) for p in plans)},
                       step_groups=plan_step_groups(plans), makespan=_makespan(plans), generation_basis="plan")


def step_group(kind: StepKind, role: str | None = None) -> str:
    """The group a step counts in: load, expert run, aggregate run, park/wake/unload, pause
    (``role``: a run's role label, as the run log writes it)."""
    if kind == StepKind.RUN:
        return f"{role or 'expert'} run"
    return "park/wake/unload" if kind in (StepKind.PARK, StepKind.WAKE, StepKind.UNLOAD) else kind.label


def plan_seconds(p: Plan) -> float:
    """What a plan's run takes as the simulator sees it: until its last step ends."""
    if p.timeline is None or not p.n_steps:
        return 0.0
    return float(p.timeline.finish if np.isfinite(p.timeline.finish) else p.timeline.makespan)


def _makespan(plans: Sequence[Plan]) -> float:
    done = [plan_seconds(p) for p in plans[:-1]]
    last = plans[-1].makespan if plans and plans[-1].timeline is not None and plans[-1].n_steps else 0.0
    return sum(done) + float(last)


def plan_step_groups(plans: Sequence[Plan]) -> dict[str, float]:
    """Simulated seconds per step group over the plans' steps."""
    out = dict.fromkeys(STEP_GROUPS, 0.0)
    for p in plans:
        if p.timeline is None:
            continue
        a, t = p.arrays, p.timeline
        for s in range(p.n_steps):
            out[step_group(a.kind_of(s), a.role_of(s).label)] += float(t.end[s] - t.start[s])
    return out


def measured_step_groups(steps: Sequence[StepRecord]) -> dict[str, float]:
    """Measured seconds per step group over a run's executed steps."""
    out = dict.fromkeys(STEP_GROUPS, 0.0)
    for r in steps:
        out[step_group(r.kind, r.info.get("role"))] += r.end - r.start
    return out


def keyword_seconds(cfg: Config, model: str, n: int, max_tokens: int, samples: int = 1) -> float:
    """The keyword stage's generation of ``n`` samples (``samples`` per question) of at most
    ``max_tokens`` new tokens: its engine's worker start, the load, one run, the unload (nothing if none)."""
    if n <= 0:
        return 0.0
    # Keyword requests take the keyword cap, never the model's own max_tokens (method/requests.py).
    # Its measured keyword lengths where the profile has them (else its expert answers' lengths).
    # A question's samples share one prompt: vLLM's prefix cache prefills it once, so each sample
    # counts a 1/samples share of it.
    def keywords_model(m: ModelSpec) -> ModelSpec:
        q, prompt = m.keywords_output_quantiles, m.keywords_prompt_tokens
        prompt = cfg.model_tokens(m.name).expert_prompt if prompt is None else prompt
        m = replace(m, max_tokens=None, expert_prompt_tokens=prompt / max(samples, 1))
        return m if q is None else replace(m, expert_output_quantiles=q, expert_output_tokens=sum(q) / len(q))

    capped = replace(cfg, models=tuple(keywords_model(m) if m.name == model else m for m in cfg.models))
    return float(cfg.engine.worker_start_s) + cfg.load_seconds(model) + \
        capped.with_max_tokens(max_tokens).run_seconds(model, "keywords", n) + float(cfg.model(model).unload_s)


def prior_assignment(profiles: Profiles, n: int, k: int, seed: int, rare_threshold: float) -> Assignment:
    """A routing before any keyword exists: every question asks for the whole vocabulary."""
    vocab = list(profiles.vocabulary)
    return route(profiles, [vocab] * n, k=k, seed=seed, rare_threshold=rare_threshold)


def predict_run(questions: Sequence[Question], cfg: Config, profiles: Profiles, keyword_model: str, store: Store,
                sampling: Sampling, embeddings: Path, *, routed: bool, assignment: Assignment | None,
                aggregator: str | None, k: int, seed: int, rare_threshold: float,
                generates: bool = True) -> RunPrediction:
    """The forecast before the run starts. ``routed``: keywords and matching run (else the caller
    gives the fixed ``assignment``); ``generates``: False for a run that only reads the store."""
    notes: list[str] = []
    speed = usable_speed()  # an unreadable figure file: one warning, the unmeasured figure
    if not speed.texts:
        notes.append(f"matching: no embedding speed measured on this machine yet, {speed.seconds_per_text} s/text assumed")
    stages = dict.fromkeys(STAGES, 0.0)
    missing, texts = 0, 0.0
    if routed:
        reqs = [r for q in questions for r in Requests(cfg, sampling).keywords(keyword_model, q)]
        have = store.existing([r.key for r in reqs])
        missing = len(reqs) - len(have)
        stages["keywords"] = keyword_seconds(cfg, keyword_model, missing, sampling.keyword_max_tokens,
                                             sampling.keyword_samples)
        texts = float(uncached(embeddings, profiles.vocabulary))
        if missing:
            texts += KEYWORDS_PER_QUESTION * len(questions)  # not generated yet: an estimate, all new
            notes.append(f"matching: {KEYWORDS_PER_QUESTION:g} new keywords per question assumed (none generated yet)")
        else:
            got = store.generations(r.key for r in reqs)
            n = sampling.keyword_samples
            words = {w for i in range(0, len(reqs), n) for w in filter_keywords([got[r.key].text for r in reqs[i:i + n]])}
            texts += uncached(embeddings, words - set(profiles.vocabulary))
        stages["matching"] = speed.load_s + texts * speed.seconds_per_text
    basis, groups, makespan = "nothing to generate", dict.fromkeys(STEP_GROUPS, 0.0), 0.0
    if generates and questions:
        a = assignment or prior_assignment(profiles, len(questions), k, seed, rare_threshold)
        p = plan(a, cfg, aggregator=aggregator, optimize_s=0)
        stages["generation"], groups, makespan = plan_seconds(p), plan_step_groups([p]), p.makespan
        basis = "plan" if assignment is not None else "prior routing"
    return RunPrediction(stages, groups, makespan, missing, texts, speed, basis, notes)


@dataclass(frozen=True)
class Comparison:
    """A run's prediction beside what it measured (summary.json's ``prediction``)."""

    forecast: RunPrediction   # before the run started
    planned: RunPrediction    # generation from the plan(s) actually run
    stage_seconds: dict[str, float]
    step_groups: dict[str, float]
    makespan: float
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: per stage and per step group, predicted and measured; makespan; whole run."""
        def pair(pred: float, meas: float, **extra: float) -> dict[str, float]:
            return {"predicted_s": pred, "measured_s": meas, **extra}

        stages = {s: pair(self.planned.stages[s], self.stage_seconds.get(s, 0.0), forecast_s=self.forecast.stages[s])
                  for s in STAGES}
        return {"stages": stages,
                "step_kinds": {g: pair(self.planned.step_groups[g], self.step_groups[g],
                                       forecast_s=self.forecast.step_groups[g]) for g in STEP_GROUPS},
                "makespan": pair(self.planned.makespan, self.makespan, forecast_s=self.forecast.makespan),
                "whole_run": pair(self.planned.total, self.wall_s, forecast_s=self.forecast.total),
                "forecast_generation_basis": self.forecast.generation_basis,
                "keyword_requests": self.forecast.keyword_requests, "matching_texts": self.forecast.matching_texts,
                "embedding": asdict(self.forecast.embedding), "notes": self.forecast.notes}


def compare(forecast: RunPrediction, plans: Sequence[Plan], stage_seconds: dict[str, float],
            report: RunReport) -> Comparison:
    """``forecast`` refined by the executed ``plans``, beside the measured stages and steps."""
    planned = forecast.with_plans(plans) if plans else forecast
    return Comparison(forecast, planned, dict(stage_seconds), measured_step_groups(report.steps), report.makespan,
                      sum(stage_seconds.values()))


def forecast_line(p: RunPrediction) -> str:
    """One line: the whole run and each stage that takes time, in minutes."""
    parts = [f"{s} {p.stages[s] / 60:.1f} min" for s in STAGES if p.stages[s] > 0]
    basis = f" ({p.generation_basis})" if p.stages["generation"] > 0 else ""
    return f"predicted {p.total / 60:.1f} min: {', '.join(parts) or 'nothing to run'}{basis}"


def comparison_rows(c: Comparison) -> list[list[Any]]:
    """Rows of stage / step kind, predicted before the start, predicted with the plan, measured."""
    d = c.to_dict()
    rows = [[s, v["forecast_s"], v["predicted_s"], v["measured_s"]] for s, v in d["stages"].items()]
    rows += [[f"  {g}", v["forecast_s"], v["predicted_s"], v["measured_s"]] for g, v in d["step_kinds"].items()
             if v["predicted_s"] or v["measured_s"]]
    rows += [[x, d[k]["forecast_s"], d[k]["predicted_s"], d[k]["measured_s"]] for x, k in
             (("makespan", "makespan"), ("whole run", "whole_run"))]
    return rows
