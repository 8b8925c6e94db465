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

The solver runs reproducibly: a fixed seed, one worker and a budget in CP-SAT's *deterministic*
time (a measure of work done, about a second of one core per unit, never the wall clock), so the
same plan and budget give the same polished plan on any machine, load and thread count. (The first
time in a process, importing OR-tools takes a second or two of wall time beyond the budget.)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

from ..errors import SymoeError
from . import polish_bound
from .plan import Plan, simulate
from .polish_model import Instance

__all__ = ["PolishResult", "auto_budget", "polish"]

def auto_budget(p: Plan) -> float:
    """``plan()``'s default polish budget in deterministic seconds: none where the heuristic plan is
    proven within 1% of the optimum (nothing to win), else 0.02% of its predicted makespan, at most
    0.5 (a few seconds of wall time at worst), so planning stays a small share of the run."""
    if not p.makespan > p.lower_bound * 1.01:
        return 0.0
    return min(0.5, 2e-4 * p.makespan)


@dataclass(frozen=True)
class PolishResult:
    """What the polish did: the plan kept, the bounds and the solver's status."""

    plan: Plan
    heuristic_makespan: float
    relaxation_bound: float  # the bound model's proven bound (NaN: not solved)
    improved: bool  # the solver's plan replaced the heuristic one
    optimal: bool  # makespan == bound (within 1e-9)
    seconds: float  # wall time spent (informational: the budget is deterministic)


def polish(p: Plan, seconds: float, *, replicate: bool = True, workers: int = 1) -> PolishResult:
    """Improve the heuristic plan ``p`` with CP-SAT within ``seconds`` of the solver's deterministic
    time (0.6 for the improvement model, 0.4 for the bound model) and prove a lower bound; returns
    the better plan (``lower_bound`` = the best proven bound). ``replicate`` False: each model's
    expert work stays on one device, as the heuristic's option. ``workers`` > 1: CP-SAT's
    interleaved portfolio, as reproducible as one worker."""
    from ortools.sat.python import cp_model  # noqa: F401  (a clear ImportError early)

    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"polish needs a positive time budget, got seconds={seconds!r}")
    if p.timeline is None:
        p = replace(p, timeline=simulate(p))
    t0 = time.monotonic()
    inst = Instance(p)
    best = p
    improved = False
    # The improvement model first (a better plan tightens the bound model's horizon).
    if inst.fits_alone:
        q = inst.improve(p, seconds * 0.6, workers, replicate)
        if q is not None and q.makespan < p.makespan * (1 - 1e-12):
            best, improved = q, True
    relax = polish_bound.relaxation_bound(inst, best.makespan, seconds * 0.4, workers)
    # A relaxation's bound is at most every valid plan's makespan, up to the rounding of its last
    # division: above that it is wrong, and a clamped value would report a false zero gap.
    if math.isfinite(relax) and relax > best.makespan * (1 + 1e-9):
        raise SymoeError(f"polish: the relaxation's bound {relax!r} s exceeds the valid plan's makespan "
                         f"{best.makespan!r} s (a bug in the bound model)")
    lb = max(p.lower_bound, min(relax, best.makespan)) if math.isfinite(relax) else p.lower_bound
    best = replace(best, lower_bound=lb)
    return PolishResult(best, p.makespan, relax, improved, best.makespan <= lb * (1 + 1e-9),
                        time.monotonic() - t0)
