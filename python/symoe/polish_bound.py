"""The bound model of the polish: a relaxation of every plan ``validate()`` accepts (tensor-parallel steps,
reloads, parks and wakes included): each used model is loaded on at least one device; loads are
disjoint on each device's I/O lane; each device runs a model's work as one block after the model's
first load there (on one compute lane, in order of those loads, which never ends later than
the same work interleaved); the blocks hold at least the model's one-device work plus one
overhead per device; memory and aggregation order are left out; times are rounded down. Its
proven optimum, never above the optimal makespan, and the core's bound give ``plan.lower_bound``,
so ``plan.gap`` is a true optimality gap. (The first time in a process, importing OR-tools
takes a second or two beyond the budget; several workers make CP-SAT's portfolio, whose results
may differ between runs: ``optimize_s=0`` keeps the deterministic heuristic plan.)
"""

from __future__ import annotations

import math
from typing import Any

from .errors import SymoeError
from .polish_model import UNITS, Instance


def shard_devices(inst: Instance, m: int) -> list[int]:
    """Devices that hold 1/t of model m for some group of t consecutive devices (the only ones
    that can run it, tensor-parallel steps included)."""
    mem = [d.memory_bytes for d in inst.cfg.devices]
    b = inst.fig[m].bytes
    out: set[int] = set()
    for t in range(1, inst.D + 1):
        run = 0
        for d in range(inst.D + 1):
            if d < inst.D and b / t <= mem[d] * (1 + 1e-12):
                run += 1
                continue
            if run >= t:
                out.update(range(d - run, d))
            run = 0
    return sorted(out)

def relaxation_bound(inst: Instance, horizon_s: float, budget: float, workers: int) -> float:
    """The bound model's proven lower bound on every plan's makespan (seconds)."""
    from ortools.sat.python import cp_model

    S = UNITS / horizon_s
    def down(x: float) -> int:  # durations rounded down: a relaxation
        return int(math.floor(x * S))

    top = int(math.ceil(horizon_s * S)) + 1
    eff, D = float(inst.cfg.tp_efficiency), inst.D
    s_max = 1.0 + (D - 1) * eff
    # With any overlapping device, every device gets two lanes (a tensor-parallel step follows
    # its first device's rule on every device it spans); else one lane each.
    two_lanes = any(dv.overlap_load for dv in inst.cfg.devices)
    cm = cp_model.CpModel()
    mk = cm.new_int_var(0, top, "makespan")
    io: dict[int, list[Any]] = {d: [] for d in range(D)}
    comp: dict[int, list[Any]] = {d: [] for d in range(D)}
    for m in inst.used:
        f = inst.fig[m]
        devs = shard_devices(inst, m)
        roles = [r for r, n in ((0, inst.ne[m]), (1, inst.na[m])) if n]
        shortest = f.overhead + min(f.floor[r] for r in roles) / s_max  # any run, any tp
        work = inst.ne[m] * f.work[0] + inst.na[m] * f.work[1]
        zs, blocks = [], []
        for d in devs:
            z = cm.new_bool_var("")
            ls = cm.new_int_var(0, top, "")
            io[d].append(cm.new_optional_fixed_size_interval_var(ls, down(f.load), z, ""))
            size = cm.new_int_var(0, top, "")
            cm.add(size >= down(shortest)).only_enforce_if(z)
            s = cm.new_int_var(0, top, "")
            e = cm.new_int_var(0, top, "")
            comp[d].append(cm.new_optional_interval_var(s, size, e, z, ""))
            cm.add(s >= ls + down(f.load)).only_enforce_if(z)
            cm.add(mk >= e).only_enforce_if(z)
            cm.add(size == 0).only_enforce_if(z.negated())
            zs.append(z)
            blocks.append(size)
        cm.add_bool_or(zs)
        cm.add(sum(blocks) >= down(work) - D + down(f.overhead) * sum(zs))
    for d in range(D):
        if two_lanes:
            cm.add_no_overlap(io[d])
            cm.add_no_overlap(comp[d])
        else:
            cm.add_no_overlap(io[d] + comp[d])
    cm.minimize(mk)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.05, budget)
    solver.parameters.num_workers = workers
    status = solver.solve(cm)
    if status == cp_model.INFEASIBLE:  # the heuristic plan's own relaxation fits: never expected
        raise SymoeError("polish: the bound model has no solution below the heuristic plan's makespan")
    return float(solver.best_objective_bound) / S  # valid also when time ran out (UNKNOWN)
