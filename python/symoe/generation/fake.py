"""A fake engine for tests and simulation: deterministic text that ends in a parseable answer,
latencies from the cost model on a scaled clock (a plan of hours runs in seconds), a memory check
on every load, and injectable faults (death, hang, malformed output, slow device).

A model the plan shards over a group of devices (a tensor-parallel step) is hosted, as by real
engines, by the engine of the group's first device; engines made together (:func:`fake_engines`)
see each other, so such a model holds its share (1/tp) of memory on every device of the group,
generates at the cost model's tp speed, and while it generates no other generation may run on any
device of the group (refused: a scheduler that let one through is caught)."""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..records import Request
from .engine import BatchInfo, Clock, Engine, EngineError, EngineTimeout, ModelSettings, OnDone, Tally, generation_from_event

if TYPE_CHECKING:
    from ..config.pool import Config

TICK_S = 0.002  # real seconds between checks while a batch runs


class ScaledClock(Clock):
    """``scale`` real seconds per clock second. ``scale=0``: engines take no time at all, and the
    clock reads real seconds (what remains is the scheduler's own overhead)."""

    def __init__(self, scale: float):
        self.scale = scale
        self._t0 = time.monotonic()

    def now(self) -> float:
        """Seconds on this clock (real time times the scale)."""
        return (time.monotonic() - self._t0) / (self.scale or 1.0)

    def real(self, seconds: float) -> float:
        return seconds * self.scale


@dataclass
class Fault:
    """Fires on the ``nth`` (1-based) matching call, ``times`` times in a row.

    ``die``: the host dies (after ``after`` generations of a batch); ``hang``: it stops answering
    until the deadline; ``garbage``: a malformed generation; ``slow``: the call takes ``factor``
    times longer."""

    kind: Literal["die", "hang", "garbage", "slow"]
    op: Literal["load", "generate", "unload", "park", "wake"] = "generate"
    model: str | None = None
    nth: int = 1
    times: int = 1
    after: int = 0
    factor: float = 10.0
    seen: int = 0

    def fires(self, op: str, model: str) -> bool:
        """Whether this fault hits the given call."""
        if op != self.op or (self.model is not None and model != self.model):
            return False
        self.seen += 1
        return self.nth <= self.seen < self.nth + self.times


def fake_text(r: Request) -> str:
    """Deterministic per request; ends in an answer the grader reads."""
    h = zlib.crc32(r.key.encode())
    body = r.messages[-1]["content"] if r.messages else (r.prompt or "")
    if r.role == "keywords":
        topics = ["algebra", "physics", "law", "biology", "economics"]
        return "Keywords: " + ", ".join(topics[i % 5] for i in range(h % 3, h % 3 + 3))
    answer = f"\\boxed{{{h % 1000}}}" if "\\boxed" in body[-300:] else f"({'ABCDEFGHIJ'[h % 10]})"
    return f"[{r.model}] Let me think step by step. The answer is {answer}"


