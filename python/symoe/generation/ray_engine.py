"""Ray engine: each resident model is a Ray actor hosting its vLLM engine, on a cluster's device.

One :class:`RayEngine` serves one planning device. The device is reserved by a placement group
with one bundle (a GPU pinned to its node, or for CPU testing the device's custom resource); each
model loaded there is an actor in that bundle asking for its planned memory share of it, so
Ray never packs more onto a device than the plan does. The actor drives the same vLLM calls as
the local worker process (:class:`.worker.VllmEngine`) on one engine thread, with the CPU engine
environment of :func:`.local.engine_env` in its runtime environment. Unload kills the actor (its
process ends, so its memory is really freed); park/wake use vLLM's sleep mode where the model
has it (GPU). Finished generations stream back through a Ray streaming generator and are handed
to ``on_done`` the moment each arrives, so the driver's store commits them at once. A lost actor
or node is a :class:`DeviceLost` naming model, device and node.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .engine import BatchInfo, Clock, DeviceLost, Engine, EngineError, EngineTimeout, ModelSettings, OnDone, generation_from_event
from .local import engine_env
from .requests import Request

if TYPE_CHECKING:
    from ..cluster import ClusterDevice, Topology
    from ..config import Config

POLL_S = 1.0        # waits are sliced so a closed engine fails its blocked call within this
NODE_CHECK_S = 5.0  # a device reservation checks its node is still in the cluster this often
VERDICT_S = 90.0    # after a fault: how long to wait for the cluster to say whether the node is gone
PING_S = 10.0       # alive(): an actor that does not answer a ping within this is not alive
SHARE_STEP = 1e-4   # Ray's resource granularity: shares are rounded down to it


class ModelHost:
    """Ray actor body: one vLLM engine, driven on one engine thread as the worker process drives
    it (vLLM's CPU thread binding holds for the thread that started the engine)."""

    def __init__(self) -> None:
        from .worker import VllmEngine

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


def _remote_host() -> Any:
    """The actor class, made once per process (each ``ray.remote`` exports the class again)."""
    global _REMOTE
    if _REMOTE is None:
        import ray

        _REMOTE = ray.remote(ModelHost)
    return _REMOTE


def _share(x: float) -> float:
    """A resource share Ray accepts, rounded down so planned shares never sum above a device."""
    return max(SHARE_STEP, math.floor(min(1.0, x) / SHARE_STEP) * SHARE_STEP)


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


class _Hosted:
    """A resident model's actor and where it runs."""

    def __init__(self, actor: Any, settings: ModelSettings, pid: int | None = None, node_id: str | None = None):
        self.actor, self.settings, self.pid, self.node_id = actor, settings, pid, node_id


class RayEngine(Engine):
    """The models of one cluster device, each an actor in the device's placement-group bundle."""

    def __init__(self, device: int, place: ClusterDevice, env_vars: Mapping[str, str], memory_share: Mapping[str, float],
                 gpu: bool):
        self.device, self.place, self.env_vars, self.gpu = device, place, dict(env_vars), gpu
        self.memory_share = dict(memory_share)  # model -> planned fraction of the device's memory
        self.clock = Clock()
        self._lock = threading.Lock()  # guards resident, pg and closed
        self.resident: dict[str, _Hosted] = {}
        self._pg: Any = None
        self._closed = False
        self._lost: str | None = None  # the device's node is gone: every later call fails at once

    @classmethod
    def for_config(cls, cfg: Config, topology: Topology, device: int) -> RayEngine:
        """The engine of the plan's ``device`` on ``topology``."""
        eng = cfg.engine
        place = topology.devices[device]
        gpu = eng.platform == "gpu"
        env = {} if gpu else cpu_env_vars(eng.threads, eng.kv_cache_gb, *topology.host_share(device))
        if gpu:  # Ray sets CUDA_VISIBLE_DEVICES for the actor's GPU; the rest of engine_env holds
            env = {k: v for k, v in engine_env("gpu", 0).items()
                   if k != "CUDA_VISIBLE_DEVICES" and os.environ.get(k) != v}
        share = {m.name: m.resident_bytes / place.memory_bytes for m in cfg.models}
        return cls(device, place, env, share, gpu)

    # --- placement -------------------------------------------------------------------------------

    def _where(self, model: str) -> str:
        return f"model {model} on {self.place.label()}"

    def _placement(self, what: str, deadline: float) -> Any:
        """The device's placement group, reserved on first use; while it waits, a node that leaves
        the cluster is a :class:`DeviceLost` at once."""
        from ray.util.placement_group import placement_group

        self._check(what)
        with self._lock:
            if self._closed:
                raise EngineError(f"{what}: {self.place.label()}: engine closed")
            if self._pg is None:
                self._pg = placement_group([self.place.bundle()], name=f"symoe-device-{self.device}-{os.getpid()}")
            pg = self._pg
        while True:
            try:
                self._wait(pg.ready(), what, min(deadline, self.clock.now() + NODE_CHECK_S))
                return pg
            except EngineTimeout:
                if self.clock.now() >= deadline:
                    raise EngineTimeout(f"{what}: {self.place.label()}: no node offers {self.place.bundle()} by the "
                                        f"deadline (is the node up? `ray status`)") from None
                if self._node_gone():
                    self._lost = f"node {self.place.node} (id {str(self.place.node_id)[:12]}) is not alive"
                    self._check(what)

    def _node_gone(self, node_id: str | None = None) -> bool:
        from ..cluster import alive_node_ids

        node_id = node_id or self.place.node_id
        return node_id is not None and node_id not in alive_node_ids()

    def prepare(self) -> None:
        """Reserve the device ahead of the first load."""
        self._placement(f"{self.place.label()}: reserve", self.clock.now() + 600.0)

    def _wait(self, ref: Any, what: str, deadline: float) -> bool:
        """Wait for ``ref`` in slices: a closed engine fails at once, a missed deadline is an
        :class:`EngineTimeout`."""
        import ray

        while True:
            left = deadline - self.clock.now()
            if left <= 0:
                raise EngineTimeout(f"{what}: {self.place.label()}: no answer by the deadline")
            ready, _ = ray.wait([ref], timeout=min(POLL_S, left))
            if ready:
                return True
            if self._closed:
                raise EngineError(f"{what}: {self.place.label()}: engine closed")

    # --- faults ----------------------------------------------------------------------------------

    def _check(self, what: str, model: str = "") -> None:
        """Fail at once once the device's node is known lost (no reload can succeed there)."""
        if self._lost is not None:
            raise DeviceLost(f"{what}: {self.place.label()}: {self._lost}", model, self.device, self.place.node, True)

    def _fault(self, e: BaseException, model: str, what: str, h: _Hosted | None) -> EngineError:
        """A Ray error as an engine error: the actor's own exception, or a lost actor or node."""
        import ray

        if isinstance(e, ray.exceptions.RayTaskError) and not isinstance(e, ray.exceptions.RayActorError):
            return EngineError(f"{what}: {self._where(model)}: {str(e.cause if e.cause is not None else e).strip()}")
        node_id = (h.node_id if h else None) or self.place.node_id
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        try:
            node_lost = self._verdict(h, node_id)
        except Exception as q:  # noqa: BLE001  (the cluster itself does not answer)
            return DeviceLost(f"{what}: {self._where(model)}: lost ({cause}), and the cluster does not answer "
                              f"({type(q).__name__}: {q})", model, self.device, self.place.node, True)
        if node_lost:
            self._lost = f"node {self.place.node} (id {str(node_id)[:12]}) was lost"
            msg = f"{what}: node {self.place.node} (id {str(node_id)[:12]}) was lost: {self._where(model)} is gone ({cause})"
        else:
            msg = f"{what}: the actor of {self._where(model)} died (pid {h.pid if h else '?'}; its node is alive): {cause}"
        return DeviceLost(msg, model, self.device, self.place.node, node_lost)

    def _verdict(self, h: _Hosted | None, node_id: str | None) -> bool:
        """Whether the actor's node is gone. Ray first reports a lost node's actors as merely
        unavailable; the cluster declares the node dead after its health checks fail, so this
        waits (bounded) for either verdict: the node gone, or the actor dead on a live node."""
        import ray

        end = time.monotonic() + VERDICT_S
        while True:
            if self._node_gone(node_id):
                return True
            if h is None or time.monotonic() > end:
                return False
            try:
                ray.get(h.actor.ping.remote(), timeout=POLL_S)
                return False  # it answers: the actor and its node are fine, the call alone failed
            except ray.exceptions.ActorDiedError:
                time.sleep(POLL_S)  # dead for good: its node's death, if that was the cause, is known by now
                return self._node_gone(node_id)
            except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
                time.sleep(POLL_S)

    # --- the Engine interface --------------------------------------------------------------------

    def load(self, model: ModelSettings, what: str, deadline: float, keep_spare: bool = True) -> dict[str, Any]:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self._check(what, model.name)
        with self._lock:
            if model.name in self.resident:
                raise EngineError(f"{what}: model {model.name} is already resident on {self.place.label()}")
        t0 = time.perf_counter()
        pg = self._placement(what, deadline)
        place_s = time.perf_counter() - t0
        share = _share(self.memory_share.get(model.name, 1.0))
        opts: dict[str, Any] = dict(num_cpus=0, max_concurrency=2, max_restarts=0, max_task_retries=0,
                                    scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0),
                                    runtime_env={"env_vars": self.env_vars})
        if self.gpu:
            opts["num_gpus"] = share
        else:
            assert self.place.resource is not None
            opts["resources"] = {self.place.resource: share}
        actor = _remote_host().options(**opts).remote()
        h = _Hosted(actor, model)
        with self._lock:
            closed = self._closed
            if not closed:
                self.resident[model.name] = h
        if closed:
            ray.kill(actor)
            raise EngineError(f"{what}: {self.place.label()}: engine closed")
        try:
            info = self._get(actor.load.remote(model.wire()), model.name, what, deadline, h)
        except EngineError:
            self.kill(model.name)
            raise
        h.pid, h.node_id = info.get("pid"), info.get("node_id")
        return {"import_s": info.get("import_s"), "load_s": info.get("load_s"), "placement_s": place_s,
                "actor_s": time.perf_counter() - t0, "pid": h.pid, "node": self.place.node}

    def _get(self, ref: Any, model: str, what: str, deadline: float, h: _Hosted | None) -> Any:
        """The call's result; a missed deadline kills the actor, a Ray fault is named."""
        import ray

        try:
            self._wait(ref, what, deadline)
        except EngineTimeout:
            self.kill(model)
            raise EngineTimeout(f"{what}: {self._where(model)}: no answer by the deadline; actor killed") from None
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as e:
            raise self._fault(e, model, what, h) from e

    def _hosted(self, model: str, what: str) -> _Hosted:
        self._check(what, model)
        with self._lock:
            h = self.resident.get(model)
        if h is None:
            raise EngineError(f"{what}: model {model} is not resident on {self.place.label()}")
        return h

    def generate(self, model: str, requests: Sequence[Request], on_done: OnDone, what: str, deadline: float) -> BatchInfo:
        import ray

        h = self._hosted(model, what)
        pending = {r.key: r for r in requests}
        tokens = prompt_tokens = n = 0
        first: float | None = None
        t0 = time.perf_counter()
        stream = h.actor.generate.options(num_returns="streaming").remote([r.wire() for r in requests])
        try:
            while True:
                left = None if math.isinf(deadline) else deadline - self.clock.now()
                if left is not None and left <= 0:
                    self.kill(model)
                    raise EngineTimeout(f"{what}: {self._where(model)}: generation missed its deadline; actor killed")
                ready, _ = ray.wait([stream], timeout=min(POLL_S, left) if left is not None else POLL_S)
                if self._closed:
                    raise EngineError(f"{what}: {self.place.label()}: engine closed")
                if not ready:
                    continue
                try:
                    ev = ray.get(next(stream))
                except StopIteration:
                    break
                except ray.exceptions.RayError as e:
                    raise self._fault(e, model, what, h) from e
                if ev.get("summary"):
                    first = ev.get("first_token_s")
                    continue
                g = generation_from_event(ev, pending, what, time.perf_counter() - t0)
                del pending[g.key]
                tokens, prompt_tokens, n = tokens + g.tokens, prompt_tokens + g.prompt_tokens, n + 1
                on_done(g)
        except EngineError:
            self.kill(model)
            raise
        if pending:
            raise EngineError(f"{what}: {self._where(model)} finished without {len(pending)} of the requests")
        return BatchInfo(time.perf_counter() - t0, tokens, prompt_tokens, n, first)

    def _sleep_op(self, op: str, model: str, what: str, deadline: float) -> None:
        h = self._hosted(model, what)
        if not h.settings.sleep:
            raise EngineError(f"{what}: sleep mode is not supported for {self._where(model)} "
                              f"(platform {h.settings.platform}; vLLM's sleep mode is GPU-only)")
        self._get(getattr(h.actor, op).remote(), model, what, deadline, h)

    def park(self, model: str, what: str, deadline: float) -> None:
        self._sleep_op("park", model, what, deadline)

    def wake(self, model: str, what: str, deadline: float) -> None:
        self._sleep_op("wake", model, what, deadline)

    def unload(self, model: str, what: str, deadline: float) -> None:
        """Kill the actor and wait until Ray reports it dead: its process, and the model's
        memory, are gone when this returns."""
        import ray

        h = self._hosted(model, what)
        self.kill(model)
        while True:
            try:
                ray.get(h.actor.ping.remote(), timeout=POLL_S)
            except ray.exceptions.RayActorError:
                return
            except ray.exceptions.GetTimeoutError:
                pass
            if deadline - self.clock.now() <= 0:
                raise EngineTimeout(f"{what}: {self._where(model)} still answers after it was killed")
            time.sleep(0.1)

    def alive(self, model: str) -> bool:
        import ray

        with self._lock:
            h = self.resident.get(model)
        if h is None:
            return False
        try:
            ray.get(h.actor.ping.remote(), timeout=PING_S)
            return True
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
            return False

    def kill(self, model: str) -> None:
        import ray

        with self._lock:
            h = self.resident.pop(model, None)
        if h is not None:
            try:
                ray.kill(h.actor, no_restart=True)
            except Exception:  # noqa: BLE001  (its node may be gone already; nothing is left to kill)
                pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            names = list(self.resident)
            pg, self._pg = self._pg, None
        for m in names:
            self.kill(m)
        if pg is not None:
            from ray.util.placement_group import remove_placement_group

            try:
                remove_placement_group(pg)
            except Exception:  # noqa: BLE001  (the cluster may be gone; the group went with it)
                pass


def ray_engines(cfg: Config, topology: Topology) -> list[Engine]:
    """One engine per planning device of ``topology`` (the process must be connected to it)."""
    if len(topology.devices) != len(cfg.devices):
        raise EngineError(f"the plan has {len(cfg.devices)} devices, the cluster topology {len(topology.devices)}")
    return [RayEngine.for_config(cfg, topology, d) for d in range(len(topology.devices))]
