"""Cost-model figures from a measured run: written back into the pool config for the next plan
(``run-plan --calibrate``), and added to this machine's profile after every run (:func:`observe`)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import profile
from ..config.pool import Config
from ..config.profile_fit import scaled, step_ratios
from ..config.spec import ModelSpec
from ..planning.steps import StepKind
from .report import RunReport, StepRecord

if TYPE_CHECKING:
    from ..store import Store


def drain_form(m: ModelSpec) -> bool:
    """Whether ``m`` is timed by the drain (curve, quantiles or max_seqs), which ignores decode_tps."""
    return any(v is not None for v in (m.decode_curve, m.max_seqs, m.expert_output_quantiles, m.aggregate_output_quantiles))


def calibrate(cfg: Config, report: RunReport, store: Store | None = None) -> Config:
    """Cost-model figures from a measured run, for the next plan: per model the median load time
    and prefill/decode throughputs fitted by least squares to its generate steps
    (``seconds - overhead = prompt_tokens / prefill_tps + tokens / decode_tps``), and the observed
    tokens per request by role: per model (its ``*_tokens`` figures: the mean lengths of all its
    generations in ``store`` when given, reused ones from earlier runs included, else of this run's)
    and over all models (``[tokens]``, the figures of models the run did not measure). A model timed
    by the drain (:func:`drain_form`) instead gets the store's output lengths as quantiles and all its
    rates divided by the median measured / predicted seconds of its steps (``profile_fit``)."""
    stored = store.token_lengths() if store is not None else {}
    stored_lengths = store.output_lengths() if store is not None else {}
    loads: dict[str, list[float]] = {}
    runs: dict[str, list[StepRecord]] = {}
    for r in report.steps:
        if r.kind == StepKind.LOAD and r.model:
            loads.setdefault(r.model, []).append(r.end - r.start)
        if r.kind == StepKind.RUN and r.model and r.info.get("generated"):
            runs.setdefault(r.model, []).append(r)
    models = []
    for m in cfg.models:
        upd: dict[str, Any] = {}
        if m.name in loads:
            upd["load_s"] = float(np.median(loads[m.name]))
        rs = runs.get(m.name, [])
        if rs and drain_form(m):  # timed by the drain: its rates rescaled by what the steps took (profile_fit)
            lengths = {role: [L for ls in by_cap.values() for L in ls] for (name, role), by_cap in stored_lengths.items()
                       if name == m.name}
            qs: dict[str, Any] = {f"{role}_output_quantiles": profile.quantiles(ls) for role, ls in lengths.items()
                                  if role in profile.ROLES and ls}
            mq = replace(m, **qs)
            seen = [_seen(r, share="") for r in rs]
            ratios = step_ratios(replace(cfg, models=(mq,)), mq, seen)
            m = scaled(mq, float(np.median(ratios))) if ratios else mq
        elif rs and all(r.info["generated"] == 1 for r in rs):
            # Only single requests (a naive run): they measure one stream, not a saturated batch.
            t = sum(max(r.end - r.start - m.overhead_s, 1e-3) for r in rs)
            upd["stream_tps"] = sum(r.tokens for r in rs) / t
        elif rs:
            A = np.array([[r.prompt_tokens, r.tokens] for r in rs], dtype=float)
            y = np.array([max(r.end - r.start - m.overhead_s, 1e-3) for r in rs])
            x = np.linalg.lstsq(A, y, rcond=None)[0] if len(rs) >= 2 and np.linalg.matrix_rank(A) == 2 else None
            if x is not None and (x > 0).all():
                upd["prefill_tps"], upd["decode_tps"] = 1.0 / x[0], 1.0 / x[1]
            elif A[:, 1].sum() > 0:  # one run: keep the configured prefill rate, fit decode
                upd["decode_tps"] = A[:, 1].sum() / max(y.sum() - A[:, 0].sum() / m.prefill_tps, 1e-3)
        for role in ("expert", "aggregate"):  # this model's own lengths (reasoning models write far more)
            if (m.name, role) in stored:
                _, upd[f"{role}_prompt_tokens"], upd[f"{role}_output_tokens"] = stored[(m.name, role)]
                continue
            mine = [r for r in rs if r.info.get("role") == role]
            n = sum(r.info["generated"] for r in mine)
            if n:
                upd[f"{role}_prompt_tokens"] = sum(r.prompt_tokens for r in mine) / n
                upd[f"{role}_output_tokens"] = sum(r.tokens for r in mine) / n
        models.append(replace(m, **upd))
    tokens = cfg.tokens
    for role in ("expert", "aggregate"):
        rs = [r for r in report.steps if r.kind == StepKind.RUN and r.info.get("role") == role and r.info.get("generated")]
        n = sum(r.info["generated"] for r in rs)
        if n:
            tokens = replace(tokens, **{f"{role}_prompt": sum(r.prompt_tokens for r in rs) / n,
                                        f"{role}_output": sum(r.tokens for r in rs) / n})
    return replace(cfg, models=tuple(models), tokens=tokens)


def _seen(r: StepRecord, share: str, run: str = "") -> profile.RunSeen:
    """A generate step of this run as the profile keeps it."""
    return profile.RunSeen(n=int(r.info["generated"]), prompt_tokens=r.prompt_tokens, tokens=r.tokens,
                           seconds=r.end - r.start, role=str(r.info.get("role", "expert")), share=share, run=run)


def observe(cfg: Config, report: RunReport, store: Store | None = None) -> Path:
    """Add what a finished run observed to this machine's profile (:mod:`symoe.config.profile`), so
    the next prediction uses it: per model its loads, its runs (requests, prompt and output tokens,
    seconds) and the output lengths by role and cap of every generation in ``store`` (the store's
    lists replace the profile's, so rerunning adds nothing twice). Returns the profile's path."""
    p = profile.load(cfg.engine.platform)
    lengths = store.output_lengths() if store is not None else {}
    run = uuid.uuid4().hex[:12]  # its steps are one run seen (profile_fit.MIN_RUNS counts runs)
    for m in cfg.models:
        if m.endpoint is not None:
            continue
        steps = [r for r in report.steps if r.model == m.name]
        mine = {role: by_cap for (name, role), by_cap in lengths.items() if name == m.name and role in profile.LENGTH_ROLES}
        if not steps and not mine:
            continue
        mp = p.models.setdefault(profile.model_key(m), profile.ModelProfile())
        mp.loads = (mp.loads + [r.end - r.start for r in steps if r.kind == StepKind.LOAD])[-profile.MAX_RUNS:]
        share = profile.engine_share(cfg)
        mp.runs = (mp.runs + [_seen(r, share, run) for r in steps
                              if r.kind == StepKind.RUN and r.info.get("generated")])[-profile.MAX_RUNS:]
        for role, by_cap in mine.items():
            mp.run_lengths[role] = {str(cap): ls[-profile.MAX_LENGTHS:] for cap, ls in by_cap.items()}
    return profile.save(p)
