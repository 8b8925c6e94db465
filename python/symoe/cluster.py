"""Cluster topology: the devices of a Ray cluster, grouped by node.

A pool file's ``[cluster]`` table says where plans run when they leave one machine::

    [cluster]
    backend = "ray"
    address = "10.0.0.1:6379"      # the head node (``ray start --head``); "auto": RAY_ADDRESS
    discover = true                # devices from the running cluster (GPUs per node, or for CPU
                                   # testing one custom resource per device: symoe_dev_0, ...)
    host_memory_gb = 512           # per discovered node: host memory for parked models

    [[cluster.node]]               # or list the nodes (their ``ray start --node-name``)
    name = "gpu-a"
    devices = 8                    # GPUs (GPU platform) ...
    # resources = ["symoe_dev_0"]  # ... or one custom resource per device (CPU platform)
    memory_gb = 80                 # per device (default: [devices] memory_gb)
    host_memory_gb = 512           # the node's host memory for parked models, shared by its devices

Devices are numbered node by node in the order the nodes are listed (discovered: by node name);
that numbering is the plan's device numbering. Nothing here imports Ray until a live cluster
is asked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

from .errors import SymoeError

if TYPE_CHECKING:
    from .config import Config
    from .datasets import Question
    from .execution.report import RunReport
    from .execution.scheduler import RunOptions
    from .generation import Sampling
    from .planning import Plan
    from .store import Store

GB = 1e9
_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)
LOST = "lost"    # node id of a listed node that is not in the cluster (any more)
GPU_PIN = 0.001  # of the node's ``node:<ip>`` resource: pins a GPU bundle to its node


class NodeTable(BaseModel):
    """One ``[[cluster.node]]`` table: a node's devices and its host memory budget."""

    model_config = _STRICT
    name: str = Field(min_length=1)               # as ``ray start --node-name`` (Ray's default: the node's IP)
    devices: PositiveInt | None = None            # GPU platform: GPUs on the node
    resources: list[str] | None = None            # CPU platform: one custom resource per device
    memory_gb: PositiveFloat | None = None        # per device (None: [devices] memory_gb)
    host_memory_gb: NonNegativeFloat = 0.0        # parked models, shared by the node's devices

    @model_validator(mode="after")
    def _one_kind(self) -> NodeTable:
        if (self.devices is None) == (self.resources is None):
            raise ValueError(f"node {self.name!r}: give either devices (GPUs) or resources (CPU devices)")
        if self.resources is not None and (not self.resources or len(set(self.resources)) != len(self.resources)):
            raise ValueError(f"node {self.name!r}: resources must be distinct names, at least one")
        return self


class ClusterTable(BaseModel):
    """``[cluster]``: run on a Ray cluster instead of this machine's devices."""

    model_config = _STRICT
    backend: Literal["ray"] = "ray"
    address: str = "auto"
    discover: bool = False
    resource_prefix: str = Field(default="symoe_dev_", min_length=1)  # CPU devices offered as <prefix><n>
    host_memory_gb: NonNegativeFloat = 0.0                    # per discovered node
    node: list[NodeTable] = []

    @model_validator(mode="after")
    def _nodes(self) -> ClusterTable:
        if not self.discover and not self.node:
            raise ValueError("list the nodes ([[cluster.node]] tables) or set discover = true")
        names = [n.name for n in self.node]
        if len(set(names)) != len(names):
            raise ValueError(f"node names must be unique, got {names}")
        return self

    def toml_lines(self) -> list[str]:
        """The table as TOML (``Config.to_toml``), read back by the pool file parser."""
        def val(v: Any) -> str:
            return json.dumps(v) if not isinstance(v, float) else repr(v)

        lines = ["", "[cluster]"] + [f"{k} = {val(v)}" for k, v in self.model_dump(exclude={"node"}).items()]
        for n in self.node:
            lines += ["", "[[cluster.node]]"] + [f"{k} = {val(v)}" for k, v in n.model_dump(exclude_none=True).items()]
        return lines


