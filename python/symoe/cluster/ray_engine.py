"""Ray engine: each resident model is a Ray actor hosting its vLLM engine, on a cluster's device.

One :class:`RayEngine` serves one planning device. The device is reserved by a placement group
with one bundle (a GPU pinned to its node, or for CPU testing the device's custom resource); each
model loaded there is an actor in that bundle asking for its planned memory share of it, so
Ray never packs more onto a device than the plan does. The actor (:class:`.ray_host.ModelHost`)
drives the same vLLM calls as the local worker process (:class:`.worker.VllmEngine`) on one
engine thread, with the CPU engine environment of :func:`.process.engine_env` in its runtime
environment. Unload kills the actor (its process ends, so its memory is really freed); park/wake
use vLLM's sleep mode where the model has it (GPU). Finished generations stream back through a
Ray streaming generator and are handed to ``on_done`` the moment each arrives, so the driver's
store commits them at once. A lost actor or node is a :class:`DeviceLost` naming model, device
and node (:class:`.ray_device.RayDevice`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..generation.engine import (
    PREPARE_S,
    BatchInfo,
    Clock,
    Engine,
    EngineError,
    EngineTimeout,
    ModelSettings,
    OnDone,
    Tally,
    generation_from_event,
    key_names,
)
from ..generation.process import engine_env
from ..records import Request
from .ray_device import POLL_S, RayDevice, log
from .ray_host import Hosted, cpu_env_vars, remote_host

if TYPE_CHECKING:
    from ..config.pool import Config
    from ..config.topology import ClusterDevice, Topology

PING_S = 10.0       # alive(): an actor that does not answer a ping within this is not alive
SHARE_STEP = 1e-4   # Ray's resource granularity: shares are rounded down to it


def _share(x: float) -> float:
    """A resource share Ray accepts, rounded down so planned shares never sum above a device."""
    return max(SHARE_STEP, math.floor(min(1.0, x) / SHARE_STEP) * SHARE_STEP)


def tp_refused(what: str, model: str, group: Sequence[int]) -> str:
    """Why a tensor-parallel step cannot run on a Ray cluster (untested there: refused, not guessed)."""
    return (f"{what}: model {model} is planned tensor-parallel over devices {list(group)}; the Ray engine hosts "
            f"each model on one device. Plan without tensor parallelism: strategy symoe with [reference] "
            f"tp_efficiency = 0 in the pool file")


class RayEngine(Engine):
    """The models of one cluster device, each an actor in the device's placement-group bundle."""

    def __init__(self, device: int, place: ClusterDevice, env_vars: Mapping[str, str], memory_share: Mapping[str, float],
                 gpu: bool):
        self.device, self.place, self.env_vars, self.gpu = device, place, dict(env_vars), gpu
        self.memory_share = dict(memory_share)  # model -> planned fraction of the device's memory
        self.memory_bytes = place.memory_bytes
        self.clock = Clock()
        self.dev = RayDevice(device, place, self.clock)
        self._lock = self.dev.lock  # one lock: a model loaded while the engine closes is either seen or killed
        self.resident: dict[str, Hosted] = {}

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
        # The actor inherits its node's environment, not this one: a key exported where `ray start`
        # ran is blanked there (no model an actor hosts talks to an endpoint).
        env.update(dict.fromkeys(sorted(key_names(cfg)), ""))
        share = {m.name: m.resident_bytes / place.memory_bytes for m in cfg.models}
        return cls(device, place, env, share, gpu)

    def prepare(self) -> None:
        """Reserve the device ahead of the first load."""
        self.dev.placement(f"{self.place.label()}: reserve", self.clock.now() + PREPARE_S)

    # --- the Engine interface --------------------------------------------------------------------

    def load(self, model: ModelSettings, what: str, deadline: float, keep_spare: bool = True) -> dict[str, Any]:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.dev.check(what, model.name)
        if len(model.device_group) > 1:
            raise EngineError(tp_refused(what, model.name, model.device_group))
        with self._lock:
            if model.name in self.resident:
                raise EngineError(f"{what}: model {model.name} is already resident on {self.place.label()}")
        t0 = time.perf_counter()
        pg = self.dev.placement(what, deadline, model.name)
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
        actor = remote_host().options(**opts).remote()
        h = Hosted(actor, model)
        with self._lock:
            closed = self.dev.closed
            if not closed:
                self.resident[model.name] = h
        if closed:
            ray.kill(actor)
            raise EngineError(f"{what}: {self.place.label()}: engine closed")
        try:
            info = self._get(actor.load.remote(self.sized(model).wire()), model.name, what, deadline, h)
        except EngineError:
            self.kill(model.name)
            raise
        h.pid, h.node_id = info.get("pid"), info.get("node_id")
        return {"import_s": info.get("import_s"), "load_s": info.get("load_s"), "placement_s": place_s,
                "actor_s": time.perf_counter() - t0, "pid": h.pid, "node": self.place.node}

    def _get(self, ref: Any, model: str, what: str, deadline: float, h: Hosted | None) -> Any:
        """The call's result; a missed deadline kills the actor, a Ray fault is named."""
        import ray

        try:
            self.dev.wait(ref, what, deadline)
        except EngineTimeout:
            self.kill(model)
            raise EngineTimeout(f"{what}: {self.dev.where(model)}: no answer by the deadline; actor killed") from None
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as e:
            raise self.dev.fault(e, model, what, h) from e

    def _hosted(self, model: str, what: str) -> Hosted:
        self.dev.check(what, model)
        with self._lock:
            h = self.resident.get(model)
        if h is None:
            raise EngineError(f"{what}: model {model} is not resident on {self.place.label()}")
        return h

    def generate(self, model: str, requests: Sequence[Request], on_done: OnDone, what: str, deadline: float) -> BatchInfo:
        import ray

        h = self._hosted(model, what)
        pending = {r.key: r for r in requests}
        tally = Tally()
        first: float | None = None
        t0 = time.perf_counter()
        stream = h.actor.generate.options(num_returns="streaming").remote([r.wire() for r in requests])
        try:
            while True:
                left = None if math.isinf(deadline) else deadline - self.clock.now()
                if left is not None and left <= 0:
                    self.kill(model)
                    raise EngineTimeout(f"{what}: {self.dev.where(model)}: generation missed its deadline; actor killed")
                ready, _ = ray.wait([stream], timeout=min(POLL_S, left) if left is not None else POLL_S)
                if self.dev.closed:
                    raise EngineError(f"{what}: {self.place.label()}: engine closed")
                if not ready:
                    continue
                try:
                    ev = ray.get(next(stream))
                except StopIteration:
                    break
                except ray.exceptions.RayError as e:
                    raise self.dev.fault(e, model, what, h) from e
                if ev.get("summary"):
                    first = ev.get("first_token_s")
                    continue
                g = generation_from_event(ev, pending, what, time.perf_counter() - t0)
                del pending[g.key]
                tally.add(g)
                on_done(g)
        except EngineError:
            self.kill(model)
            raise
        if pending:
            raise EngineError(f"{what}: {self.dev.where(model)} finished without {len(pending)} of the requests")
        return tally.info(time.perf_counter() - t0, first)

    def _sleep_op(self, op: str, model: str, what: str, deadline: float) -> None:
        h = self._hosted(model, what)
        if not h.settings.sleep:
            raise EngineError(f"{what}: sleep mode is not supported for {self.dev.where(model)} "
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
                raise EngineTimeout(f"{what}: {self.dev.where(model)} still answers after it was killed")
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
            except Exception as e:  # noqa: BLE001  (reported: the actor may outlive the run, holding its memory)
                log.warning("%s: the actor (pid %s) was not killed (%s: %s)%s", self.dev.where(model), h.pid,
                            type(e).__name__, e, f"; {self.dev.lost}" if self.dev.lost else "; `ray list actors`")

    def close(self) -> None:
        with self._lock:
            self.dev.closed = True
            names = list(self.resident)
        for m in names:
            self.kill(m)
        self.dev.release()

