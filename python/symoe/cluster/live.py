"""A live Ray cluster: joining it, discovering its devices, noticing lost nodes (running a plan on
it: :mod:`symoe.execution.on_cluster`; the pool's ``[cluster]`` table, :mod:`.cluster_table`; its devices, :mod:`.topology`). Ray
is imported only when a live cluster is asked.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from ..config.cluster_table import ClusterTable, NodeTable
from ..config.pool_file import GB
from ..config.topology import Topology, from_nodes
from ..errors import SymoeError, require

if TYPE_CHECKING:
    from ..config.pool import Config


def connect(address: str) -> None:
    """Join the Ray cluster at ``address`` as its driver (once per process)."""
    require("ray", "a [cluster] pool")
    import ray  # optional heavy dependency (the ray extra)

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
