"""Running a plan on a live Ray cluster: the devices discovered there, one Ray engine each, lost
devices replanned around (the cluster itself: :mod:`symoe.cluster`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..cluster.live import connect, live_topology, lost_devices, with_discovered_devices
from ..cluster.ray_engine import tp_refused
from ..config.topology import Topology
from ..errors import SymoeError
from ..generation import Sampling
from .launch import Launch, plan_engines
from .replan import run_replanning
from .scheduler import RunOptions

if TYPE_CHECKING:
    from ..config.pool import Config
    from ..method.datasets import Question
    from ..planning.plan import Plan
    from ..store import Store
    from .report import RunReport


def refuse_tensor_parallel(plan: Plan) -> None:
    """A tensor-parallel step is refused before the cluster is touched, not at the step's load after
    the steps before it ran (the Ray engine hosts each model on one device)."""
    a = plan.arrays
    hosted = (a.tp > 1) & (a.model >= 0)  # a pause (model -1) may span devices: it hosts nothing
    if hosted.any():
        s = int(hosted.argmax())
        group = range(int(a.device[s]), int(a.device[s]) + int(a.tp[s]))
        raise SymoeError(tp_refused(f"step {s}", plan.config.names[int(a.model[s])], list(group)))


def serve_on_cluster(cfg: Config) -> tuple[Config, Launch]:
    """``symoe serve`` on ``cfg``'s ``[cluster]``: the pool with the running cluster's devices, and
    the launch of one Ray engine per device (this process connected to the cluster)."""
    cfg = with_discovered_devices(cfg)
    return cfg, Launch(topology=live_topology(cfg))


def run_on_config(plan: Plan, questions: Sequence[Question], store: Store, run_dir: str | Path,
                  sampling: Sampling, assignment: Sequence[Sequence[str]] | None, options: RunOptions,
                  run_id: str | None = None) -> RunReport:
    """``run_plan`` for a plan whose config has a ``[cluster]`` table: its devices on the cluster."""
    refuse_tensor_parallel(plan)
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
    refuse_tensor_parallel(plan)
    if len(topology.devices) != len(plan.config.devices):
        raise SymoeError(f"the plan is for {len(plan.config.devices)} devices, the cluster has "
                         f"{len(topology.devices)} ({', '.join(d.label() for d in topology.devices)}); plan again")
    connect(topology.address)
    return run_replanning(plan, questions, store, run_dir, sampling or Sampling(), assignment, options or RunOptions(),
                          engines_for=lambda p, devices: plan_engines(p.config, Path(run_dir) / "logs",
                                                                      Launch(topology=topology.subset(devices))),
                          lost_now=lambda: lost_devices(topology), run_id=run_id)
