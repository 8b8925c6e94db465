"""Load/offload timing: per model, engine load, first token, throughput by batch size, unload, and
the raw read bandwidth of the same weight files; host-to-device bandwidth where a GPU exists."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from ..config.pool import Config
from ..records import Generation, Request, SamplingParams
from .engine import ModelSettings
from .local import LocalEngine

PROMPT = ({"role": "user", "content": "Explain step by step why the sky is blue."},)
NO_DEADLINE = math.inf


def file_read_gbps(folder: str | Path) -> dict[str, float]:
    """Sequential read of every weight file (the page cache may already hold them: 'warm')."""
    files = [p for p in Path(folder).glob("*.safetensors")] or [p for p in Path(folder).glob("*") if p.is_file()]
    total, t0 = 0, time.perf_counter()
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while chunk := f.read(1 << 24):
                total += len(chunk)
    dt = time.perf_counter() - t0
    return {"bytes": float(total), "seconds": dt, "gbps": total / dt / 1e9 if dt > 0 else float("nan")}


def h2d_gbps(nbytes: int) -> float | None:
    """Host-to-device copy bandwidth of a model-sized pinned tensor (None without a GPU)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    x = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    y = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    y.copy_(x, non_blocking=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(3):
        y.copy_(x, non_blocking=True)
    torch.cuda.synchronize()
    return 3 * nbytes / (time.perf_counter() - t0) / 1e9


def bench_requests(model: str, chat: bool, batch: int, max_tokens: int) -> list[Request]:
    """``batch`` identical benchmark requests (distinct seeds) for load and throughput figures."""
    return [Request(f"bench-{batch}-{i}", model, "expert", i, "bench", SamplingParams(0.7, max_tokens, i),
                    PROMPT if chat else None, None if chat else "Why is the sky blue?") for i in range(batch)]


def bench_model(cfg: Config, name: str, batch_sizes: tuple[int, ...] = (1, 4, 16), max_tokens: int = 64,
                log_dir: Path = Path("runs/bench-load")) -> dict[str, Any]:
    """Load, first-token, throughput-by-batch and unload figures of one model."""
    eng = LocalEngine.for_config(cfg, 0, log_dir)
    settings = ModelSettings.of(cfg, name)
    row: dict[str, Any] = {"model": name}
    if os.path.isdir(settings.path):
        row["file_read"] = file_read_gbps(settings.path)
    try:
        eng.prepare()
        assert eng.spare is not None
        eng.spare.wait_ready("bench: worker start", NO_DEADLINE)  # the import of vllm is not part of a load
        t0 = time.perf_counter()
        info = eng.load(settings, f"bench load {name}", NO_DEADLINE, keep_spare=False)
        row["load_s"] = time.perf_counter() - t0
        row["engine_load_s"] = info["load_s"]
        row["batches"] = []
        for b in batch_sizes:
            got: list[Generation] = []
            r = eng.generate(name, bench_requests(name, settings.chat, b, max_tokens), got.append,
                             f"bench generate {name} x{b}", NO_DEADLINE)
            row["batches"].append({"batch": b, "seconds": r.seconds, "first_token_s": r.first_token_s,
                                   "tokens": r.tokens, "tokens_per_s": r.tokens / r.seconds})
        if settings.sleep:
            t0 = time.perf_counter()
            eng.park(name, "bench park", NO_DEADLINE)
            row["park_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            eng.wake(name, "bench wake", NO_DEADLINE)
            row["wake_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        eng.unload(name, "bench unload", NO_DEADLINE)
        row["unload_s"] = time.perf_counter() - t0
    finally:
        eng.close()
    weights = row.get("file_read", {}).get("bytes")
    if weights:
        row["h2d_gbps"] = h2d_gbps(int(weights))
    return row
