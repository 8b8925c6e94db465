"""Plans for pools with remote endpoints: local models planned by the C++ planner, each endpoint
model on a virtual device of its own.

A model behind an OpenAI-compatible server uses no local memory and is always available, so it
must never be placed on a local device, and no local model on its device. The C++ planner has no
such constraint, so the plan is merged:
1. the local models are planned by the core on the local devices, with every endpoint model's work
   given to one free placeholder model (no memory, no load time, instant), whose steps are then
   dropped: local steps keep their order and their validity;
2. each endpoint model gets a virtual device (memory without limit, loads beside generation):
   load (a health check, ``load_s`` 0), one run of all its expert answers (the engine sends them
   concurrently), its aggregations in runs ordered by when their experts are predicted to finish
   (1, 2, 4 or 8 runs, whichever the simulator finds fastest: more runs start earlier, but each
   pays the endpoint's latency again), unload;
3. the core's simulator then times the merged plan, so every dependency holds there as in the
   scheduler (an aggregation waits for its experts on whatever device they run).
The lower bound is the core's for the same pool where any model may go on any device: a
relaxation, so still a lower bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from .. import _core
from ..config.pool import Config, Device, ModelSpec
from .steps import PlanArrays, Role, StepKind, StepRow

UNLIMITED_BYTES = 1e18   # a virtual device's memory: nothing an endpoint holds counts
AGGREGATION_RUNS = (1, 2, 4, 8)  # an endpoint's aggregations in this many runs: the fastest simulated
_PLACEHOLDER = ModelSpec("symoe-endpoint-placeholder", 0.0, prefill_tps=1e15, decode_tps=1e15, stream_tps=1e15)
LOAD, RUN, UNLOAD = StepKind.LOAD, StepKind.RUN, StepKind.UNLOAD
EXPERT, AGGREGATE = Role.EXPERT, Role.AGGREGATE


def endpoint_models(cfg: Config) -> list[int]:
    """Indices of the pool's models behind an endpoint."""
    return [i for i, m in enumerate(cfg.models) if m.endpoint]


def with_endpoint_devices(cfg: Config) -> Config:
    """``cfg`` with its local devices first, then one virtual device per endpoint model."""
    local = tuple(d for d in cfg.devices if d.endpoint is None)
    if not local:
        raise ValueError("no local devices: at least one device is needed")
    virtual = tuple(Device(UNLIMITED_BYTES, True, 0.0, endpoint=cfg.models[i].name) for i in endpoint_models(cfg))
    return replace(cfg, devices=local + virtual)


def plan_arrays(experts: np.ndarray, aggregator: np.ndarray | None, config: Config, strategy: str,
                replicate: bool) -> tuple[Config, PlanArrays]:
    """The merged plan's config (local then virtual devices) and step arrays (see the module doc)."""
    cfg = with_endpoint_devices(config)
    remote = endpoint_models(cfg)
    local = [i for i in range(len(cfg.models)) if i not in remote]
    D = sum(1 for d in cfg.devices if d.endpoint is None)
    # 1. Local plan: endpoint work on the placeholder (the last model of the sub-pool).
    P = len(local)
    to_sub = np.full(len(cfg.models), P, dtype=np.int64)
    to_sub[local] = np.arange(P)
    sub = replace(cfg, models=tuple(cfg.models[i] for i in local) + (_PLACEHOLDER,), devices=cfg.devices[:D])
    sub_experts = np.ascontiguousarray(to_sub[experts])
    sub_agg = None if aggregator is None else np.where(aggregator >= 0, to_sub[np.maximum(aggregator, 0)], -1)
    a = PlanArrays.of(_core.make_plan(experts=sub_experts, aggregator=sub_agg, **sub.core_args(), strategy=strategy,
                                      pause_s=float(cfg.pause_s), replicate=bool(replicate)))
    from_sub = np.array(local + [-1], dtype=np.int64)
    steps: list[StepRow] = []
    for s in range(a.n_steps):
        m = int(a.model[s])
        if m == P:
            continue
        steps.append(StepRow(a.kind_of(s), a.role_of(s), int(a.device[s]), int(from_sub[m]) if m >= 0 else -1,
                             int(a.tp[s]), float(a.seconds[s]), a.items_of(s).tolist()))
    # 2. Endpoint steps, each model on its own virtual device; aggregations ordered by their
    # experts' predicted finish (local plan plus endpoint expert runs, aggregations left out).
    flat = experts.reshape(-1)
    runs: dict[int, tuple[int, list[int], list[int]]] = {}
    for v, r in enumerate(remote):
        runs[r] = (D + v, np.flatnonzero(flat == r).tolist(),
                   [] if aggregator is None else np.flatnonzero(aggregator == r).tolist())
    expert_steps = list(steps)
    for r, (dev, items, _) in runs.items():
        if items:
            expert_steps += [StepRow(LOAD, EXPERT, dev, r), StepRow(RUN, EXPERT, dev, r, items=items)]
    finish = _expert_finish(expert_steps, experts, aggregator, remote, cfg)
    best: tuple[float, PlanArrays] | None = None
    for chunks in AGGREGATION_RUNS:
        merged = list(steps)
        for r, (dev, items, aggs) in runs.items():
            if not items and not aggs:
                continue
            merged.append(StepRow(LOAD, EXPERT, dev, r))
            if items:
                merged.append(StepRow(RUN, EXPERT, dev, r, items=items))
            if aggs:
                order = sorted(aggs, key=lambda q: (finish[q], q))
                size = math.ceil(len(order) / min(chunks, len(order)))
                merged += [StepRow(RUN, AGGREGATE, dev, r, items=order[i:i + size]) for i in range(0, len(order), size)]
            merged.append(StepRow(UNLOAD, EXPERT, dev, r))
        arrays = PlanArrays.from_rows(merged)
        t = _core.simulate({"devices": len(cfg.devices), **arrays.as_dict()}, experts=experts, aggregator=aggregator,
                           **cfg.core_args())
        if best is None or float(t["makespan"]) < best[0] - 1e-9:
            best = (float(t["makespan"]), arrays)
        if aggregator is None or not np.isin(aggregator, remote).any():
            break  # no endpoint aggregates: one candidate is all there is
    assert best is not None
    return cfg, best[1]


def _expert_finish(steps: Sequence[StepRow], experts: np.ndarray,
                   aggregator: np.ndarray | None, remote: list[int], cfg: Config) -> np.ndarray:
    """Per question, when its last expert answer is predicted to finish, under a plan of ``steps``
    (every endpoint aggregation left out; endpoint models loaded but never unloaded)."""
    n, k = experts.shape
    if aggregator is not None:
        aggregator = np.where(np.isin(aggregator, remote), -1, aggregator)
    arrays = PlanArrays.from_rows(steps)
    r = _core.simulate({"devices": len(cfg.devices), **arrays.as_dict()}, experts=experts, aggregator=aggregator,
                       **cfg.core_args())
    done = np.zeros(n)
    for s in arrays.runs(EXPERT):
        np.maximum.at(done, arrays.items_of(s) // k, r["end"][s])
    return done
