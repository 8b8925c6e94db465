"""An exact polish of the heuristic plan with a proven optimality gap (issue 12, item 3).

Two constraint programs (OR-tools CP-SAT), both at the granularity of (model, device) runs, so
their size depends on the pool and the devices, never on the number of questions:

- the *improvement* model: how many of each model's expert items and aggregations each device
  runs, when each device loads, runs and unloads each model (one load per model and device, one
  expert run and one aggregation run; a model with both roles may be loaded a second time for its
  aggregation, freeing the memory between), under the simulator's rules (an I/O lane and a compute lane
  per device, or one lane without load/generate overlap; every device's memory at every instant;
  aggregation after the expert runs its questions may wait for). It starts from the heuristic
  plan (solution hint) and any better solution becomes a plan, which goes through the core's
  validator and simulator like every plan: the better simulated makespan is kept.
- the *bound* model (:mod:`.polish_bound`): a relaxation of every plan, whose proven optimum and
  the core's bound give ``plan.lower_bound``, so ``plan.gap`` is a true optimality gap.

(The first time in a process, importing OR-tools takes a second or two beyond the budget; several
workers make CP-SAT's portfolio, whose results may differ between runs: ``optimize_s=0`` keeps the
deterministic heuristic plan.)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

from .planning import Plan, simulate
from .polish_model import Instance

__all__ = ["PolishResult", "polish"]

@dataclass(frozen=True)
class PolishResult:
    """What the polish did: the plan kept, the bounds and the solver's status."""

    plan: Plan
    heuristic_makespan: float
    relaxation_bound: float  # the bound model's proven bound (NaN: not solved)
    improved: bool  # the solver's plan replaced the heuristic one
    optimal: bool  # makespan == bound (within 1e-9)
    seconds: float  # wall time spent


def polish(p: Plan, seconds: float, *, replicate: bool = True, workers: int | None = None) -> PolishResult:
    """Improve the heuristic plan ``p`` with CP-SAT within about ``seconds`` of wall time and prove
    a lower bound; returns the better plan (``lower_bound`` = the best proven bound). ``replicate``
    False: each model's expert work stays on one device, as the heuristic's option."""
    from ortools.sat.python import cp_model  # noqa: F401  (a clear ImportError early)

    if not seconds > 0:
        raise ValueError(f"polish needs a positive time budget, got seconds={seconds!r}")
    if p.timeline is None:
        p = replace(p, timeline=simulate(p))
    t0 = time.monotonic()
    workers = workers or 8  # CP-SAT's portfolio (time-shared on fewer cores) finds far more than one worker
    inst = Instance(p)
    best = p
    improved = False
    # The improvement model first (a better plan tightens the bound model's horizon).
    if inst.fits_alone:
        q = inst.improve(p, seconds * 0.6, workers, replicate)
        if q is not None and q.makespan < p.makespan * (1 - 1e-12):
            best, improved = q, True
    left = max(seconds - (time.monotonic() - t0), seconds * 0.3)
    from .polish_bound import relaxation_bound

    relax = relaxation_bound(inst, best.makespan, left, workers)
    # The relaxation's bound is at most the optimum up to the rounding of its last division.
    lb = max(p.lower_bound, min(relax, best.makespan)) if math.isfinite(relax) else p.lower_bound
    best = replace(best, lower_bound=lb)
    return PolishResult(best, p.makespan, relax, improved, best.makespan <= lb * (1 + 1e-9),
                        time.monotonic() - t0)
