"""Where each model of ``symoe serve`` lives and which models stay resident: "resident where it pays".

The rule:

- **Demand.** Each expert's share of the expert slots blends the prior (:func:`.residency.expected_frequency`:
  every profile keyword routed as a one-keyword question), worth ``prior_slots`` observed slots,
  with the slots the windows served so far gave it (:class:`Demand`).
- **Placement, by the core.** The C++ planner (:func:`symoe.planning.planner.plan`, the symoe
  heuristic, each model whole on one device) plans a horizon of ``horizon`` requests with that
  demand: each request's k expert slots dealt out by the shares (largest remainder), its
  aggregation on the task's aggregator, and the keyword model's work as one expert answer per
  request (its five samples at the keyword cap are about one answer's tokens). The planner weighs
  every model's work and load time against the devices' memory; a model's **home** is the device
  where the plan runs most of its work. A model with no planned work is homed where the fewest
  bytes are homed among the devices it fits.
- **Residency.** On each device, of the models homed there, those kept loaded maximise the load
  seconds saved per window (the model's ``load_s`` times the chance a window needs it: 1 for the
  keyword model and the aggregator, ``1 - (1 - share) ** (k * n)`` for an expert, ``n`` the mean
  requests per window so far) within the device's memory. An expert too rare to pay for its memory
  is loaded on demand (:mod:`.residency`) and gives way first when room is needed.
- **Re-planning.** Every ``replan_every`` windows the demand is blended again and the core plans
  anew; where the plan changes, the lanes swap (unload what moved or lost its place, load the new
  residents) between windows.

Endpoint models are not planned: each keeps its own remote engine, always "resident".
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..config.pool import Config
from ..method.routing import Assignment
from ..planning.plan import StepKind
from ..planning.planner import plan

EXHAUSTIVE = 16  # up to this many models homed on a device, the best resident set is searched exhaustively


@dataclass(frozen=True)
class ServePlanning:
    """The settings of serve's placement (the one home of their defaults; ``symoe serve`` reads them)."""

    replan_every: int = 20  # windows between two plans (0: plan once, at start)
    prior_slots: float = 64.0  # how many observed expert slots the prior counts as
    horizon: int = 64  # requests in the core's planning horizon

    def __post_init__(self) -> None:
        if self.replan_every < 0 or not self.prior_slots >= 0 or self.horizon < 1:
            raise ValueError(f"ServePlanning: replan_every must be >= 0, prior_slots >= 0 and horizon >= 1, got "
                             f"{self.replan_every}, {self.prior_slots}, {self.horizon}")


@dataclass
class Demand:
    """Expert slots expected (the prior's shares) and observed, and the requests and windows seen."""

    prior: Mapping[str, float]  # expert -> slots (any scale)
    observed: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    windows: int = 0

    def observe(self, slots: Mapping[str, int], requests: int) -> None:
        """One window's expert slots per model and its number of requests."""
        self.observed.update(slots)
        self.requests += requests
        self.windows += 1

    def shares(self, prior_slots: float) -> dict[str, float]:
        """Each expert's share of the slots: the prior worth ``prior_slots`` slots, plus those observed."""
        total = sum(self.prior.values())
        w = {m: prior_slots * v / total if total else 0.0 for m, v in self.prior.items()}
        for m, n in self.observed.items():
            w[m] = w.get(m, 0.0) + n
        s = sum(w.values())
        return {m: v / s for m, v in w.items()} if s else {}

    def per_window(self) -> float:
        """Mean requests per window (1 before any)."""
        return self.requests / self.windows if self.windows else 1.0


@dataclass(frozen=True)
class Placement:
    """The plan: each local model's home device and each device's resident models (in load order)."""

    home: dict[str, int]
    resident: dict[int, tuple[str, ...]]
    shares: dict[str, float]


