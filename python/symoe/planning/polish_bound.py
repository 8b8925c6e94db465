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

import numpy as np

from ..errors import SymoeError
from .polish_model import UNITS, Instance, solve_deterministic

_MB = 1e6  # memory in the model: megabytes, demands rounded down and capacities up (a relaxation)


def _widest_groups(inst: Instance, m: int) -> dict[int, int]:
    """Per device: the widest group of t consecutive devices containing it that each hold 1/t of
    model m (devices in no such group cannot run m at all)."""
    mem = [d.memory_bytes for d in inst.cfg.devices]
    b = inst.fig[m].bytes
    widest: dict[int, int] = {}
    for t in range(1, inst.D + 1):
        run = 0
        for d in range(inst.D + 1):
            if d < inst.D and b / t <= mem[d] * (1 + 1e-12):
                run += 1
                continue
            if run >= t:
                widest.update({e: t for e in range(d - run, d)})
            run = 0
    return widest


def shard_devices(inst: Instance, m: int) -> list[int]:
    """Devices that hold 1/t of model m for some group of t consecutive devices (the only ones
    that can run it, tensor-parallel steps included)."""
    return sorted(_widest_groups(inst, m))


def shard_shares(inst: Instance) -> dict[int, dict[int, int]]:
    """Per used model and device: the widest group of t consecutive devices containing it that
    each hold 1/t of the model (so the model holds at least 1/t of itself there when resident)."""
    return {m: _widest_groups(inst, m) for m in inst.used}


def aggregation_followers(inst: Instance, s_max: float) -> dict[int, float]:
    """Expert-only models all of whose items belong to aggregated questions: the shortest
    aggregation run of those questions (which starts after every expert run of its question)."""
    out: dict[int, float] = {}
    for m in inst.used:
        if inst.na[m] or not inst.ne[m]:
            continue
        qs = np.flatnonzero((inst.p.experts == m).any(axis=1))
        gs = set(inst.agg[qs].tolist())
        if -1 in gs:
            continue
        out[m] = min(inst.fig[g].overhead + max(inst.fig[g].work[1], inst.fig[g].floor[1]) / s_max for g in gs)
    return out


def aggregation_after(inst: Instance, s_max: float) -> dict[int, float]:
    """Models with an expert item of an aggregated question: the shortest aggregation run of such a question."""
    out: dict[int, float] = {}
    for q in np.flatnonzero(inst.agg >= 0):
        g = inst.fig[int(inst.agg[q])]
        run = g.overhead + max(g.work[1], g.floor[1]) / s_max
        for m in set(inst.p.experts[q].tolist()):
            out[m] = min(out.get(m, math.inf), run)
    return out


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
    mem: dict[int, tuple[list[Any], list[int]]] = {d: ([], []) for d in range(D)}
    share = shard_shares(inst)
    follow = aggregation_followers(inst, s_max)
    after = aggregation_after(inst, s_max)
    for m in inst.used:
        f = inst.fig[m]
        devs = shard_devices(inst, m)
        roles = [r for r, n in ((0, inst.ne[m]), (1, inst.na[m])) if n]
        # Any run of m, any tp: overhead + max(n work, floor) / s(tp) with n >= 1.
        shortest = f.overhead + min(max(f.work[r], f.floor[r]) for r in roles) / s_max
        work = inst.ne[m] * f.work[0] + inst.na[m] * f.work[1]
        free = min(f.unload, f.park if f.park >= 0 else math.inf)  # the quickest way to free its memory
        zs, blocks, starts = [], [], []
        for d in devs:
            z = cm.new_bool_var("")
            ls = cm.new_int_var(0, top, "")
            starts.append(ls)
            io[d].append(cm.new_optional_fixed_size_interval_var(ls, down(f.load), z, ""))
            size = cm.new_int_var(0, top, "")
            cm.add(size >= down(shortest)).only_enforce_if(z)
            s = cm.new_int_var(0, top, "")
            e = cm.new_int_var(0, top, "")
            comp[d].append(cm.new_optional_interval_var(s, size, e, z, ""))
            cm.add(s >= ls + down(f.load)).only_enforce_if(z)
            cm.add(mk >= e).only_enforce_if(z)
            cm.add(size == 0).only_enforce_if(z.negated())
            # Its first residency here: from its load's start at least to the end of a first run
            # (its shortest) and, if it is ever freed, of an unload or park on the I/O lane after
            # it; else to the end. It holds 1/t of the model at least (t: its widest group here).
            held = down(f.load) + down(shortest)
            freed = cm.new_bool_var("")
            cm.add_implication(freed, z)
            fs = cm.new_int_var(0, top, "")
            cm.add(fs >= ls + held).only_enforce_if(freed)
            io[d].append(cm.new_optional_fixed_size_interval_var(fs, down(free) if math.isfinite(free) else 0, freed, ""))
            end = cm.new_int_var(0, top + top, "")
            cm.add(end == fs + (down(free) if math.isfinite(free) else 0)).only_enforce_if(freed)
            cm.add(end == top + top).only_enforce_if(z, freed.negated())
            if not math.isfinite(free):
                cm.add(freed == 0)
            span = cm.new_int_var(0, top + top, "")
            mem[d][0].append(cm.new_optional_interval_var(ls, span, end, z, ""))
            mem[d][1].append(int(math.floor(inst.fig[m].bytes / share[m][d] / _MB)))
            # Every device that loads m runs an item of an aggregated question of m, and an
            # aggregation of that question follows: at least the first run here, then follow[m].
            if m in follow:
                cm.add(mk >= ls + down(f.load) + down(shortest) + down(follow[m])).only_enforce_if(z)
            zs.append(z)
            blocks.append(size)
        cm.add_bool_or(zs)
        if m in after:  # an item of an aggregated question runs after m's first load anywhere, then its aggregation
            first = cm.new_int_var(0, top, "")
            which = [cm.new_bool_var("") for _ in devs]
            cm.add_exactly_one(which)
            for w_, z_, ls_ in zip(which, zs, starts):
                cm.add_implication(w_, z_)
                cm.add(first == ls_).only_enforce_if(w_)
                cm.add(first <= ls_).only_enforce_if(z_)
            e_short = f.overhead + max(f.work[0], f.floor[0]) / s_max
            cm.add(mk >= first + down(f.load) + down(e_short) + down(after[m]))
        # Where m does not fit alone it runs only in a tensor-parallel group, which holds a neighbour too.
        on = dict(zip(devs, zs))
        for d in devs:
            if share[m][d] > 1 and not inst.fig[m].bytes <= inst.cfg.devices[d].memory_bytes * (1 + 1e-12):
                cm.add_bool_or([on[e] for e in (d - 1, d + 1) if e in on]).only_enforce_if(on[d])
        cm.add(sum(blocks) >= down(work) - D + down(f.overhead) * sum(zs))
    for d in range(D):
        if two_lanes:
            cm.add_no_overlap(io[d])
            cm.add_no_overlap(comp[d])
        else:
            cm.add_no_overlap(io[d] + comp[d])
        cap = int(math.ceil(inst.cfg.devices[d].memory_bytes * (1 + 1e-9) / _MB))
        if mem[d][0]:
            cm.add_cumulative(mem[d][0], mem[d][1], cap)
    cm.minimize(mk)
    status, solver = solve_deterministic(cm, budget, workers)
    if status == cp_model.INFEASIBLE:  # the heuristic plan's own relaxation fits: never expected
        raise SymoeError("polish: the bound model has no solution below the heuristic plan's makespan")
    return float(solver.best_objective_bound) / S  # valid also when time ran out (UNKNOWN)
