"""Run a plan: the engines of its devices, the scheduler, and the run's report."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..cluster.ray_engine import tp_refused
from ..errors import SymoeError
from ..generation import Clock, Engine, ModelSettings, Sampling
from ..generation.endpoint import EndpointSettings
from ..generation.local import LocalEngine
from ..generation.remote import RemoteEngine
from ..generation.served import ServedEngine
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


def local_engines(plan: Plan, run_dir: Path) -> list[Engine]:
    """One engine per device: in-process workers, with a vLLM server per ``serve = "vllm"`` model,
    and a remote engine per endpoint model's virtual device."""
    cfg, logs = plan.config, run_dir / "logs"
    served = {m.name for m in cfg.models if m.serve == "vllm"}
    out: list[Engine] = []
    for d, dev in enumerate(cfg.devices):
        if dev.endpoint is not None:
            out.append(RemoteEngine(d, EndpointSettings.of(cfg.model(dev.endpoint))))
        elif served:
            out.append(ServedEngine.for_config(cfg, d, logs, served, LocalEngine.for_config(cfg, d, logs)))
        else:
            out.append(LocalEngine.for_config(cfg, d, logs))
    for e in out:  # each sizes its models' memory share by its own device
        e.memory_bytes = cfg.devices[e.device].memory_bytes
        if isinstance(e, ServedEngine) and e.others is not None:
            e.others.memory_bytes = e.memory_bytes
    return out


def run_plan(plan: Plan, questions: Sequence[Question], store: Store, run_dir: str | Path,
             sampling: Sampling = Sampling(), assignment: Sequence[Sequence[str]] | None = None,
             options: RunOptions = RunOptions(), engines: Sequence[Engine] | None = None, clock: Clock | None = None,
             run_id: str | None = None) -> RunReport:
    """Execute every step of ``plan``; generations already in ``store`` are reused, not redone.
    ``engines`` (one per device) default to local vLLM workers."""
    check_plan_matches(plan, questions, assignment)
    dup = len({q.id for q in questions}) != len(questions)
    if dup:
        raise ValueError("questions: duplicate question ids (each question needs its own id)")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = plan.config
    if engines is None and cfg.cluster is not None:  # a Ray cluster's devices; a lost node's work replanned
        sharded = np.flatnonzero((plan.arrays["tp"] > 1) & (plan.arrays["model"] >= 0))
        if len(sharded):  # refused before anything starts (the Ray engine also refuses such a load)
            s0, a = int(sharded[0]), plan.arrays
            d, tp = int(a["device"][s0]), int(a["tp"][s0])
            raise SymoeError(tp_refused(f"step {s0}", cfg.names[a["model"][s0]], range(d, d + tp)))
        from .on_cluster import run_on_config

        return run_on_config(plan, questions, store, run_dir, sampling, assignment, options, run_id)
    settings = {cfg.names[m]: ModelSettings.of(cfg, cfg.names[m]) for m in np.unique(plan.arrays["model"]) if m >= 0}
    if engines is None:
        engines = local_engines(plan, run_dir)
    elif len(engines) != len(cfg.devices):
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