@dataclass(frozen=True)
class ClusterDevice:
    """One planning device: where it lives and how a Ray bundle claims it."""

    index: int                 # the plan's device number
    node: str                  # node name
    host: str                  # node IP; devices on one host share its cores (CPU)
    local: int                 # position on its node
    resource: str | None       # CPU: the custom resource naming this device; GPU: None
    memory_bytes: float
    host_bytes: float          # this device's share of its node's host memory
    node_id: str | None = None  # Ray's id, once resolved on a live cluster

    def bundle(self) -> dict[str, float]:
        """The placement-group bundle that reserves this device."""
        if self.resource is not None:
            return {self.resource: 1.0}
        return {"GPU": 1.0, f"node:{self.host}": GPU_PIN}

    def label(self) -> str:
        """How errors and reports name the device."""
        return f"device {self.index} (node {self.node}{f', {self.resource}' if self.resource else ''})"


@dataclass(frozen=True)
class Topology:
    """The cluster's devices in plan order, grouped by node."""

    address: str
    platform: Literal["cpu", "gpu"]
    devices: tuple[ClusterDevice, ...]

    @property
    def nodes(self) -> dict[str, list[ClusterDevice]]:
        """Devices per node name (in plan order)."""
        out: dict[str, list[ClusterDevice]] = {}
        for d in self.devices:
            out.setdefault(d.node, []).append(d)
        return out

    def host_share(self, index: int) -> tuple[int, int]:
        """(position, count) of the device among those on its host: CPU devices on one host
        split its cores, whichever node they belong to."""
        host = self.devices[index].host
        same = [d.index for d in self.devices if d.host == host]
        return same.index(index), len(same)

    def planning_devices(self, overlap_load: bool) -> tuple[Any, ...]:
        """The planner's devices (memory and host budget per device)."""
        from .config import Device

        return tuple(Device(d.memory_bytes, overlap_load, d.host_bytes) for d in self.devices)

    def subset(self, devices: Sequence[int]) -> Topology:
        """The given devices (e.g. the survivors of a node loss), renumbered in that order."""
        return replace(self, devices=tuple(replace(self.devices[d], index=i) for i, d in enumerate(devices)))


def from_table(table: ClusterTable, platform: Literal["cpu", "gpu"], memory_gb: float) -> Topology:
    """The devices the ``[[cluster.node]]`` tables list (not checked against a live cluster)."""
    if table.discover:
        raise SymoeError("[cluster] discover = true: the topology comes from the running cluster (discover())")
    devs: list[ClusterDevice] = []
    for n in table.node:
        if platform == "cpu" and n.resources is None:
            raise SymoeError(f"[[cluster.node]] {n.name!r}: CPU devices are named by resources = [...], not devices")
        if platform == "gpu" and n.devices is None:
            raise SymoeError(f"[[cluster.node]] {n.name!r}: GPU nodes give devices = <GPU count>, not resources")
        count = n.devices if n.devices is not None else len(n.resources or [])
        for j in range(count):
            devs.append(ClusterDevice(len(devs), n.name, n.name, j, n.resources[j] if n.resources else None,
                                      (n.memory_gb or memory_gb) * GB, n.host_memory_gb * GB / count))
    return Topology(table.address, platform, tuple(devs))


def planning_devices(table: ClusterTable, platform: Literal["cpu", "gpu"], memory_gb: float, overlap_load: bool,
                     source: str = "config") -> tuple[Any, ...] | None:
    """The plan's devices from the listed nodes (None with ``discover``: the running cluster says)."""
    if table.discover:
        return None
    try:
        return from_table(table, platform, memory_gb).planning_devices(overlap_load)
    except SymoeError as e:
        raise SymoeError(f"{source}: {e}") from None


def _suffix(name: str, prefix: str) -> int | None:
    m = re.fullmatch(re.escape(prefix) + r"(\d+)", name)
    return int(m.group(1)) if m else None


