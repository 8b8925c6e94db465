"""The order a run keeps: per step the steps it waits for, and per lane its steps, from the
simulator's own rules (``cpp/simulator.cpp``), so a run takes the time the plan predicts when the
cost model is right."""

from __future__ import annotations

from ..planning.plan import Plan, StepKind


def step_graph(plan: Plan) -> tuple[list[list[int]], list[list[int]]]:
    """Per step the steps it waits for, and per lane its steps in order (the simulator's rules)."""
    a, devs = plan.arrays, plan.config.devices
    D = len(devs)
    last_io: list[int | None] = [None] * D
    last_comp: list[int | None] = [None] * D
    ready: dict[tuple[int, int], int] = {}
    last_run: dict[tuple[int, int], int] = {}
    deps: list[list[int]] = []
    lanes: list[list[int]] = [[] for _ in range(2 * D)]  # lane 2d: compute, 2d+1: I/O
    for s in range(plan.n_steps):
        kind, d, m = a.kind_of(s), int(a.device[s]), int(a.model[s])
        span = range(d, d + max(1, int(a.tp[s])))
        overlap = devs[d].overlap_load
        dep: set[int | None] = set()
        if kind in (StepKind.LOAD, StepKind.WAKE):
            dep |= {last_io[e] for e in span} | (set() if overlap else {last_comp[e] for e in span})
        elif kind in (StepKind.UNLOAD, StepKind.PARK):
            dep |= {last_io[e] for e in span} | {last_run.get((d, m)), ready.get((d, m))}
            dep |= set() if overlap else {last_comp[e] for e in span}
        elif kind == StepKind.RUN:
            dep |= {last_comp[e] for e in span} | {ready.get((d, m))}
            dep |= set() if overlap else {last_io[e] for e in span}
        else:  # pause
            dep |= {last_io[e] for e in span} | {last_comp[e] for e in span}
        io_step = kind.is_io and overlap
        lanes[2 * d + io_step].append(s)
        for e in span:
            if kind != StepKind.RUN or not overlap:
                last_io[e] = s
            if io_step is False:
                last_comp[e] = s
            if kind in (StepKind.LOAD, StepKind.WAKE):
                ready[(e, m)] = s
            if kind == StepKind.RUN:
                last_run[(e, m)] = s
        deps.append(sorted(x for x in dep if x is not None))
    return deps, [lane for lane in lanes if lane]
