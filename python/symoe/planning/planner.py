"""The planner: an assignment on a pool's devices -> a :class:`~symoe.planning.plan.Plan` (the C++
heuristic, endpoint models on virtual devices of their own, then the CP-SAT polish)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from .. import _core
from ..config.pool import Config
from ..method.routing import Assignment
from . import checks as plan_checks
from . import endpoints as endpoint_plan
from .plan import Plan, PlanArrays, simulate
from .polish import auto_budget, polish

__all__ = ["plan"]


def _aggregator_array(aggregator: str | Sequence[str | None] | None, n: int, cfg: Config) -> np.ndarray | None:
    if aggregator is None:
        return None
    if isinstance(aggregator, str):
        return np.full(n, cfg.index(aggregator), dtype=np.int64)
    if len(aggregator) != n:
        raise ValueError(f"{len(aggregator)} aggregators for {n} questions")
    return np.array([cfg.index(a) if a is not None else -1 for a in aggregator], dtype=np.int64)


def plan(
    assignment: Assignment,
    config: Config,
    *,
    aggregator: str | Sequence[str | None] | None = None,
    strategy: Literal["symoe", "reference", "naive"] = "symoe",
    replicate: bool = True,
    optimize_s: float | None = None,
) -> Plan:
    """Plan the assignment's expert runs (and aggregation, if an aggregator is given) on ``config``.

    The assignment's model names are resolved in the pool by name; the returned plan carries its
    simulated timeline and the lower bound. The symoe heuristic plan is then polished by a
    constraint solver (``symoe.planning.polish``), which also proves a tighter lower bound, so ``plan.gap``
    is a true optimality gap. The polish is reproducible: one solver worker, a fixed seed and a
    budget in the solver's deterministic time, so the same inputs give the same plan on any
    machine and thread count. ``optimize_s``: that budget; 0: the heuristic plan alone; None
    (default): ``symoe.planning.polish.auto_budget``. Pools with endpoint models are not polished.
    """
    if optimize_s is not None and not (math.isfinite(optimize_s) and optimize_s >= 0):
        raise ValueError(f"optimize_s must be a finite number of seconds >= 0, got {optimize_s!r}")
    if len(assignment) == 0 or assignment.k == 0:
        raise ValueError("assignment is empty: nothing to plan")
    if not config.devices:
        raise ValueError("no devices: at least one device is needed")
    remap = np.array([config.index(m) for m in assignment.models], dtype=np.int64)
    experts = np.ascontiguousarray(remap[assignment.experts])
    agg = _aggregator_array(aggregator, len(assignment), config)
    plan_checks.check_fits(config, experts, agg)  # the core would name the model by its index
    if endpoint_plan.endpoint_models(config):  # models behind servers: each on a virtual device of its own
        config, arrays = endpoint_plan.plan_arrays(experts, agg, config, strategy, replicate)
        args = dict(experts=experts, aggregator=agg, **config.core_args())
    else:
        args = dict(experts=experts, aggregator=agg, **config.core_args())
        made = _core.make_plan(**args, strategy=strategy, pause_s=float(config.pause_s), replicate=bool(replicate))
        arrays = PlanArrays.of(made)
    p = Plan(strategy, config, experts, agg, arrays, question_ids=assignment.question_ids)
    p.timeline = simulate(p)
    p.lower_bound = _core.lower_bound(**args)
    # The polish's CP-SAT model is linear in a run's requests: a measured (drain) cost model keeps the heuristic plan.
    if strategy == "symoe" and optimize_s != 0 and not endpoint_plan.endpoint_models(config) and config.linear_costs:
        budget = auto_budget(p) if optimize_s is None else optimize_s
        if budget > 0:
            p = polish(p, budget, replicate=replicate).plan
    return p

