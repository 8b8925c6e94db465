"""The models loaded on one lane of ``symoe serve`` (a device's engine, or an endpoint model's own
engine), and how a model is brought there: which models *should* stay resident is
:mod:`.placement`'s plan; this module keeps the lane in step with it.

A model needed and not loaded is loaded on demand; to make room, the lane unloads first the models
the plan does not keep resident here, then the planned ones, least recently used first, never a
model the current batch needs. Endpoint models take no device memory. An engine fault kills the
model; the next batch that needs it loads it again.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from ..config.pool import Config
from ..generation import Engine, ModelSettings
from ..generation.batch import DEADLINE_FACTOR, DEADLINE_MARGIN_S
from ..generation.engine import Clock, EngineError
from ..method.routing import Profiles, route


def expected_frequency(profiles: Profiles, k: int, seed: int = 0) -> dict[str, int]:
    """Slots each model gets when every vocabulary keyword is routed as a one-keyword question
    (the prior of :mod:`.placement`, before any request is seen)."""
    vocab = list(profiles.vocabulary)
    a = route(profiles, [[kw] for kw in vocab] or [[]], k=k, seed=seed, rare_threshold=0)
    return a.counts()


@dataclass
class Residency:
    """The models resident on one lane's engine (``memory``: its device's bytes; endpoint lanes
    have no limit), their last use, the models the plan keeps here, and what was loaded or evicted."""

    cfg: Config
    engine: Engine
    memory: float = float("inf")
    planned: frozenset[str] = frozenset()  # what the plan keeps resident on this lane
    resident: dict[str, int] = field(default_factory=dict)  # model -> last use (a counter)
    loads: int = 0
    evictions: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)
    _tick: int = 0

    def size(self, model: str) -> float:
        """Device bytes ``model`` holds (0 for an endpoint)."""
        m = self.cfg.model(model)
        return 0.0 if m.endpoint else m.resident_bytes

    def used(self) -> float:
        """Bytes of the resident models."""
        return sum(self.size(m) for m in self.resident)

    def _clock(self) -> Clock:
        return getattr(self.engine, "clock", Clock())

    def drop(self, model: str) -> None:
        """Unload ``model`` (killed if the unload fails)."""
        with self.lock:
            if self.resident.pop(model, None) is None:
                return
            self.evictions += 1
            try:
                self.engine.unload(model, f"serve: unload {model}", self._clock().now() + DEADLINE_MARGIN_S)
            except EngineError:
                self.engine.kill(model)

    def ensure(self, model: str, keep: Collection[str] = ()) -> None:
        """Make ``model`` resident (reloading it after a fault), evicting models outside ``keep``
        until it fits: unplanned ones first, then the least recently used. Raises
        :class:`EngineError` if the load fails."""
        with self.lock:
            self._tick += 1
            if model in self.resident and self.engine.alive(model):
                self.resident[model] = self._tick
                return
            self.resident.pop(model, None)
            while self.resident and self.used() + self.size(model) > self.memory:
                victims = [m for m in self.resident if m not in keep and m != model]
                if not victims:
                    break
                self.drop(min(victims, key=lambda m: (m in self.planned, self.resident[m])))
            spec = self.cfg.model(model)
            self.engine.load(ModelSettings.of(self.cfg, model), f"serve: load {model}",
                             self._clock().now() + DEADLINE_FACTOR * spec.load_s + DEADLINE_MARGIN_S)
            self.loads += 1
            self.resident[model] = self._tick

    def follow(self, planned: Sequence[str], homed: Collection[str], load: bool = True, strict: bool = False) -> list[str]:
        """Adopt a new plan: unload what is no longer homed here, then (``load``) load the planned
        models not yet resident, in ``planned``'s order; returns those loaded. A load that fails
        raises (``strict``) or leaves its model to be loaded on demand."""
        with self.lock:
            self.planned = frozenset(planned)
            for m in [m for m in self.resident if m not in homed]:
                self.drop(m)
            loaded: list[str] = []
            for m in planned if load else ():
                if m in self.resident:
                    continue
                try:
                    self.ensure(m, keep=self.planned)
                    loaded.append(m)
                except EngineError:
                    self.fault(m)
                    if strict:
                        raise
            return loaded

    def fault(self, model: str) -> None:
        """After an engine fault: drop the model; the next :meth:`ensure` loads it again."""
        with self.lock:
            self.resident.pop(model, None)
        self.engine.kill(model)
