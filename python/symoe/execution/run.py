"""Run a plan: on this machine's devices with the engines :mod:`.launch` picks, or on a Ray
cluster's (:mod:`.on_cluster`); the run itself: :mod:`.on_engines`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..generation import Clock, Engine, Sampling
from ..method.datasets import Question
from ..planning.plan import Plan
from ..store import Store
from .launch import plan_engines
from .on_cluster import run_on_config
from .on_engines import check_plan_matches, run_on_engines
from .report import RunReport
from .scheduler import RunOptions

__all__ = ["check_plan_matches", "run_plan"]


def run_plan(plan: Plan, questions: Sequence[Question], store: Store, run_dir: str | Path,
             sampling: Sampling = Sampling(), assignment: Sequence[Sequence[str]] | None = None,
             options: RunOptions = RunOptions(), engines: Sequence[Engine] | None = None, clock: Clock | None = None,
             run_id: str | None = None) -> RunReport:
    """Execute every step of ``plan``; generations already in ``store`` are reused, not redone.
    ``engines`` (one per device) default to those :func:`.launch.plan_engines` picks."""
    check_plan_matches(plan, questions, assignment)
    dup = len({q.id for q in questions}) != len(questions)
    if dup:
        raise ValueError("questions: duplicate question ids (each question needs its own id)")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = plan.config
    if engines is None and cfg.cluster is not None:  # a Ray cluster's devices; a lost node's work replanned
        return run_on_config(plan, questions, store, run_dir, sampling, assignment, options, run_id)
    if engines is None:
        engines = plan_engines(cfg, run_dir / "logs")
    return run_on_engines(plan, questions, store, run_dir, sampling, assignment, options, engines, clock, run_id)
