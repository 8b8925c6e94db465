"""Where a device's engine runs: its CPU cores, and the environment of a model the plan shards over
a group of devices (a tensor-parallel step; the settings say how: ``ModelSettings.on_devices``)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence


def device_cores(device: int, devices: int = 1, threads: int | None = None) -> range:
    """The CPU cores device ``device`` of ``devices`` is bound to (``threads`` each, default an
    equal share of this machine's cores)."""
    cores = os.cpu_count() or 1
    n = threads or max(1, cores // devices)
    first = (device * n) % cores
    return range(first, min(first + n, cores))


def cpu_list(cores: Iterable[int]) -> str:
    """Cores as ``"0-3,8-11"`` (what ``VLLM_CPU_OMP_THREADS_BIND`` reads for one engine)."""
    out: list[str] = []
    run: list[int] = []
    for c in sorted(set(cores)):
        if run and c != run[-1] + 1:
            out.append(f"{run[0]}-{run[-1]}")
            run = []
        run.append(c)
    if run:
        out.append(f"{run[0]}-{run[-1]}")
    return ",".join(out)


def group_env(env: Mapping[str, str], platform: str, group: Sequence[int], devices: int = 1,
              threads: int | None = None) -> dict[str, str]:
    """A device's engine environment ``env`` for a model sharded over ``group``: on a GPU it sees
    the group's GPUs (vLLM's tensor parallelism spans them); on CPU its one engine is bound to the
    union of the group's cores."""
    if not group:
        raise ValueError("group: at least one device")
    out = dict(env)
    if platform == "cpu":
        out["VLLM_CPU_OMP_THREADS_BIND"] = cpu_list(c for d in group for c in device_cores(d, devices, threads))
    else:
        out["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in group)
    return out