def from_nodes(table: ClusterTable, platform: Literal["cpu", "gpu"], memory_gb: float,
               nodes: Sequence[Mapping[str, Any]], lost_ok: bool = False) -> Topology:
    """The topology of a live cluster given ``ray.nodes()``: listed nodes are resolved (and must
    be alive with what they list, unless ``lost_ok``: a run's lost nodes keep their devices, with
    node id ``LOST``); with ``discover`` every alive node's devices are taken."""
    alive = [n for n in nodes if n.get("Alive")]
    by_name: dict[str, list[Mapping[str, Any]]] = {}
    for n in alive:
        by_name.setdefault(str(n.get("NodeName") or n["NodeManagerAddress"]), []).append(n)
    listed = {t.name: t for t in table.node}
    devs: list[ClusterDevice] = []

    def add(name: str, node: Mapping[str, Any], t: NodeTable | None) -> None:
        res = node.get("Resources", {})
        if platform == "cpu":
            names = list(t.resources or []) if t and t.resources else sorted(
                (r for r in res if _suffix(r, table.resource_prefix) is not None),
                key=lambda r: _suffix(r, table.resource_prefix) or 0)
            missing = [r for r in names if res.get(r, 0) < 1]
            if missing:
                raise SymoeError(f"[cluster] node {name!r} does not offer resource(s) {missing} "
                                 f"(start it with ray start --resources '{{\"{missing[0]}\": 1}}')")
            slots: list[str | None] = list(names)
        else:
            gpus = int(res.get("GPU", 0))
            want = t.devices if t and t.devices is not None else gpus
            if want > gpus:
                raise SymoeError(f"[cluster] node {name!r} offers {gpus} GPUs, {want} are listed")
            slots = [None] * want
        host_mem = (t.host_memory_gb if t else table.host_memory_gb) * GB
        for j, r in enumerate(slots):
            devs.append(ClusterDevice(len(devs), name, str(node["NodeManagerAddress"]), j, r,
                                      ((t.memory_gb if t and t.memory_gb else None) or memory_gb) * GB,
                                      host_mem / max(1, len(slots)), str(node["NodeID"])))

    for name, t in listed.items():
        found = by_name.get(name)
        if not found and lost_ok:
            gone = from_table(ClusterTable(address=table.address, node=[t]), platform, memory_gb).devices
            devs += [replace(d, index=len(devs) + j, node_id=LOST) for j, d in enumerate(gone)]
            continue
        if not found:
            known = ", ".join(sorted(by_name)) or "none"
            raise SymoeError(f"[[cluster.node]] {name!r}: no alive node of that name in the cluster at "
                             f"{table.address} (alive: {known})")
        if len(found) > 1:
            raise SymoeError(f"[[cluster.node]] {name!r}: {len(found)} alive nodes share that name; "
                             f"give each its own (ray start --node-name)")
        add(name, found[0], t)
    if table.discover:
        for name in sorted(set(by_name) - set(listed)):
            for node in sorted(by_name[name], key=lambda n: str(n["NodeID"])):
                add(name, node, None)
    if not devs:
        what = f"resources named {table.resource_prefix}<n>" if platform == "cpu" else "GPUs"
        raise SymoeError(f"[cluster] the cluster at {table.address} offers no devices ({what} on alive nodes)")
    if platform == "cpu":
        seen = [d.resource for d in devs]
        if len(set(seen)) != len(seen):
            raise SymoeError(f"[cluster] a device resource is offered by more than one node: {seen}")
    return Topology(table.address, platform, tuple(devs))


def connect(address: str) -> None:
    """Join the Ray cluster at ``address`` as its driver (once per process)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, namespace="symoe", log_to_driver=False, configure_logging=False)


def discover(table: ClusterTable, platform: Literal["cpu", "gpu"], memory_gb: float) -> Topology:
    """The topology of the running cluster at ``table.address`` (connects this process to it)."""
    connect(table.address)
    return from_nodes(table, platform, memory_gb, ray_nodes())


def ray_nodes() -> list[dict[str, Any]]:
    """``ray.nodes()``: every node the cluster knows, alive or not."""
    import ray

    return list(ray.nodes())  # type: ignore[no-untyped-call]


def alive_node_ids() -> set[str]:
    """Ids of the cluster's alive nodes."""
    return {str(n["NodeID"]) for n in ray_nodes() if n.get("Alive")}


