"""The lanes ``symoe serve`` runs batches on: one per device engine, one per endpoint model with an
engine of its own. Each model has one lane, its home (:mod:`.placement`'s plan); a window's batches
on different lanes run at once, one thread per lane, and those on the same lane one after the
other (an engine runs one batch at a time). The demand each window shows is recorded, and every
``replan_every`` windows the placement is planned again and the lanes swap to it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

from ..config.pool import Config
from ..generation import Engine
from .placement import Demand, Placement, ServePlanning, plan_placement
from .residency import Residency


class Lanes:
    """The lanes and the plan they follow. ``engines``: one per local device of ``cfg`` (in order),
    or one engine for every model (device 0; endpoint models it routes itself, as
    :func:`~symoe.execution.launch.stage_engine` makes it); ``endpoints``: endpoint models' own engines."""

    def __init__(self, cfg: Config, engines: Engine | Sequence[Engine], endpoints: Mapping[str, Engine],
                 keyword_model: str, aggregator: str, k: int, prior: Mapping[str, float],
                 settings: ServePlanning = ServePlanning()):
        engines = [engines] if isinstance(engines, Engine) else list(engines)
        local = [d for d in cfg.devices if d.endpoint is None]
        if not engines or len(engines) > max(len(local), 1):
            raise ValueError(f"{len(engines)} engines for a pool of {len(local)} devices")
        self.cfg, self.k, self.settings = cfg, k, settings
        self.keyword_model, self.aggregator = keyword_model, aggregator
        self.lanes = [Residency(cfg, e, local[d].memory_bytes if d < len(local) else float("inf"))
                      for d, e in enumerate(engines)]
        self.devices = len(engines)
        self.lane_of: dict[str, int] = {}
        for m in cfg.models:
            if m.endpoint:  # its own engine, else the routing engine of device 0
                if m.name in endpoints:
                    self.lanes.append(Residency(cfg, endpoints[m.name]))
                self.lane_of[m.name] = len(self.lanes) - 1 if m.name in endpoints else 0
        self.demand = Demand(prior)
        self.placement: Placement | None = None
        self.replans = 0  # plans after the first
        self.swaps = 0  # plans that changed a home or a resident set
        self._planned_at = 0  # windows observed when the last plan was made
        self.replan_error: str | None = None

    def of(self, model: str) -> Residency:
        """The lane that runs ``model``."""
        return self.lanes[self.lane_of.get(model, 0)]

    def plan(self, load: bool = True, strict: bool = False) -> list[str]:
        """Plan the placement from the demand so far and swap the lanes to it (``load``: load the
        planned residents now, else on demand; ``strict``: a failed load raises); returns the models loaded."""
        self._planned_at = self.demand.windows
        p = plan_placement(self.cfg, self.devices, self.demand, self.keyword_model, self.aggregator, self.k,
                           self.settings)
        old = self.placement
        self.lane_of.update(p.home)
        loaded: list[str] = []
        for d in range(self.devices):
            loaded += self.lanes[d].follow(p.resident.get(d, ()), {m for m, h in p.home.items() if h == d}, load, strict)
        if old is not None and (old.home, old.resident) != (p.home, p.resident):
            self.swaps += 1
        self.placement = p  # in force once the lanes follow it
        return loaded

    def observe(self, slots: Mapping[str, int], requests: int) -> None:
        """Record one window's expert slots and requests."""
        self.demand.observe(slots, requests)

    def replan_due(self) -> bool:
        """Whether ``replan_every`` windows have been observed since the last plan."""
        every = self.settings.replan_every
        return bool(every) and self.demand.windows >= self._planned_at + every

    def replan(self) -> list[str]:
        """:meth:`plan` again (between windows); returns the models loaded. A plan that fails keeps
        the placement as it was (the error is kept in ``replan_error``)."""
        self.replans += 1
        try:
            return self.plan()
        except Exception as e:  # noqa: BLE001  (serving goes on with the placement it has)
            self.replan_error = f"{type(e).__name__}: {e}"
            return []

    def describe(self) -> str:
        """The placement in a line: each device's models, resident ones marked ``*``."""
        p = self.placement
        if p is None:
            return "not planned"
        return "; ".join(f"device {d}: " + (", ".join(m + ("*" if m in p.resident.get(d, ()) else "")
                                                      for m in sorted(p.home) if p.home[m] == d) or "-")
                         for d in range(self.devices))

    @property
    def resident(self) -> dict[str, int]:
        """Every lane's resident models and their last use."""
        return {m: t for lane in self.lanes for m, t in lane.resident.items()}

    @property
    def loads(self) -> int:
        """Loads on every lane."""
        return sum(lane.loads for lane in self.lanes)

    @property
    def evictions(self) -> int:
        """Unloads on every lane."""
        return sum(lane.evictions for lane in self.lanes)

    def run(self, batches: Mapping[str, Callable[[], object]]) -> None:
        """Run each model's batch on its lane: lanes at once, one lane's batches in turn (resident
        models first, then by last use). An exception in a lane is raised here once all are done."""
        by_lane: dict[int, list[str]] = {}
        resident = self.resident
        for m in sorted(batches, key=lambda m: (m not in resident, -resident.get(m, 0), m)):
            by_lane.setdefault(self.lane_of.get(m, 0), []).append(m)
        errors: list[BaseException] = []

        def lane(models: list[str]) -> None:
            try:
                for m in models:
                    batches[m]()
            except BaseException as e:  # noqa: BLE001  (raised again on the window's thread)
                errors.append(e)

        if len(by_lane) <= 1:
            for models in by_lane.values():
                lane(models)
        else:
            threads = [threading.Thread(target=lane, args=(ms,), name=f"symoe-serve-lane-{i}", daemon=True)
                       for i, ms in by_lane.items()]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        if errors:
            raise errors[0]
