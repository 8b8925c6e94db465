"""The Ray actor that hosts one model's vLLM engine (:class:`ModelHost`), the environment it runs
with, and what the driver keeps of each resident actor (:class:`Hosted`)."""

from __future__ import annotations

import os
import queue
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..generation.engine import ModelSettings
from ..generation.process import engine_env
from ..generation.worker import VllmEngine  # (vLLM itself is imported when an engine loads)


class ModelHost:
    """Ray actor body: one vLLM engine, driven on one engine thread as the worker process drives
    it (vLLM's CPU thread binding holds for the thread that started the engine)."""

    def __init__(self) -> None:
        self.engine = VllmEngine()
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="symoe-engine")

    def load(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Start the engine (``spec``: :meth:`ModelSettings.wire`); timings, pid and node id."""
        import ray

        info = self.thread.submit(self.engine.load, spec).result()
        return {**info, "pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}

    def generate(self, requests: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Yields one event per finished request, then the batch summary (``"summary": True``)."""
        events: queue.Queue[dict[str, Any] | None] = queue.Queue()

        def work() -> dict[str, Any]:
            try:
                return self.engine.generate(requests, events.put)
            finally:
                events.put(None)

        fut = self.thread.submit(work)
        while (ev := events.get()) is not None:
            yield ev
        yield {"summary": True, **fut.result()}  # re-raises the engine's error

    def park(self) -> None:
        """Sleep mode: weights to host memory."""
        self.thread.submit(self.engine.park).result()

    def wake(self) -> None:
        """Back from sleep mode."""
        self.thread.submit(self.engine.wake).result()

    def ping(self) -> int:
        """The actor's pid: it answers, so it lives."""
        return os.getpid()


_REMOTE: Any = None


def remote_host() -> Any:
    """The actor class, made once per process (each ``ray.remote`` exports the class again)."""
    global _REMOTE
    if _REMOTE is None:
        import ray

        _REMOTE = ray.remote(ModelHost)
    return _REMOTE



def cpu_env_vars(threads: int | None, kv_cache_gb: float, position: int, count: int) -> dict[str, str]:
    """What :func:`engine_env` sets for a CPU device beyond this process's own environment: only
    those variables travel to the actor (the driver's PATH and the like are not the node's)."""
    env = engine_env("cpu", position, count, threads, kv_cache_gb)
    out = {k: v for k, v in env.items() if os.environ.get(k) != v}
    # Ray sets OMP_NUM_THREADS=1 in an actor that asks for no CPU; a worker process has no such
    # limit, so the actor gets the threads of its core range, as the worker does.
    first, _, last = out.get("VLLM_CPU_OMP_THREADS_BIND", env["VLLM_CPU_OMP_THREADS_BIND"]).partition("-")
    out["OMP_NUM_THREADS"] = str(int(last or first) - int(first) + 1)
    return out


class Hosted:
    """A resident model's actor and where it runs."""

    def __init__(self, actor: Any, settings: ModelSettings, pid: int | None = None, node_id: str | None = None):
        self.actor, self.settings, self.pid, self.node_id = actor, settings, pid, node_id

