"""A fake engine for tests and simulation: deterministic text that ends in a parseable answer,
latencies from the cost model on a scaled clock (a plan of hours runs in seconds), a memory check
on every load, and injectable faults (death, hang, malformed output, slow device)."""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .engine import BatchInfo, Clock, Engine, EngineError, EngineTimeout, ModelSettings, OnDone, generation_from_event
from .requests import Request

if TYPE_CHECKING:
    from ..config import Config

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
    """One fake device. ``clock`` is shared by every device of a run (and the scheduler)."""

    def __init__(self, device: int, cfg: Config, clock: ScaledClock, faults: Sequence[Fault] = (), slow: float = 1.0):
        self.device, self.cfg, self.clock, self.faults, self.slow = device, cfg, clock, list(faults), slow
        self.memory = cfg.devices[device].memory_bytes
        self._lock = threading.Lock()
        self.resident: dict[str, bool] = {}  # model -> awake
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

    def load(self, model: ModelSettings, what: str, deadline: float, keep_spare: bool = True) -> dict[str, Any]:
        m = self.cfg.model(model.name)
        with self._lock:
            if model.name in self.resident:
                raise EngineError(f"{what}: model {model.name} is already resident on device {self.device}")
            used = sum(self._bytes(x, awake) for x, awake in self.resident.items())
            if used + m.resident_bytes > self.memory * (1 + 1e-9):
                raise EngineError(f"{what}: out of memory on device {self.device}: {used / 1e9:.1f} GB resident, "
                                  f"{m.resident_bytes / 1e9:.1f} GB more does not fit {self.memory / 1e9:.1f} GB")
        self._take("load", model.name, m.load_s, what, deadline)
        with self._lock:
            self.resident[model.name] = True
            self.dead.discard(model.name)
        return {"load_s": m.load_s}

    def _bytes(self, name: str, awake: bool) -> float:
        m = self.cfg.model(name)
        return m.resident_bytes if awake else 0.0  # parked: weights in host memory

    def _need(self, model: str, what: str, awake: bool = True) -> None:
        with self._lock:
            state = self.resident.get(model)
        if state is None or (awake and not state):
            raise EngineError(f"{what}: model {model} is not {'awake' if state is False else 'resident'} "
                              f"on device {self.device}")

    def generate(self, model: str, requests: Sequence[Request], on_done: OnDone, what: str, deadline: float) -> BatchInfo:
        self._need(model, what)
        role = requests[0].role if requests else "expert"
        pin, out = self.cfg.model_tokens(model).of(role)
        seconds = self.cfg.run_seconds(model, role, len(requests)) * self.slow
        f = self._fault("generate", model)
        if f is not None and f.kind == "slow":
            seconds *= f.factor
        start = self.clock.now()
        pending = {r.key: r for r in requests}
        stats = [0, 0, 0]
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
            stats[0] += g.tokens
            stats[1] += g.prompt_tokens
            stats[2] += 1
            on_done(g)
        return BatchInfo(self.clock.now() - start, stats[0], stats[1], stats[2])

    def park(self, model: str, what: str, deadline: float) -> None:
        self._need(model, what)
        self._take("park", model, self.cfg.model(model).park_s, what, deadline)
        with self._lock:
            self.resident[model] = False

    def wake(self, model: str, what: str, deadline: float) -> None:
        self._need(model, what, awake=False)
        m = self.cfg.model(model)
        with self._lock:
            used = sum(self._bytes(x, awake) for x, awake in self.resident.items())
            if used + m.resident_bytes > self.memory * (1 + 1e-9):
                raise EngineError(f"{what}: out of memory on device {self.device} waking {model}")
        self._take("wake", model, m.wake_s, what, deadline)
        with self._lock:
            self.resident[model] = True

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

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self.resident.clear()
