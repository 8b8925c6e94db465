"""The polish's improvement model: a plan's workload grouped by model, the CP-SAT program over
(model, device, residency) decisions warm-started from the heuristic plan, and its decoding back
into a plan (see :mod:`.polish`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..config.pool import Config
from ..errors import SymoeError
from .plan import Plan, StepKind, simulate
from .steps import PlanArrays, Role, StepRow

_KB = 1e6  # memory in the model: megabytes (CP-SAT works on integers; kilobytes crashed its LNS presolve)
UNITS = 100_000  # the heuristic makespan in time units: resolution 1e-5 of it (finer: CP-SAT may raise
# its bound one unit per conflict, for minutes of wall time within a small deterministic budget)
_K = 1000  # extra precision of per-item work coefficients


@dataclass(frozen=True)
class _Model:
    """One model's figures in the linear form of the core's run-time formula:
    a run of n requests takes overhead + max(n * work, floor) (tp = 1)."""

    load: float
    unload: float
    overhead: float
    work: tuple[float, float]  # seconds per request, by role
    floor: tuple[float, float]  # one sequence decoded alone, by role
    bytes: float
    park: float = -1.0  # sleep mode's park (negative: not supported)


def _figures(cfg: Config) -> list[_Model]:
    out = []
    for m in cfg.models:
        t = cfg.model_tokens(m.name)
        work = (t.expert_prompt / m.prefill_tps + t.expert_output / m.decode_tps,
                t.aggregate_prompt / m.prefill_tps + t.aggregate_output / m.decode_tps)
        floor = (t.expert_output / m.stream_tps, t.aggregate_output / m.stream_tps)
        x = _Model(m.load_s, m.unload_s, m.overhead_s, work, floor, m.resident_bytes, m.park_s)
        for role, name in ((0, "expert"), (1, "aggregate")):  # the linear form is the core's formula
            for n in (1, 1000):
                want = cfg.run_seconds(m.name, name, n)
                got = x.overhead + max(n * x.work[role], x.floor[role])
                if not math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9):
                    raise SymoeError(f"polish: model {m.name}: run time {got} differs from the core's {want}")
        out.append(x)
    return out


def solve_deterministic(cm: Any, budget: float, workers: int) -> tuple[Any, Any]:
    """Solve ``cm`` reproducibly: a fixed seed, a budget in CP-SAT's deterministic time (work done,
    not wall time) and one worker (several: interleaved, still deterministic), so the same inputs
    give the same solution on any machine, load and thread count."""
    from ortools.sat.python import cp_model

    solver = cp_model.CpSolver()
    solver.parameters.max_deterministic_time = max(0.01, budget)
    # Raising the objective's bound costs conflicts that deterministic time barely counts: cap them too.
    solver.parameters.max_number_of_conflicts = int(200 + 20_000 * budget)
    solver.parameters.random_seed = 0
    solver.parameters.num_workers = max(1, workers)
    if workers > 1:
        solver.parameters.interleave_search = True
    return solver.solve(cm), solver


class Instance:
    """The workload and cost figures of a plan, grouped by model."""

    def __init__(self, p: Plan):
        self.p, self.cfg = p, p.config
        self.M, self.D, self.k = len(self.cfg.models), len(self.cfg.devices), p.k
        self.fig = _figures(self.cfg)
        flat = p.experts.ravel()
        order = np.argsort(flat, kind="stable")
        counts = np.bincount(flat, minlength=self.M)
        self.expert_items = np.split(order.astype(np.int64), np.cumsum(counts)[:-1])  # per model, question order
        self.ne = counts.astype(np.int64)
        agg = p.aggregator if p.aggregator is not None else np.full(len(p.experts), -1, dtype=np.int64)
        self.agg = agg
        self.agg_items = [np.flatnonzero(agg == g).astype(np.int64) for g in range(self.M)]
        self.na = np.array([len(x) for x in self.agg_items], dtype=np.int64)
        self.used = [m for m in range(self.M) if self.ne[m] + self.na[m] > 0]
        mem = [d.memory_bytes for d in self.cfg.devices]
        self.alone = {m: [d for d in range(self.D) if self.fig[m].bytes <= mem[d] * (1 + 1e-12)] for m in self.used}
        self.fits_alone = all(self.alone[m] for m in self.used)
        # Expert models whose runs an aggregator's runs may wait for (they share a question).
        self.waits_for: dict[int, set[int]] = {}
        for g in range(self.M):
            if self.na[g]:
                self.waits_for[g] = set(np.unique(p.experts[agg == g]).tolist())

    # ---- the improvement model --------------------------------------------------------------

    def improve(self, p: Plan, budget: float, workers: int, replicate: bool) -> Plan | None:
        """A better plan than ``p`` from the improvement model within ``budget`` seconds, or None."""
        from ortools.sat.python import cp_model

        H = p.makespan
        S = UNITS / H  # time units per second
        horizon = int(3 * UNITS)
        def up(x: float) -> int:  # durations rounded up: the model never undercounts
            return int(math.ceil(x * S - 1e-9))

        cm = cp_model.CpModel()
        mk = cm.new_int_var(0, horizon, "makespan")
        io: dict[int, list[Any]] = {d: [] for d in range(self.D)}
        comp: dict[int, list[Any]] = {d: [] for d in range(self.D)}
        mem: dict[int, tuple[list[Any], list[int]]] = {d: ([], []) for d in range(self.D)}
        V: dict[tuple[int, int, int], dict[Any, Any]] = {}  # (model, device, residency)
        runs: dict[tuple[int, int], list[Any]] = {(m, r): [] for m in self.used for r in (0, 1)}
        overlap = [dv.overlap_load for dv in self.cfg.devices]
        wait_end = {g: cm.new_int_var(0, horizon, f"experts_done_{g}") for g in self.waits_for}
        for m in self.used:
            f = self.fig[m]
            # A model with both roles may be loaded twice on a device: once for its expert run (and
            # perhaps its aggregation), and again later for aggregation only, freeing the memory between.
            kinds = [(0, 1)] + ([(1,)] if self.ne[m] and self.na[m] else [])
            for d in self.alone[m]:
                for r_i, roles in enumerate(kinds):
                    v: dict[Any, Any] = {}
                    use = v["use"] = cm.new_bool_var(f"use_{m}_{d}_{r_i}")
                    ls = v["ls"] = cm.new_int_var(0, horizon, "")
                    v["load"] = cm.new_optional_fixed_size_interval_var(ls, up(f.load), use, "")
                    ready = ls + up(f.load)
                    last = cm.new_int_var(0, horizon, "")  # the end of m's last run in this residency
                    cm.add(last >= ready).only_enforce_if(use)
                    for role in roles:
                        n_all = (self.ne[m], self.na[m])[role]
                        if n_all == 0:
                            continue
                        has = cm.new_bool_var("")
                        x = cm.new_int_var(0, int(n_all), "")
                        cm.add(x >= 1).only_enforce_if(has)
                        cm.add(x == 0).only_enforce_if(has.negated())
                        cm.add_implication(has, use)
                        work = cm.new_int_var(0, horizon, "")
                        coef = int(math.ceil(f.work[role] * S * _K))
                        cm.add(_K * work >= coef * x).only_enforce_if(has)
                        cm.add(work >= up(f.floor[role])).only_enforce_if(has)
                        dur = cm.new_int_var(0, horizon, "")
                        cm.add(dur == up(f.overhead) + work).only_enforce_if(has)
                        cm.add(dur == 0).only_enforce_if(has.negated())
                        s = cm.new_int_var(0, horizon, "")
                        e = cm.new_int_var(0, horizon, "")
                        iv = cm.new_optional_interval_var(s, dur, e, has, "")
                        cm.add(s >= ready).only_enforce_if(has)
                        cm.add(last >= e).only_enforce_if(has)
                        cm.add(mk >= e).only_enforce_if(has)
                        comp[d].append(iv)
                        if role == 0:
                            for g, ms in self.waits_for.items():
                                if m in ms:
                                    cm.add(wait_end[g] >= e).only_enforce_if(has)
                        else:
                            cm.add(s >= wait_end[m]).only_enforce_if(has)
                        v[role] = (has, x, s, e)
                        runs[(m, role)].append(x)
                    cm.add_bool_or([v[r][0] for r in (0, 1) if r in v]).only_enforce_if(use)
                    # Unload after the last run, on the I/O lane; memory held from load start to unload end.
                    us = v["us"] = cm.new_int_var(0, horizon, "")
                    cm.add(us >= last).only_enforce_if(use)
                    v["unload"] = cm.new_optional_fixed_size_interval_var(us, up(f.unload), use, "")
                    held = cm.new_int_var(0, horizon, "")
                    held_end = cm.new_int_var(0, horizon, "")
                    cm.add(held_end == us + up(f.unload)).only_enforce_if(use)
                    mem[d][0].append(cm.new_optional_interval_var(ls, held, held_end, use, ""))
                    mem[d][1].append(int(math.ceil(f.bytes / _KB)))
                    io[d] += [v["load"], v["unload"]]
                    V[(m, d, r_i)] = v
                if len(kinds) == 2:  # the second residency follows the first one's unload
                    a, b = V[(m, d, 0)], V[(m, d, 1)]
                    cm.add_implication(b["use"], a["use"])
                    cm.add(b["ls"] >= a["us"] + up(f.unload)).only_enforce_if(b["use"])
            for role, n_all in ((0, self.ne[m]), (1, self.na[m])):
                if n_all:
                    cm.add(sum(runs[(m, role)]) == int(n_all))
            if not replicate and self.ne[m]:
                cm.add_at_most_one([V[(m, d, 0)][0][0] for d in self.alone[m]])
        for d in range(self.D):
            if overlap[d]:
                cm.add_no_overlap(io[d])
                cm.add_no_overlap(comp[d])
            else:
                cm.add_no_overlap(io[d] + comp[d])
            if mem[d][0]:
                cm.add_cumulative(mem[d][0], mem[d][1], int(self.cfg.devices[d].memory_bytes // _KB))
        cm.minimize(mk)
        self._hint(cm, V, p, S)
        status, solver = solve_deterministic(cm, budget, workers)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return None
        return self._decode(solver, V)

    def _hint(self, cm: Any, V: dict[tuple[int, int, int], dict[Any, Any]], p: Plan, S: float) -> None:
        """The heuristic plan as the solver's starting point (counts, residency, start times)."""
        a, t = p.arrays, p.timeline
        assert t is not None
        counts: dict[tuple[int, int, int], int] = {}
        first: dict[tuple[int, int, str], float] = {}
        for s in range(p.n_steps):
            kind, m, d = a.kind_of(s), int(a.model[s]), int(a.device[s])
            if m < 0:
                continue
            if kind == StepKind.RUN:
                role = int(a.role_of(s))
                key = (m, d, role)
                counts[key] = counts.get(key, 0) + len(a.items_of(s))
                first.setdefault((m, d, f"run{role}"), float(t.start[s]))
            elif kind == StepKind.LOAD:
                first.setdefault((m, d, "load"), float(t.start[s]))
            elif kind == StepKind.UNLOAD:
                first[(m, d, "unload")] = float(t.start[s])
        for (m, d, r_i), v in V.items():
            if r_i:  # the heuristic loads a model once per device: no second residency
                cm.add_hint(v["use"], False)
                for r in (0, 1):
                    if r in v:
                        cm.add_hint(v[r][0], False)
                        cm.add_hint(v[r][1], 0)
                continue
            used = any(counts.get((m, d, r), 0) for r in (0, 1))
            cm.add_hint(v["use"], used)
            if (m, d, "load") in first:
                cm.add_hint(v["ls"], int(first[(m, d, "load")] * S))
            if (m, d, "unload") in first:
                cm.add_hint(v["us"], int(first[(m, d, "unload")] * S))
            for r in (0, 1):
                if r in v:
                    n = counts.get((m, d, r), 0)
                    cm.add_hint(v[r][0], n > 0)
                    cm.add_hint(v[r][1], n)
                    if (m, d, f"run{r}") in first:
                        cm.add_hint(v[r][2], int(first[(m, d, f"run{r}")] * S))

    def _decode(self, solver: Any, V: dict[tuple[int, int, int], dict[Any, Any]]) -> Plan:
        """The solution as plan steps: on each device, unloads, loads and runs in order of their
        start times (the order of the solver's lanes); items split in question order."""
        events: list[list[tuple[int, int, StepKind, int, int, np.ndarray | None]]] = [[] for _ in range(self.D)]
        taken = {(m, r): 0 for m in self.used for r in (0, 1)}
        for (m, d, _), v in sorted(V.items()):
            if not solver.boolean_value(v["use"]):
                continue
            events[d].append((solver.value(v["ls"]), 1, StepKind.LOAD, m, 0, None))
            for r in (0, 1):
                if r in v and solver.boolean_value(v[r][0]):
                    n = solver.value(v[r][1])
                    src = self.expert_items[m] if r == 0 else self.agg_items[m]
                    items = src[taken[(m, r)]:taken[(m, r)] + n]
                    taken[(m, r)] += n
                    events[d].append((solver.value(v[r][2]), 2, StepKind.RUN, m, r, items))
            events[d].append((solver.value(v["us"]), 0, StepKind.UNLOAD, m, 0, None))
        arrays = PlanArrays.from_rows(
            StepRow(kind, Role(r), d, m, items=() if its is None else its)
            for d in range(self.D) for _, _, kind, m, r, its in sorted(events[d], key=lambda e: (e[0], e[1], e[3], e[4])))
        q = replace(self.p, arrays=arrays, timeline=None)
        q.timeline = simulate(q)  # validates every invariant first (ValueError on a broken plan)
        return q
