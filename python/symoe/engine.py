"""The engine layer, parent side: worker processes that host one model each, per device.

A model lives in its own worker process (``symoe.worker``), so unloading it really frees its
memory (vLLM does not return all of it in-process) and several models can be resident on one
device. A warm spare worker, with ``vllm`` already imported, is kept per device so a load only
pays the engine start. A worker that dies is reported with its model and step, never a hang.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


class WorkerError(RuntimeError):
    """A worker failed or died; the message names the model and step and quotes its log."""


def engine_env(platform: str, device: int, threads: int | None = None, kv_cache_gb: float = 1.0) -> dict[str, str]:
    """Environment a worker needs before vLLM is imported."""
    env = dict(os.environ)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if platform == "cpu":
        n = threads or os.cpu_count() or 1
        env["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{n - 1}"
        env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, int(round(kv_cache_gb))))  # whole GiB
        env["CUDA_VISIBLE_DEVICES"] = ""
        iomp = Path(sys.prefix) / "lib" / "libiomp5.so"
        if iomp.exists():  # vLLM's CPU kernels want Intel OpenMP loaded first
            env["LD_PRELOAD"] = " ".join(x for x in (str(iomp), env.get("LD_PRELOAD", "")) if x)
    else:
        env["CUDA_VISIBLE_DEVICES"] = str(device)
    return env


class Worker:
    def __init__(self, env: Mapping[str, str], log_path: Path, preimport: bool = True):
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")
        env = dict(env, SYMOE_WORKER_PREIMPORT="1" if preimport else "0")
        self.proc = subprocess.Popen([sys.executable, "-m", "symoe.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, env=env, text=True, bufsize=1)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.model: str | None = None
        self._ready = False

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _read(self, what: str, timeout: float | None) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise WorkerError(f"{what}: no answer from the worker in {timeout:.0f} s (killed); log: {self.log_path}") from None
        if line is None:
            code = self.proc.wait()
            raise WorkerError(f"{what}: worker exited with code {code}\n{self.log_tail()}")
        return json.loads(line)

    def wait_ready(self, timeout: float | None = 600) -> None:
        if not self._ready:
            self._read("worker start", timeout)
            self._ready = True

    def request(self, msg: dict[str, Any], what: str, on_event: Callable[[dict[str, Any]], None] | None = None,
                timeout: float | None = None) -> dict[str, Any]:
        self.wait_ready()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise WorkerError(f"{what}: worker is gone\n{self.log_tail()}") from None
        while True:
            reply = self._read(what, timeout)
            if reply.get("event"):
                if on_event:
                    on_event(reply)
                continue
            if not reply.get("ok"):
                raise WorkerError(f"{what}: {reply.get('error')}\n{self.log_tail()}")
            return reply

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "worker log tail:\n  " + "\n  ".join(lines[-n:])

    def close(self) -> None:
        """End the process: its memory, the model's included, goes back to the system. The worker
        holds nothing that needs a clean shutdown, and vLLM's takes seconds, so it is killed."""
        self.kill()
        self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Device:
    """Workers of one device: the resident models and one warm spare."""

    def __init__(self, index: int, env: Mapping[str, str], log_dir: Path):
        self.index, self.env, self.log_dir = index, env, log_dir
        self.resident: dict[str, Worker] = {}
        self.spare: Worker | None = None
        self._n = 0

    def _new_worker(self) -> Worker:
        self._n += 1
        return Worker(self.env, self.log_dir / f"device{self.index}-worker{self._n}.log")

    def prepare_spare(self) -> None:
        if self.spare is None:
            self.spare = self._new_worker()

    def load(self, name: str, spec: dict[str, Any], what: str, keep_spare: bool = True) -> dict[str, Any]:
        if name in self.resident:
            raise WorkerError(f"{what}: model {name} is already resident on device {self.index}")
        w = self.spare or self._new_worker()
        self.spare = None
        if keep_spare:  # the next worker imports vllm while this one loads
            self.prepare_spare()
        t0 = time.perf_counter()
        w.wait_ready()
        ready_s = time.perf_counter() - t0
        try:
            info = w.request({"op": "load", "model": spec}, what)
        except WorkerError:
            w.kill()
            raise
        w.model = name
        self.resident[name] = w
        return {**info, "spare_wait_s": ready_s}

    def worker(self, name: str, what: str) -> Worker:
        try:
            return self.resident[name]
        except KeyError:
            raise WorkerError(f"{what}: model {name} is not resident on device {self.index}") from None

    def unload(self, name: str, what: str) -> None:
        self.worker(name, what).close()
        del self.resident[name]

    def close(self) -> None:
        for w in list(self.resident.values()) + ([self.spare] if self.spare else []):
            w.kill()
        self.resident.clear()
        self.spare = None
