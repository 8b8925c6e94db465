"""Running a plan on given engines (one per device): the scheduler, then the graded report."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..generation import Clock, Engine, ModelSettings, Sampling
from ..method.datasets import Question
from ..method.requests import Requests
from ..planning.plan import Plan
from ..store import Store
from .report import RunReport, grade_run, write_report
from .scheduler import RunOptions, Scheduler


def check_plan_matches(plan: Plan, questions: Sequence[Question], experts_by_name: Sequence[Sequence[str]] | None) -> None:
    """Refuse a plan made for other questions or another assignment."""
    if len(questions) != len(plan.experts):
        raise ValueError(f"plan is for {len(plan.experts)} questions, {len(questions)} were given")
    if plan.question_ids and tuple(plan.question_ids) != tuple(q.id for q in questions):
        raise ValueError("plan does not match the questions: question ids differ")
    for q, h in zip(questions, plan.question_hashes):  # same ids, other texts: answers to the wrong questions
        if q.text_hash != h:
            raise ValueError(f"plan does not match the questions: question {q.id!r} has a different text "
                             f"from the one planned")
    if experts_by_name is not None:
        names = plan.config.names
        planned = [[names[m] for m in row] for row in plan.experts]
        widths = {len(r) for r in experts_by_name}
        if widths and widths != {plan.experts.shape[1]}:
            raise ValueError(f"plan does not match the assignment: the plan was made with k={plan.experts.shape[1]}, the "
                             f"assignment has k={'/'.join(map(str, sorted(widths)))}; make the plan for this assignment "
                             "with symoe plan --assignment")
        if [list(r) for r in experts_by_name] != planned:
            raise ValueError("plan does not match the assignment: the experts per question differ")


def run_on_engines(plan: Plan, questions: Sequence[Question], store: Store, run_dir: str | Path, sampling: Sampling,
                   assignment: Sequence[Sequence[str]] | None, options: RunOptions, engines: Sequence[Engine],
                   clock: Clock | None = None, run_id: str | None = None) -> RunReport:
    """Execute every step of ``plan`` on ``engines`` (one per device); generations already in
    ``store`` are reused, not redone. The engines are closed at the end."""
    check_plan_matches(plan, questions, assignment)
    if len({q.id for q in questions}) != len(questions):
        raise ValueError("questions: duplicate question ids (each question needs its own id)")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = plan.config
    settings = {cfg.names[m]: ModelSettings.of(cfg, cfg.names[m]) for m in np.unique(plan.arrays.model) if m >= 0}
    if len(engines) != len(cfg.devices):
        raise ValueError(f"{len(engines)} engines for a plan on {len(cfg.devices)} devices")
    s = Scheduler(plan, questions, store, Requests(cfg, sampling), settings, list(engines), options,
                  clock or Clock(), run_id or uuid.uuid4().hex[:12])
    try:
        s.run()
    finally:
        for e in engines:
            e.close()
        store.release(s.run_id)
    report = RunReport(s.run_id, sorted(s.records, key=lambda r: (r.start, r.step)),
                       grade_run(plan, questions, s.expert_requests, s.aggregate_request, store), s.makespan,
                       plan.makespan, s.generated, s.reused, s.retried, finish=s.finish)
    write_report(report, plan, run_dir, options.pictures)
    return report