def lost_devices(topology: Topology) -> dict[int, str]:
    """Devices whose node is no longer alive (or, for CPU devices, whose resource is gone), with
    where they were."""
    nodes = [n for n in ray_nodes() if n.get("Alive")]
    ids = {str(n["NodeID"]) for n in nodes}
    offered = {r for n in nodes for r, v in n.get("Resources", {}).items() if v >= 1}
    return {d.index: f"node {d.node}" + (f" (id {d.node_id[:12]})" if d.node_id else "") + " is not alive"
            for d in topology.devices
            if (d.node_id is not None and d.node_id not in ids) or (d.resource is not None and d.resource not in offered)}


def live_topology(cfg: Config, lost_ok: bool = False) -> Topology:
    """The topology of ``cfg``'s ``[cluster]`` on the running cluster (connects to it): listed
    nodes checked to be alive with their devices (``lost_ok``: or kept as lost), or every alive
    node's devices discovered."""
    table = cfg.cluster
    if table is None:
        raise SymoeError("the pool config has no [cluster] table")
    connect(table.address)
    local = [d for d in cfg.devices if d.endpoint is None]
    memory_gb = (local[0].memory_bytes if local else 80 * GB) / GB
    return from_nodes(table, cfg.engine.platform, memory_gb, ray_nodes(), lost_ok=lost_ok)


def with_discovered_devices(cfg: Config) -> Config:
    """``cfg`` with the running cluster's devices as its planning devices, and its ``[cluster]``
    table listing them node by node: a plan (and its JSON) then knows which device lives where,
    so a later run can tell which of them a lost node took."""
    overlap = cfg.devices[0].overlap_load if cfg.devices else True
    topo = live_topology(cfg)
    assert cfg.cluster is not None
    nodes = [NodeTable(name=name, devices=None if devs[0].resource else len(devs),
                       resources=[str(d.resource) for d in devs] if devs[0].resource else None,
                       memory_gb=devs[0].memory_bytes / GB, host_memory_gb=sum(d.host_bytes for d in devs) / GB)
             for name, devs in topo.nodes.items()]
    table = cfg.cluster.model_copy(update={"discover": False, "node": nodes})
    return replace(cfg, devices=topo.planning_devices(overlap), cluster=table)


def run_on_config(plan: Plan, questions: Sequence[Question], store: Store, run_dir: str | Path,
                  sampling: Sampling, assignment: Sequence[Sequence[str]] | None, options: RunOptions,
                  run_id: str | None = None) -> RunReport:
    """``run_plan`` for a plan whose config has a ``[cluster]`` table: its devices on the cluster."""
    cfg = plan.config
    if any(d.endpoint is not None for d in cfg.devices):
        raise SymoeError("[cluster]: pools with endpoint models do not run on a Ray cluster yet; drop the endpoint "
                         "models or the [cluster] table")
    topology = live_topology(cfg, lost_ok=True)
    return run_on_cluster(plan, questions, store, run_dir, topology, sampling, assignment, options, run_id)


def run_on_cluster(plan: Plan, questions: Sequence[Question], store: Store, run_dir: str | Path, topology: Topology,
                   sampling: Sampling | None = None, assignment: Sequence[Sequence[str]] | None = None,
                   options: RunOptions | None = None, run_id: str | None = None) -> RunReport:
    """Run ``plan`` with one Ray engine per device of ``topology`` (this process connected to
    the cluster); a device lost before or during the run is reported, and with
    ``options.retries`` the missing work is replanned over the surviving devices."""
    from .execution.replan import run_replanning
    from .execution.scheduler import RunOptions
    from .generation import Sampling
    from .generation.ray_engine import ray_engines

    if len(topology.devices) != len(plan.config.devices):
        raise SymoeError(f"the plan is for {len(plan.config.devices)} devices, the cluster has "
                         f"{len(topology.devices)} ({', '.join(d.label() for d in topology.devices)}); plan again")
    connect(topology.address)
    return run_replanning(plan, questions, store, run_dir, sampling or Sampling(), assignment, options or RunOptions(),
                          engines_for=lambda p, devices: ray_engines(p.config, topology.subset(devices)),
                          lost_now=lambda: lost_devices(topology), run_id=run_id)
