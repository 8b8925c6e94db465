"""Cluster topology: the devices of a Ray cluster in the plan's order, grouped by node, as the
``[[cluster.node]]`` tables list them or as a live cluster's ``ray.nodes()`` shows them. Devices
are numbered node by node in the order the nodes are listed (discovered: by node name). Nothing
here imports Ray."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from ..errors import SymoeError
from .cluster_table import ClusterTable, NodeTable
from .pool_file import GB
from .spec import Device

LOST = "lost"    # node id of a listed node that is not in the cluster (any more)
GPU_PIN = 0.001  # of the node's ``node:<ip>`` resource: pins a GPU bundle to its node


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

    def planning_devices(self, overlap_load: bool) -> tuple[Device, ...]:
        """The planner's devices (memory and host budget per device)."""
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
                     source: str = "config") -> tuple[Device, ...] | None:
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

