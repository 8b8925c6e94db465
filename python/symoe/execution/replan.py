"""Replanning after devices are lost: the work the store still lacks, over the surviving devices.

A plan's work is its questions' expert answers and aggregations; each is stored under a key that
does not depend on the device or the plan, so a new plan over fewer devices finds every stored
generation again. Only questions with something missing are planned anew (with all their
experts: the stored ones are reused, not regenerated, and the aggregation needs their texts).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..generation import Clock, Engine, Request, Sampling
from ..generation.engine import DeviceLost
from ..method.datasets import Question
from ..method.requests import Requests
from ..method.routing import Assignment
from ..planning.plan import Plan
from ..planning.planner import plan as make_plan
from ..store import Store
from .on_engines import check_plan_matches, run_on_engines
from .report import RunReport, grade_run, write_report
from .scheduler import RunOptions

log = logging.getLogger("symoe.replan")


@dataclass(frozen=True)
class Replanned:
    """A plan over the surviving devices for the questions with missing work."""

    plan: Plan | None              # None: the store holds everything
    questions: list[Question]      # the new plan's questions, in its order
    question_index: list[int]      # their positions in the original plan
    devices: list[int]             # the original numbers of the new plan's devices, in its order


def _stored(plan: Plan, questions: Sequence[Question], store: Store,
            requests: Requests) -> tuple[list[bool], dict[int, bool], int]:
    """Per question whether all its expert answers are stored; per question with all of them and
    an aggregator, whether its aggregation is stored; and how many expert answers are stored."""
    k, experts = plan.k, requests.plan_experts(plan, questions)
    have = store.existing([r.key for r in experts])
    complete = [all(r.key in have for r in experts[q * k:(q + 1) * k]) for q in range(len(questions))]
    aggregated: dict[int, bool] = {}
    if plan.aggregator is not None:
        full = [q for q in range(len(questions)) if complete[q] and plan.aggregator[q] >= 0]
        got = store.generations(r.key for q in full for r in experts[q * k:(q + 1) * k])
        want = {q: requests.aggregate(plan.config.names[plan.aggregator[q]], questions[q],
                                      [got[r.key].text for r in experts[q * k:(q + 1) * k]]) for q in full}
        stored = store.existing([r.key for r in want.values()])
        aggregated = {q: r.key in stored for q, r in want.items()}
    return complete, aggregated, len(have)


def missing_questions(plan: Plan, questions: Sequence[Question], store: Store, requests: Requests) -> list[int]:
    """Positions of the questions with an expert answer or an aggregation the store lacks."""
    complete, aggregated, _ = _stored(plan, questions, store, requests)
    return [q for q in range(len(questions)) if not complete[q] or not aggregated.get(q, True)]


def replan(plan: Plan, questions: Sequence[Question], store: Store, requests: Requests,
           lost: Sequence[int]) -> Replanned:
    """The missing work of ``plan`` planned anew (same strategy) over the devices not in ``lost``."""
    gone = set(lost)
    devices = [d for d in range(len(plan.config.devices)) if d not in gone]
    if not devices:
        raise ValueError(f"every device of the plan is lost ({sorted(gone)}): nothing left to replan on")
    todo = missing_questions(plan, questions, store, requests)
    if not todo:
        return Replanned(None, [], [], devices)
    cfg = replace(plan.config, devices=tuple(plan.config.devices[d] for d in devices))
    names = plan.config.names
    ids = [questions[q].id for q in todo]
    sub = Assignment(names, plan.experts[todo], question_ids=tuple(ids))
    agg = None if plan.aggregator is None else [names[a] if a >= 0 else None for a in plan.aggregator[todo]]
    p = make_plan(sub, cfg, aggregator=agg, strategy=plan.strategy)  # type: ignore[arg-type]
    if plan.question_hashes:
        p.question_hashes = tuple(plan.question_hashes[q] for q in todo)
    return Replanned(p, [questions[q] for q in todo], todo, devices)


def stored_work(plan: Plan, questions: Sequence[Question], store: Store, requests: Requests) -> int:
    """How many of the plan's generations (expert answers and aggregations) the store holds."""
    _, aggregated, experts = _stored(plan, questions, store, requests)
    return experts + sum(aggregated.values())


