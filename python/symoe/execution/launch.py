"""The one home for choosing engines (as vLLM's ``Executor.get_class``): which engine runs a device
and the models on it. Plan runs, the pipeline's stages and ``symoe serve`` (every device's engine,
each endpoint model's own) all get theirs here.

The kinds: in-process vLLM workers (:class:`LocalEngine`), a vLLM server symoe starts for each
``serve = "vllm"`` model (:class:`ServedEngine`, the other models passed to the in-process one),
an OpenAI-compatible endpoint (:class:`RemoteEngine`, an endpoint model's virtual device), the
actors on a live Ray cluster (:class:`RayEngine`, given its topology) and the cost model's fake
(:class:`FakeEngine`, given its clock: tests, load tests). Nothing starts here: each engine starts
its workers, servers or actors at its first load, so Ray and vLLM are imported only then."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..cluster.ray_engine import RayEngine  # the module imports Ray only inside its methods
from ..generation import Engine, EngineError
from ..generation.endpoint import EndpointSettings
from ..generation.fake import FakeEngine, ScaledClock
from ..generation.local import LocalEngine
from ..generation.remote import RemoteEngine
from ..generation.routed import RoutedEngine
from ..generation.served import ServedEngine

if TYPE_CHECKING:
    from ..config.pool import Config
    from ..config.topology import Topology

__all__ = ["Launch", "ServeEngines", "device_engine", "plan_engines", "serve_engines", "stage_engine"]


@dataclass(frozen=True)
class Launch:
    """Where engines run: this machine's devices (the default), a Ray cluster's ``topology``
    (this process connected to it), or the fake on ``fake``'s clock (shared by all its engines)."""

    topology: Topology | None = None
    fake: ScaledClock | None = None


def device_engine(cfg: Config, device: int, log_dir: Path, launch: Launch = Launch(), every_model: bool = False) -> Engine:
    """The engine of ``device``. ``every_model``: the whole pool goes through this one engine (the
    stages run every model on device 0), so endpoint models are routed to their own remote engines;
    in a plan (and in ``symoe serve``) an endpoint model has an engine of its own instead."""
    if launch.fake is not None:
        return FakeEngine(device, cfg, launch.fake)
    if launch.topology is not None:
        return RayEngine.for_config(cfg, launch.topology, device)
    dev = cfg.devices[device]
    if dev.endpoint is not None:
        return RemoteEngine(device, EndpointSettings.of(cfg.model(dev.endpoint)))
    local: Engine = LocalEngine.for_config(cfg, device, log_dir)
    local.memory_bytes = dev.memory_bytes  # each engine sizes its models' memory share by its own device
    served = {m.name for m in cfg.models if m.serve == "vllm"}
    if served:
        local = ServedEngine.for_config(cfg, device, log_dir, served, local)
        local.memory_bytes = dev.memory_bytes
    clock = getattr(local, "clock", None)  # the remote calls on the same clock as the local ones
    remote: dict[str, Engine] = {m.name: RemoteEngine(device, EndpointSettings.of(m), clock)
                                 for m in cfg.models if m.endpoint and every_model}
    return RoutedEngine(local, remote) if remote else local


def plan_engines(cfg: Config, log_dir: Path, launch: Launch = Launch()) -> list[Engine]:
    """One engine per device of a plan made for ``cfg``."""
    if launch.topology is not None and len(launch.topology.devices) != len(cfg.devices):
        raise EngineError(f"the plan has {len(cfg.devices)} devices, the cluster topology {len(launch.topology.devices)}")
    return [device_engine(cfg, d, log_dir, launch) for d in range(len(cfg.devices))]


def stage_engine(cfg: Config, log_dir: Path, launch: Launch = Launch()) -> Engine:
    """The one engine of the pipeline's stages (keywords, profiling, aggregator selection): every
    model of the pool on device 0."""
    return device_engine(cfg, 0, log_dir, launch, every_model=True)


@dataclass(frozen=True)
class ServeEngines:
    """``symoe serve``'s engines: one per local device (``devices[d]`` runs device ``d``'s models)
    and one per endpoint model (its own remote engine, a lane of its own)."""

    devices: list[Engine]
    endpoints: dict[str, Engine]

    def all(self) -> list[Engine]:
        """Every engine, devices first."""
        return [*self.devices, *self.endpoints.values()]


def serve_engines(cfg: Config, log_dir: Path, launch: Launch = Launch()) -> ServeEngines:
    """The engines ``symoe serve`` spreads the pool over: each local device of ``cfg`` (or of the
    cluster's ``launch.topology``) its own, each endpoint model a remote engine numbered after them."""
    local = [d for d, dev in enumerate(cfg.devices) if dev.endpoint is None]
    if launch.topology is not None and len(launch.topology.devices) != len(local):
        raise EngineError(f"the pool has {len(local)} devices, the cluster topology {len(launch.topology.devices)}")
    devices = [device_engine(cfg, d, log_dir, launch) for d in local]
    endpoints: dict[str, Engine] = {}
    for i, m in enumerate(m for m in cfg.models if m.endpoint):
        endpoints[m.name] = (FakeEngine(0, cfg, launch.fake) if launch.fake is not None
                             else RemoteEngine(len(local) + i, EndpointSettings.of(m)))
    return ServeEngines(devices, endpoints)
