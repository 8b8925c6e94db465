"""Which models stay resident while serving, and the one engine that hosts them (device 0).

The rule (simple, and not planned by the C++ planner: the core plans batch runs, not live
traffic): at start, the keyword model and the aggregator come first (every request uses them),
then the experts in order of their expected frequency (each profile-vocabulary keyword routed as
a one-keyword question by the core's own routing, with the server's k), most frequent first,
loaded while they fit the device's memory. A model that is needed and not resident is loaded on
demand, unloading the least recently used models that are not needed right now until it fits.
Endpoint models take no device memory and are always "resident" once checked. An engine fault
kills the model; the next batch that needs it loads it again.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..config.pool import Config
from ..generation import Engine, ModelSettings
from ..generation.batch import DEADLINE_FACTOR, DEADLINE_MARGIN_S
from ..generation.engine import Clock, EngineError
from ..method.routing import Profiles, route


def expected_frequency(profiles: Profiles, k: int, seed: int = 0) -> dict[str, int]:
    """Slots each model gets when every vocabulary keyword is routed as a one-keyword question."""
    vocab = list(profiles.vocabulary)
    a = route(profiles, [[kw] for kw in vocab] or [[]], k=k, seed=seed, rare_threshold=0)
    return a.counts()


@dataclass
class Residency:
    """The models resident on the engine, their last use, and what was loaded or evicted."""

    cfg: Config
    engine: Engine
    resident: dict[str, int] = field(default_factory=dict)  # model -> last use (a counter)
    loads: int = 0
    evictions: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    _tick: int = 0

    def size(self, model: str) -> float:
        """Device bytes ``model`` holds (0 for an endpoint)."""
        m = self.cfg.model(model)
        return 0.0 if m.endpoint else m.resident_bytes

    @property
    def memory(self) -> float:
        """Device 0's memory."""
        return self.cfg.devices[0].memory_bytes

    def used(self) -> float:
        """Bytes of the resident models."""
        return sum(self.size(m) for m in self.resident)

    def plan_start(self, first: Sequence[str], experts_by_frequency: Sequence[str]) -> list[str]:
        """The models to load at start: ``first`` (always), then experts while they fit."""
        chosen: list[str] = []
        used = 0.0
        for m in [*first, *experts_by_frequency]:
            if m in chosen:
                continue
            if m in first or used + self.size(m) <= self.memory:
                chosen.append(m)
                used += self.size(m)
        return chosen

    def _clock(self) -> Clock:
        return getattr(self.engine, "clock", Clock())

    def ensure(self, model: str, keep: Sequence[str] = ()) -> None:
        """Make ``model`` resident (reloading it after a fault), evicting the least recently used
        models outside ``keep`` until it fits. Raises :class:`EngineError` if the load fails."""
        with self.lock:
            self._tick += 1
            if model in self.resident and self.engine.alive(model):
                self.resident[model] = self._tick
                return
            self.resident.pop(model, None)
            now = self._clock().now
            while self.resident and self.used() + self.size(model) > self.memory:
                victims = [m for m in self.resident if m not in keep and m != model]
                if not victims:
                    break
                lru = min(victims, key=lambda m: self.resident[m])
                del self.resident[lru]
                self.evictions += 1
                try:
                    self.engine.unload(lru, f"serve: unload {lru}", now() + DEADLINE_MARGIN_S)
                except EngineError:
                    self.engine.kill(lru)
            spec = self.cfg.model(model)
            self.engine.load(ModelSettings.of(self.cfg, model), f"serve: load {model}",
                             now() + DEADLINE_FACTOR * spec.load_s + DEADLINE_MARGIN_S)
            self.loads += 1
            self.resident[model] = self._tick

    def fault(self, model: str) -> None:
        """After an engine fault: drop the model; the next :meth:`ensure` loads it again."""
        with self.lock:
            self.resident.pop(model, None)
        self.engine.kill(model)
