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
from .steps import ARRAY_DTYPES

UNLIMITED_BYTES = 1e18   # a virtual device's memory: nothing an endpoint holds counts
AGGREGATION_RUNS = (1, 2, 4, 8)  # an endpoint's aggregations in this many runs: the fastest simulated
_PLACEHOLDER = ModelSpec("symoe-endpoint-placeholder", 0.0, prefill_tps=1e15, decode_tps=1e15, stream_tps=1e15)
_DTYPES = {k: t for k, t in ARRAY_DTYPES.items() if k != "items"}  # the step columns (items apart)
LOAD, RUN, UNLOAD = 0, 1, 2   # cpp/plan.hpp StepKind
EXPERT, AGGREGATE = 0, 1      # cpp/plan.hpp Role
Step = tuple[int, int, int, int, int, float, list[int]]  # kind, role, device, model, tp, seconds, items


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
                replicate: bool) -> tuple[Config, dict[str, np.ndarray]]:
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
    a = _core.make_plan(experts=sub_experts, aggregator=sub_agg, **sub.core_args(), strategy=strategy,
                        pause_s=float(cfg.pause_s), replicate=bool(replicate))
    from_sub = np.array(local + [-1], dtype=np.int64)
    steps: list[Step] = []
    for s in range(len(a["kind"])):
        m = int(a["model"][s])
        if m == P:
            continue
        steps.append((int(a["kind"][s]), int(a["role"][s]), int(a["device"][s]), int(from_sub[m]) if m >= 0 else -1,
                      int(a["tp"][s]), float(a["seconds"][s]), a["items"][a["item_begin"][s]:a["item_end"][s]].tolist()))
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
            expert_steps += [(LOAD, EXPERT, dev, r, 1, 0.0, []), (RUN, EXPERT, dev, r, 1, 0.0, items)]
    finish = _expert_finish(expert_steps, experts, aggregator, remote, cfg)
    best: tuple[float, dict[str, np.ndarray]] | None = None
    for chunks in AGGREGATION_RUNS:
        merged = list(steps)
        for r, (dev, items, aggs) in runs.items():
            if not items and not aggs:
                continue
            merged.append((LOAD, EXPERT, dev, r, 1, 0.0, []))
            if items:
                merged.append((RUN, EXPERT, dev, r, 1, 0.0, items))
            if aggs:
                order = sorted(aggs, key=lambda q: (finish[q], q))
                size = math.ceil(len(order) / min(chunks, len(order)))
                merged += [(RUN, AGGREGATE, dev, r, 1, 0.0, order[i:i + size]) for i in range(0, len(order), size)]
            merged.append((UNLOAD, EXPERT, dev, r, 1, 0.0, []))
        arrays = _arrays(merged)
        t = _core.simulate({"devices": len(cfg.devices), **arrays}, experts=experts, aggregator=aggregator,
                           **cfg.core_args())
        if best is None or float(t["makespan"]) < best[0] - 1e-9:
            best = (float(t["makespan"]), arrays)
        if aggregator is None or not np.isin(aggregator, remote).any():
            break  # no endpoint aggregates: one candidate is all there is
    assert best is not None
    return cfg, best[1]


def _arrays(steps: Sequence[Step]) -> dict[str, np.ndarray]:
    out: dict[str, list[float]] = {k: [] for k in _DTYPES}
    items: list[int] = []
    for kind, role, dev, model, tp, seconds, its in steps:
        for k, v in (("kind", kind), ("role", role), ("device", dev), ("model", model), ("tp", tp),
                     ("seconds", seconds), ("item_begin", len(items))):
            out[k].append(v)
        items.extend(int(i) for i in its)
        out["item_end"].append(len(items))
    arrays = {k: np.asarray(v, dtype=t) for k, (t, v) in ((k, (_DTYPES[k], out[k])) for k in _DTYPES)}
    arrays["items"] = np.asarray(items, dtype=np.int64)
    return arrays


def _expert_finish(steps: Sequence[Step], experts: np.ndarray,
                   aggregator: np.ndarray | None, remote: list[int], cfg: Config) -> np.ndarray:
    """Per question, when its last expert answer is predicted to finish, under a plan of ``steps``
    (every endpoint aggregation left out; endpoint models loaded but never unloaded)."""
    n, k = experts.shape
    if aggregator is not None:
        aggregator = np.where(np.isin(aggregator, remote), -1, aggregator)
    arrays = _arrays(steps)
    r = _core.simulate({"devices": len(cfg.devices), **arrays}, experts=experts, aggregator=aggregator,
                       **cfg.core_args())
    done = np.zeros(n)
    runs = np.flatnonzero((arrays["kind"] == RUN) & (arrays["role"] == EXPERT))
    for s in runs:
        q = arrays["items"][arrays["item_begin"][s]:arrays["item_end"][s]] // k
        np.maximum.at(done, q, r["end"][s])
    return done