def _deal(shares: Mapping[str, float], slots: int) -> list[str]:
    """``slots`` slots dealt out by ``shares`` (largest remainder; ties by name)."""
    exact = {m: s * slots for m, s in shares.items() if s > 0}
    n = {m: math.floor(v) for m, v in exact.items()}
    for m in sorted(exact, key=lambda m: (n[m] - exact[m], m))[:slots - sum(n.values())]:
        n[m] += 1
    return [m for m in sorted(n) for _ in range(n[m])]


def _best_resident(models: Sequence[str], value: Mapping[str, float], size: Mapping[str, float], memory: float) -> list[str]:
    """The models (in ``models``' order) of most total value whose sizes fit ``memory``."""
    if sum(size[m] for m in models) <= memory:
        return list(models)
    if len(models) <= EXHAUSTIVE:
        best: tuple[float, int, tuple[str, ...]] = (-1.0, 0, ())
        for r in range(len(models), 0, -1):
            for c in itertools.combinations(models, r):
                if sum(size[m] for m in c) <= memory:
                    best = max(best, (sum(value[m] for m in c), r, c))
        return [m for m in models if m in best[2]]
    chosen: list[str] = []
    for m in sorted(models, key=lambda m: -value[m] / max(size[m], 1.0)):
        if sum(size[x] for x in chosen) + size[m] <= memory:
            chosen.append(m)
    return [m for m in models if m in chosen]


def plan_placement(cfg: Config, devices: int, demand: Demand, keyword_model: str, aggregator: str, k: int,
                   settings: ServePlanning = ServePlanning()) -> Placement:
    """Place the pool's local models on its first ``devices`` local devices (see the module doc)."""
    local = replace(cfg, models=tuple(m for m in cfg.models if not m.endpoint),
                    devices=tuple(d for d in cfg.devices if d.endpoint is None)[:devices])
    names = local.names
    shares = {m: s for m, s in demand.shares(settings.prior_slots).items() if m in names}
    if not names:
        return Placement({}, {}, shares)
    n = settings.horizon
    dealt = _deal(shares, n * k)
    rows = [dealt[i * k:(i + 1) * k] for i in range(len(dealt) // k)]
    aggs: list[str | None] = [aggregator if aggregator in names else None] * len(rows)
    if keyword_model in names:
        rows += [[keyword_model] * k] * math.ceil(n / k)
        aggs += [None] * math.ceil(n / k)
    work: dict[tuple[str, int], int] = {}
    if rows:
        index = {m: i for i, m in enumerate(names)}
        a = Assignment(names, np.array([[index[m] for m in r] for r in rows], dtype=np.int64))
        p = plan(a, local, aggregator=aggs if any(aggs) else None, replicate=False, optimize_s=0)
        arr = p.arrays
        for s in range(p.n_steps):
            if arr.kind_of(s) == StepKind.RUN:
                m, d = names[int(arr.model[s])], int(arr.device[s])
                work[m, d] = work.get((m, d), 0) + len(arr.items_of(s))
    size = {m.name: m.resident_bytes for m in local.models}
    home: dict[str, int] = {}
    for m in names:
        mine = {d: w for (x, d), w in work.items() if x == m}
        if mine:
            home[m] = max(mine, key=lambda d: (mine[d], -d))
    for m in names:
        if m not in home:
            homed = [sum(size[x] for x in home if home[x] == d) for d in range(len(local.devices))]
            fits = [d for d in range(len(local.devices)) if size[m] <= local.devices[d].memory_bytes] or [0]
            home[m] = min(fits, key=lambda d: (homed[d], d))
    slots_per_window = k * demand.per_window()
    value = {m: local.model(m).load_s * (1.0 if m in (keyword_model, aggregator)
                                           else 1.0 - (1.0 - shares.get(m, 0.0)) ** slots_per_window) for m in names}
    resident: dict[int, tuple[str, ...]] = {}
    for d, dev in enumerate(local.devices):
        here = sorted((m for m in names if home[m] == d),
                      key=lambda m: (m != keyword_model, m != aggregator, -value[m], m))
        resident[d] = tuple(_best_resident([m for m in here if value[m] > 0], value, size, dev.memory_bytes))
    return Placement(home, resident, shares)
