"""Local engine: vLLM worker processes on this machine, one per resident model.

A model lives in its own process (``worker.py``, started and piped by :mod:`.process`), so unloading
it really frees its memory (vLLM does not return all of it in-process) and several models can share
a device. A warm spare process, with ``vllm`` already imported, is kept per device so a load only
pays the engine start.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import require
from ..records import Request
from .device_group import group_env
from .engine import (
    BatchInfo,
    Clock,
    Engine,
    EngineError,
    ModelSettings,
    OnDone,
    OnText,
    Tally,
    generation_from_event,
    without_keys,
)
from .process import Worker, engine_env

if TYPE_CHECKING:
    from ..config.pool import Config


class LocalEngine(Engine):
    """The workers of one device: the resident models and one warm spare."""

    def __init__(self, device: int, env: Mapping[str, str], log_dir: Path,
                 env_of_group: Callable[[Sequence[int]], Mapping[str, str]] | None = None):
        self.device, self.env, self.log_dir, self.env_of_group = device, env, log_dir, env_of_group
        self.clock = Clock()
        self._lock = threading.Lock()  # guards resident, spare and closed
        self.resident: dict[str, Worker] = {}
        self.spare: Worker | None = None
        self._n = 0
        self._closed = False

    @classmethod
    def for_config(cls, cfg: Config, device: int, log_dir: Path) -> LocalEngine:
        """The engine of ``device`` with the config's engine environment."""
        eng = cfg.engine
        local = sum(d.endpoint is None for d in cfg.devices)  # endpoints' virtual devices use no cores
        env = without_keys(engine_env(eng.platform, device, local, eng.threads, eng.kv_cache_gb), cfg)
        return cls(device, env, log_dir, lambda g: group_env(env, eng.platform, g, local, eng.threads))

    def _new_worker(self, env: Mapping[str, str] | None = None) -> Worker:
        require("vllm", f"the in-process engine of device {self.device}")  # one line, not a worker's traceback
        with self._lock:
            if self._closed:
                raise EngineError(f"device {self.device}: engine closed")
            self._n += 1
            n = self._n
        w = Worker(env or self.env, self.log_dir / f"device{self.device}-worker{n}.log")
        with self._lock:
            if self._closed:  # closed while it started
                w.kill()
                raise EngineError(f"device {self.device}: engine closed")
        return w

    def prepare(self) -> None:
        with self._lock:
            need = self.spare is None
        if need:
            w = self._new_worker()
            with self._lock:
                self.spare, extra = (w, None) if self.spare is None else (self.spare, w)
            if extra:
                extra.kill()

    def load(self, model: ModelSettings, what: str, deadline: float, keep_spare: bool = True) -> dict[str, Any]:
        with self._lock:
            if model.name in self.resident:
                raise EngineError(f"{what}: model {model.name} is already resident on device {self.device}")
            sharded = len(model.device_group) > 1  # the spare sees this device alone: a worker of its own
            w, self.spare = (None, self.spare) if sharded else (self.spare, None)
        w = w or self._new_worker(self._group_env(model, what) if sharded else None)
        if keep_spare:  # the next worker imports vllm while this one loads
            self.prepare()
        t0 = time.perf_counter()
        try:
            w.wait_ready(what, deadline)
            ready_s = time.perf_counter() - t0
            info = w.request({"op": "load", "model": self.sized(model).wire()}, what, deadline)
        except EngineError:
            w.kill()
            raise
        with self._lock:
            self.resident[model.name] = w
        return {"import_s": info.get("import_s"), "load_s": info.get("load_s"), "spare_wait_s": ready_s}

    def _group_env(self, model: ModelSettings, what: str) -> Mapping[str, str]:
        if self.env_of_group is None:
            raise EngineError(f"{what}: model {model.name} spans devices {list(model.device_group)}, and the engine "
                              f"of device {self.device} was made for that device alone (LocalEngine.for_config)")
        return self.env_of_group(model.device_group)

    def _worker(self, model: str, what: str) -> Worker:
        with self._lock:
            w = self.resident.get(model)
        if w is None:
            raise EngineError(f"{what}: model {model} is not resident on device {self.device}")
        return w

    def generate(self, model: str, requests: Sequence[Request], on_done: OnDone, what: str, deadline: float) -> BatchInfo:
        return self.generate_streaming(model, requests, on_done, lambda key, text: None, (), what, deadline)

    def generate_streaming(self, model: str, requests: Sequence[Request], on_done: OnDone, on_text: OnText,
                           streamed: Collection[str], what: str, deadline: float) -> BatchInfo:
        pending = {r.key: r for r in requests}
        tally = Tally()
        t0 = time.perf_counter()
        texts: dict[str, str] = {}

        def done(ev: dict[str, Any]) -> None:
            if ev.get("event") == "text":  # the worker sends what was added; on_text gets it all
                key = str(ev.get("id"))
                if key in pending and isinstance(ev.get("delta"), str):
                    texts[key] = texts.get(key, "") + ev["delta"]
                    on_text(key, texts[key])
                return
            g = generation_from_event(ev, pending, what, time.perf_counter() - t0)
            del pending[g.key]
            tally.add(g)
            on_done(g)

        w = self._worker(model, what)
        try:
            msg: dict[str, Any] = {"op": "generate", "requests": [r.wire() for r in requests]}
            if streamed:
                msg["stream"] = sorted(set(streamed) & pending.keys())
            reply = w.request(msg, what, deadline, done)
        except EngineError:
            self.kill(model)
            raise
        if pending:
            raise EngineError(f"{what}: the worker finished without {len(pending)} of the requests")
        return tally.info(time.perf_counter() - t0, reply.get("first_token_s"))

    def park(self, model: str, what: str, deadline: float) -> None:
        self._worker(model, what).request({"op": "park"}, what, deadline)

    def wake(self, model: str, what: str, deadline: float) -> None:
        self._worker(model, what).request({"op": "wake"}, what, deadline)

    def unload(self, model: str, what: str, deadline: float) -> None:
        self._worker(model, what)
        self.kill(model)

    def alive(self, model: str) -> bool:
        with self._lock:
            w = self.resident.get(model)
        return w is not None and w.proc.poll() is None

    def kill(self, model: str) -> None:
        with self._lock:
            w = self.resident.pop(model, None)
        if w is not None:
            w.kill()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers = list(self.resident.values()) + ([self.spare] if self.spare else [])
            self.resident.clear()
            self.spare = None
        for w in workers:
            w.kill()
