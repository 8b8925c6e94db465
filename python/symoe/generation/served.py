"""Served engine: models a pool entry marks ``serve = "vllm"`` run in a vLLM OpenAI-compatible
server that symoe starts itself, one server process per resident model.

The plan's load step starts ``python -m vllm.entrypoints.openai.api_server`` for the model on a
free port of 127.0.0.1 (never another interface), with the device's engine environment
(:func:`.process.engine_env`: CPU thread binding, or ``CUDA_VISIBLE_DEVICES`` and the planned memory
share on a GPU), and waits for ``/health`` within the step's deadline; generation goes through
the same client code as remote endpoints (:mod:`.openai_client`); the unload step stops the
server (:class:`.vllm_server.Server`: its process group, SIGTERM, then SIGKILL). Park and wake
use the server's ``/sleep`` and ``/wake_up`` where vLLM allows them (GPU, sleep mode, dev mode).
Each server's log is kept in the run directory and its tail quoted in errors.

Models of the device that are not served go to ``others`` (the in-process :class:`LocalEngine`).
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from ..records import Request
from .device_group import group_env
from .endpoint import EndpointSettings
from .engine import BatchInfo, Clock, Engine, EngineError, EngineTimeout, ModelSettings, OnDone, OnText, without_keys
from .openai_client import RemoteClient, generate_concurrently
from .process import engine_env
from .vllm_server import STOP_GRACE_S, Server, free_port

HEALTH_POLL_S = 0.5


class ServedEngine(Engine):
    """The vLLM servers of one device; models not in ``served`` are passed to ``others``."""

    def __init__(self, device: int, env: Mapping[str, str], log_dir: Path, served: set[str],
                 others: Engine | None = None, max_concurrency: int = 256, clock: Clock | None = None,
                 env_of_group: Callable[[Sequence[int]], Mapping[str, str]] | None = None):
        self.device, self.env, self.log_dir, self.served, self.others = device, dict(env), log_dir, set(served), others
        self.env_of_group = env_of_group  # a model sharded over several devices (tensor parallel) sees them all
        self.max_concurrency = max_concurrency  # vLLM batches them; this bounds open connections only
        self.clock = clock or Clock()
        self._lock = threading.Lock()
        self.servers: dict[str, Server] = {}
        self._n = itertools.count(1)
        self._closed = False

    @classmethod
    def for_config(cls, cfg: Any, device: int, log_dir: Path, served: set[str], others: Engine | None = None) -> ServedEngine:
        """The servers of ``device`` with the config's engine environment."""
        eng = cfg.engine
        local = sum(d.endpoint is None for d in cfg.devices)  # endpoints' virtual devices use no cores
        env = without_keys(engine_env(eng.platform, device, local, eng.threads, eng.kv_cache_gb), cfg)
        return cls(device, env, log_dir, served, others,
                   env_of_group=lambda g: group_env(env, eng.platform, g, local, eng.threads))

    # --- routing -----------------------------------------------------------------------------

    def _other(self, model: str, what: str) -> Engine:
        if self.others is None:
            raise EngineError(f"{what}: model {model} is not served on device {self.device} and no local engine is set")
        return self.others

    def _server(self, model: str, what: str) -> Server:
        with self._lock:
            srv = self.servers.get(model)
        if srv is None:
            raise EngineError(f"{what}: model {model} has no running server on device {self.device}")
        return srv

    def prepare(self) -> None:
        if self.others is not None:
            self.others.prepare()

    # --- lifecycle ---------------------------------------------------------------------------

    def load(self, model: ModelSettings, what: str, deadline: float, keep_spare: bool = True) -> dict[str, Any]:
        if model.name not in self.served:
            return self._other(model.name, what).load(model, what, deadline, keep_spare)
        model = self.sized(model)
        with self._lock:
            if self._closed:
                raise EngineError(f"{what}: engine closed")
            if model.name in self.servers:
                raise EngineError(f"{what}: model {model.name} already has a server on device {self.device}")
            n = next(self._n)
        t0 = time.perf_counter()
        port = free_port()
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model.name)
        env = self.env
        if len(model.device_group) > 1:
            if self.env_of_group is None:
                raise EngineError(f"{what}: model {model.name} spans devices {list(model.device_group)}, and the "
                                  f"engine of device {self.device} was made for that device alone (for_config)")
            env = dict(self.env_of_group(model.device_group))
        srv = Server.start(model, port, env, self.log_dir / f"device{self.device}-{safe}-server{n}.log")
        with self._lock:
            closed = self._closed
            if not closed:
                self.servers[model.name] = srv
        if closed:
            srv.stop(0)
            raise EngineError(f"{what}: engine closed")
        try:
            self._wait_healthy(srv, what, deadline)
            srv.client = RemoteClient(EndpointSettings(
                model.name, f"{srv.base}/v1", chat=model.chat, max_concurrency=self.max_concurrency,
                request_timeout_s=24 * 3600.0, max_attempts=2))  # the step's deadline bounds it
            srv.client.check(deadline, self.clock)
        except EngineError as e:
            self.kill(model.name)
            tail = "" if "server log" in str(e) else "\n" + srv.log_tail()
            raise type(e)(f"{e}{tail}") from None
        return {"load_s": time.perf_counter() - t0, "port": port, "pid": srv.proc.pid, "log": str(srv.log_path)}

    def _wait_healthy(self, srv: Server, what: str, deadline: float) -> None:
        with httpx.Client(timeout=2.0) as http:
            while True:
                code = srv.proc.poll()
                if code is not None:
                    raise EngineError(f"{what}: the vLLM server of model {srv.model.name} exited with code {code} "
                                      f"before it was healthy\n{srv.log_tail()}")
                try:
                    if http.get(f"{srv.base}/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass  # not listening yet
                if self.clock.now() + HEALTH_POLL_S > deadline:
                    raise EngineTimeout(f"{what}: the vLLM server of model {srv.model.name} was not healthy by "
                                        f"the load deadline; killed\n{srv.log_tail()}")
                with self._lock:
                    if self._closed:
                        raise EngineError(f"{what}: engine closed")
                time.sleep(HEALTH_POLL_S)

    def generate(self, model: str, requests: Sequence[Request], on_done: OnDone, what: str, deadline: float) -> BatchInfo:
        return self.generate_streaming(model, requests, on_done, lambda key, text: None, (), what, deadline)

    def generate_streaming(self, model: str, requests: Sequence[Request], on_done: OnDone, on_text: OnText,
                           streamed: Collection[str], what: str, deadline: float) -> BatchInfo:
        if model not in self.served:
            return self._other(model, what).generate_streaming(model, requests, on_done, on_text, streamed, what,
                                                               deadline)
        srv = self._server(model, what)
        assert srv.client is not None
        try:
            return generate_concurrently(srv.client, requests, on_done, what, deadline, self.clock, on_text, streamed)
        except EngineError as e:
            dead = srv.proc.poll() is not None
            self.kill(model)
            raise type(e)(f"{e}{' (the server died)' if dead else ''}\n{srv.log_tail()}") from None

    def _dev_call(self, model: str, path: str, what: str, deadline: float) -> None:
        srv = self._server(model, what)
        if not srv.model.sleep:
            raise EngineError(f"{what}: sleep mode is not enabled for model {model} (GPU only)")
        try:
            with httpx.Client(timeout=max(1.0, deadline - self.clock.now())) as http:
                r = http.post(f"{srv.base}{path}")
        except httpx.TimeoutException:
            self.kill(model)
            raise EngineTimeout(f"{what}: POST {path} to the server of model {model} missed its deadline; killed\n"
                                f"{srv.log_tail()}") from None
        except httpx.HTTPError as e:
            raise EngineError(f"{what}: POST {path} to the server of model {model} failed: {e}\n{srv.log_tail()}") from None
        if r.status_code != 200:
            raise EngineError(f"{what}: POST {path} answered {r.status_code}: {r.text[:200]}\n{srv.log_tail()}")

    def park(self, model: str, what: str, deadline: float) -> None:
        if model not in self.served:
            return self._other(model, what).park(model, what, deadline)
        self._dev_call(model, "/sleep?level=1", what, deadline)

    def wake(self, model: str, what: str, deadline: float) -> None:
        if model not in self.served:
            return self._other(model, what).wake(model, what, deadline)
        self._dev_call(model, "/wake_up", what, deadline)

    def unload(self, model: str, what: str, deadline: float) -> None:
        if model not in self.served:
            return self._other(model, what).unload(model, what, deadline)
        self._server(model, what)
        with self._lock:
            srv = self.servers.pop(model)
        srv.stop(max(0.0, min(STOP_GRACE_S, deadline - self.clock.now())))

    def alive(self, model: str) -> bool:
        if model not in self.served:
            return self.others is not None and self.others.alive(model)
        with self._lock:
            srv = self.servers.get(model)
        return srv is not None and srv.proc.poll() is None

    def kill(self, model: str) -> None:
        if model not in self.served:
            if self.others is not None:
                self.others.kill(model)
            return
        with self._lock:
            srv = self.servers.pop(model, None)
        if srv is not None:
            srv.stop(0)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            servers = list(self.servers.values())
            self.servers.clear()
        for srv in servers:
            srv.stop(0)
        if self.others is not None:
            self.others.close()