class FakeEngine(Engine):
    """One fake device. ``clock`` is shared by every device of a run (and the scheduler); engines
    made by :func:`fake_engines` also share their lock and see each other (``peers``)."""

    def __init__(self, device: int, cfg: Config, clock: ScaledClock, faults: Sequence[Fault] = (), slow: float = 1.0):
        self.device, self.cfg, self.clock, self.faults, self.slow = device, cfg, clock, list(faults), slow
        self.memory = cfg.devices[device].memory_bytes
        self._lock = threading.Lock()
        self.peers: list[FakeEngine] | None = None  # every device's engine, once linked
        self.resident: dict[str, bool] = {}  # model -> awake (the models this engine hosts)
        self.groups: dict[str, tuple[int, ...]] = {}  # hosted model -> the devices it is sharded over
        self.held: dict[str, tuple[float, bool]] = {}  # model with memory here (hosted, or a shard) -> bytes, awake
        self.generating: str | None = None  # the step whose generation occupies this device
        self.peak_bytes = 0.0
        self.dead: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.log: list[tuple[str, str, str, float, float]] = []  # (key, role, question, batch start, finish)
        self._closed = threading.Event()

    def _fault(self, op: str, model: str) -> Fault | None:
        with self._lock:
            self.calls.append((op, model))
            return next((f for f in self.faults if f.fires(op, model)), None)

    def _wait_until(self, t: float, what: str, deadline: float) -> None:
        """Sleep until clock time ``t``; past the deadline the call times out, on close it fails."""
        if self.clock.scale == 0 and t != float("inf"):
            return
        while True:
            now = self.clock.now()
            if now >= t:
                return
            if now >= deadline:
                raise EngineTimeout(f"{what}: no answer by its deadline; killed")
            if self._closed.wait(min(self.clock.real(min(t, deadline) - now), 0.05)):
                raise EngineError(f"{what}: engine closed")

    def _take(self, op: str, model: str, seconds: float, what: str, deadline: float) -> None:
        f = self._fault(op, model)
        if f is not None and f.kind == "slow":
            seconds *= f.factor
        if f is not None and f.kind == "hang":
            self._hang(model, what, deadline)
        if f is not None and f.kind in ("die", "garbage"):
            self.kill(model)
            raise EngineError(f"{what}: worker exited with code -9 (fake {f.kind})")
        self._wait_until(self.clock.now() + seconds * self.slow, what, deadline)

    def _hang(self, model: str, what: str, deadline: float) -> None:
        try:
            self._wait_until(float("inf"), what, deadline)
        finally:
            self.kill(model)

    def _group(self, model: ModelSettings, what: str) -> list[FakeEngine]:
        """The engines of the devices ``model`` is sharded over (this one alone normally)."""
        group = model.device_group or (self.device,)
        if group == (self.device,):
            return [self]
        if self.peers is None or group[0] != self.device or group[-1] >= len(self.peers):
            raise EngineError(f"{what}: model {model.name} spans devices {list(group)}: the fake engine of device "
                              f"{self.device} is not linked to them as their first (make the engines with fake_engines())")
        return [self.peers[d] for d in group]

    def _of(self, model: str) -> list[FakeEngine]:
        """The engines of a hosted model's group."""
        group = self.groups.get(model, (self.device,))
        return [self] if self.peers is None else [self.peers[d] for d in group]

    def used_bytes(self) -> float:
        """Device memory in use: the awake models' shares (parked weights are in host memory)."""
        return sum(size for size, awake in self.held.values() if awake)

    def _fits(self, group: list[FakeEngine], model: str, what: str, doing: str) -> None:
        """Each device of the group has room for its share of ``model`` (under the lock)."""
        size = self.cfg.model(model).resident_bytes / len(group)
        for e in group:
            used = e.used_bytes()
            if used + size > e.memory * (1 + 1e-9):
                raise EngineError(f"{what}: out of memory on device {e.device} {doing} {model}: {used / 1e9:.1f} GB "
                                  f"resident, {size / 1e9:.1f} GB more does not fit {e.memory / 1e9:.1f} GB")

    def _hold(self, model: str, awake: bool | None) -> None:
        """Set (None: drop) a hosted model's share on every device of its group (under the lock)."""
        group = self._of(model)
        for e in group:
            if awake is None:
                e.held.pop(model, None)
            else:
                e.held[model] = (self.cfg.model(model).resident_bytes / len(group), awake)
                e.peak_bytes = max(e.peak_bytes, e.used_bytes())

    def load(self, model: ModelSettings, what: str, deadline: float, keep_spare: bool = True) -> dict[str, Any]:
        m = self.cfg.model(model.name)
        group = self._group(model, what)
        with self._lock:
            if model.name in self.resident:
                raise EngineError(f"{what}: model {model.name} is already resident on device {self.device}")
            self._fits(group, model.name, what, "loading")
        self._take("load", model.name, m.load_s, what, deadline)
        with self._lock:
            self.resident[model.name] = True
            self.groups[model.name] = tuple(e.device for e in group)
            self._hold(model.name, True)
            self.dead.discard(model.name)
        return {"load_s": m.load_s, "devices": [e.device for e in group]}

    def _need(self, model: str, what: str, awake: bool = True) -> None:
        with self._lock:
            state = self.resident.get(model)
        if state is None or (awake and not state):
            raise EngineError(f"{what}: model {model} is not {'awake' if state is False else 'resident'} "
                              f"on device {self.device}")

    def generate(self, model: str, requests: Sequence[Request], on_done: OnDone, what: str, deadline: float) -> BatchInfo:
        self._need(model, what)
        with self._lock:  # the generation occupies every device of the model's group
            group = self._of(model)
            busy = next((e for e in group if e.generating is not None), None)
            if busy is not None:
                why = "a tensor-parallel step needs its whole group" if len(group) > 1 else "one at a time"
                raise EngineError(f"{what}: device {busy.device} is generating meanwhile ({busy.generating}); {why}")
            for e in group:
                e.generating = what
        try:
            return self._generate(model, requests, on_done, what, deadline, group)
        finally:
            with self._lock:
                for e in group:
                    e.generating = None

    def _generate(self, model: str, requests: Sequence[Request], on_done: OnDone, what: str, deadline: float,
                  group: list[FakeEngine]) -> BatchInfo:
        role = requests[0].role if requests else "expert"
        pin, out = self.cfg.model_tokens(model).of(role)
        # The cost model's time at tp = the group's size (its TP rule); the group's slowest device sets the pace.
        seconds = self.cfg.run_seconds(model, role, len(requests), len(group)) * max(e.slow for e in group)
        f = self._fault("generate", model)
        if f is not None and f.kind == "slow":
            seconds *= f.factor
        start = self.clock.now()
        pending = {r.key: r for r in requests}
        tally = Tally()
        for i, r in enumerate(requests):
            if f is not None and f.kind in ("die", "hang", "garbage") and i == f.after:
                if f.kind == "hang":
                    self._hang(model, what, deadline)
                self.kill(model)
                if f.kind == "garbage":
                    generation_from_event({"id": r.key, "text": None, "tokens": -1}, pending, what, 0.0)
                raise EngineError(f"{what}: worker exited with code -9 (fake death)")
            # Generations finish evenly over the batch's time; each is handed back when due.
            self._wait_until(start + seconds * (i + 1) / len(requests) if i + 1 < len(requests) else start + seconds,
                             what, deadline)
            ev = {"id": r.key, "text": fake_text(r), "tokens": int(out), "prompt_tokens": int(pin), "finish": "stop"}
            g = generation_from_event(ev, pending, what, self.clock.now() - start)
            with self._lock:
                self.log.append((r.key, r.role, r.question, start, self.clock.now()))
            del pending[r.key]
            tally.add(g)
            on_done(g)
        return tally.info(self.clock.now() - start)

    def park(self, model: str, what: str, deadline: float) -> None:
        self._need(model, what)
        self._take("park", model, self.cfg.model(model).park_s, what, deadline)
        with self._lock:
            self.resident[model] = False
            self._hold(model, False)

    def wake(self, model: str, what: str, deadline: float) -> None:
        self._need(model, what, awake=False)
        with self._lock:
            self._fits(self._of(model), model, what, "waking")
        self._take("wake", model, self.cfg.model(model).wake_s, what, deadline)
        with self._lock:
            self.resident[model] = True
            self._hold(model, True)

    def unload(self, model: str, what: str, deadline: float) -> None:
        self._need(model, what, awake=False)
        self._take("unload", model, self.cfg.model(model).unload_s, what, deadline)
        self.kill(model)

    def alive(self, model: str) -> bool:
        with self._lock:
            return model in self.resident

    def kill(self, model: str) -> None:
        with self._lock:
            if self.resident.pop(model, None) is not None:
                self.dead.add(model)
                self._hold(model, None)
                self.groups.pop(model, None)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            for model in list(self.resident):
                self._hold(model, None)
            self.resident.clear()
            self.groups.clear()


def fake_engines(cfg: Config, clock: ScaledClock, faults: Mapping[int, Sequence[Fault]] | None = None,
                 slow: Mapping[int, float] | None = None) -> list[FakeEngine]:
    """One fake engine per device of ``cfg``, linked: a model sharded over a group of devices holds
    memory on, and keeps other generations off, every one of them. ``faults`` and ``slow`` by device."""
    engines = [FakeEngine(d, cfg, clock, (faults or {}).get(d, ()), (slow or {}).get(d, 1.0))
               for d in range(len(cfg.devices))]
    lock = threading.Lock()  # one lock: a sharded model's state spans engines
    for e in engines:
        e.peers, e._lock = engines, lock
    return engines