EnginesFor = Callable[[Plan, list[int]], Sequence[Engine]]


def run_replanning(plan: Plan, questions: Sequence[Question], store: Store, run_dir: str | Path,
                   sampling: Sampling = Sampling(), assignment: Sequence[Sequence[str]] | None = None,
                   options: RunOptions = RunOptions(), engines_for: EnginesFor | None = None,
                   lost_now: Callable[[], dict[int, str]] | None = None, clock: Clock | None = None,
                   run_id: str | None = None) -> RunReport:
    """``run_plan`` on engines that can lose a whole device (a cluster node). A device lost
    before the run or during it stops the run with its :class:`DeviceLost` report; with
    ``options.retries`` the work the store still lacks is replanned over the surviving devices
    and run there, once per lost device at most ``retries`` times.

    ``engines_for(plan, devices)``: engines for a plan over the original devices ``devices``;
    ``lost_now()``: the devices already lost (original number: where), checked before the first run."""
    if engines_for is None:
        raise ValueError("run_replanning needs engines_for (engines for a plan over given devices)")
    check_plan_matches(plan, questions, assignment)
    clock = clock or Clock()
    run_dir = Path(run_dir)
    requests = Requests(plan.config, sampling)
    before = stored_work(plan, questions, store, requests)
    t0 = clock.now()
    gone = lost_now() if lost_now else {}
    lost = sorted(gone)
    if lost and not options.retries:
        a, names = plan.arrays, plan.config.names
        planned = {d: sorted({names[m] for m in a.model[a.device == d] if m >= 0}) for d in lost}
        where = "; ".join(f"device {d}: {gone[d]} (planned there: {', '.join(planned[d]) or 'nothing'})" for d in lost)
        raise DeviceLost(f"lost before the run ({where}); rerun with --retries to replan the missing work over "
                         f"the other devices", ", ".join(planned[lost[0]]), lost[0], gone[lost[0]], True)
    current: Replanned = Replanned(plan, list(questions), list(range(len(questions))),
                                   list(range(len(plan.config.devices))))
    replans = 0
    if lost:
        current, replans = replan(plan, questions, store, requests, lost), 1
        _say(current, "; ".join(f"device {d}: {gone[d]}" for d in lost))
    report: RunReport | None = None
    while current.plan is not None:
        rows = None if assignment is None else [assignment[i] for i in current.question_index]
        try:
            report = run_on_engines(current.plan, current.questions, store, run_dir, sampling, rows, options,
                                    engines_for(current.plan, current.devices), clock, run_id)
            break
        except DeviceLost as e:
            if replans >= options.retries or not e.node_lost:
                raise
            lost.append(current.devices[e.device])
            replans += 1
            current = replan(plan, questions, store, requests, lost)
            _say(current, str(e).splitlines()[0])
    expert_reqs = requests.plan_experts(plan, questions)
    names = plan.config.names

    def aggregate(q: int, texts: Sequence[str]) -> Request:
        assert plan.aggregator is not None
        return requests.aggregate(names[plan.aggregator[q]], questions[q], texts)

    generated = stored_work(plan, questions, store, requests) - before
    out = RunReport(report.run_id if report else "replanned", report.steps if report else [],
                    grade_run(plan, questions, expert_reqs, aggregate, store), clock.now() - t0,
                    (current.plan or plan).makespan,
                    generated, before, (report.retries if report else 0) + replans)
    if replans:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_report(out, current.plan or plan, run_dir, options.pictures and current.plan is not None)
    return out


def _say(r: Replanned, why: str) -> None:
    """A replan is news for whoever watches the run (stderr, unless logging is set up)."""
    if r.plan is None:
        log.warning("%s; the store holds every generation of the plan: nothing to replan", why)
    else:
        log.warning("%s; replanned the %d questions with missing work over devices %s (original numbers), "
                    "predicted %.1f s", why, len(r.questions), r.devices, r.plan.makespan)
