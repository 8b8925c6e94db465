"""Worker processes on this machine: starting them (from one long-lived thread, within a deadline),
the engine environment they need before vLLM is imported, and the JSON-lines pipe to each.
:class:`.local.LocalEngine` holds them per device; served and Ray engines reuse the environment."""

from __future__ import annotations

import json
import logging
import os
import queue
import select
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..config.pool import EngineSettings
from .device_group import cpu_list, device_cores
from .engine import KILL_WAIT_S, SPAWN_S, EngineError, EngineTimeout

WORKER = Path(__file__).with_name("worker.py")
# Workers are started from one long-lived thread: their die-with-parent signal fires when the
# thread that started them ends, and scheduler threads come and go.
_spawner = ThreadPoolExecutor(1, thread_name_prefix="symoe-spawn")
log = logging.getLogger("symoe.engine")


def spawn(what: str, cmd: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
    """Start ``cmd`` from the spawner thread, within :data:`SPAWN_S` (a process that appears after
    that is killed the moment it does)."""
    def start() -> subprocess.Popen[Any]:
        return subprocess.Popen(cmd, **popen)

    def late(f: Future[subprocess.Popen[Any]]) -> None:
        if f.exception() is None:
            f.result().kill()

    fut = _spawner.submit(start)
    try:
        return fut.result(timeout=SPAWN_S)
    except TimeoutError:
        fut.add_done_callback(late)
        raise EngineTimeout(f"{what}: the process was not started within {SPAWN_S:.0f} s") from None


def reap(proc: subprocess.Popen[Any], what: str) -> int | None:
    """Wait (at most :data:`KILL_WAIT_S`) for a killed process; one that outlives it (stuck in
    the kernel, e.g. a device driver) is reported, not waited on forever. Its exit code, or None."""
    try:
        return proc.wait(KILL_WAIT_S)
    except subprocess.TimeoutExpired:
        log.warning("%s: process %d did not exit within %.0f s of SIGKILL; left behind", what, proc.pid, KILL_WAIT_S)
        return None


def engine_env(platform: str, device: int, devices: int = 1, threads: int | None = None,
               kv_cache_gb: float = EngineSettings().kv_cache_gb) -> dict[str, str]:
    """Environment a worker needs before vLLM is imported. On CPU each of ``devices`` devices is
    bound to its own cores (``threads`` each, default: an equal share)."""
    env = dict(os.environ)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if platform == "cpu":
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_list(device_cores(device, devices, threads))
        env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, int(round(kv_cache_gb))))  # whole GiB
        env["CUDA_VISIBLE_DEVICES"] = ""
        iomp = Path(sys.prefix) / "lib" / "libiomp5.so"
        if iomp.exists():  # vLLM's CPU kernels want Intel OpenMP loaded first
            env["LD_PRELOAD"] = " ".join(x for x in (str(iomp), env.get("LD_PRELOAD", "")) if x)
    else:
        env["CUDA_VISIBLE_DEVICES"] = str(device)
    return env


class Worker:
    """One worker process and its JSON-lines pipe."""

    def __init__(self, env: Mapping[str, str], log_path: Path, preimport: bool = True):
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")
        env = dict(env, SYMOE_WORKER_PREIMPORT="1" if preimport else "0", SYMOE_PARENT_PID=str(os.getpid()))
        try:
            self.proc = spawn(f"worker {log_path.stem}", [sys.executable, str(WORKER)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=self._log, env=env, text=True, bufsize=1)
        except EngineError:
            self._log.close()
            raise
        assert self.proc.stdin is not None
        self._stdin = self.proc.stdin.fileno()  # requests are written to it directly, never blocking
        os.set_blocking(self._stdin, False)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self._ready = False

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def read(self, what: str, deadline: float) -> dict[str, Any]:
        """The worker's next message; its exit, a malformed line or the deadline raise EngineError."""
        try:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()) if deadline != float("inf") else None)
        except queue.Empty:
            self.kill()
            raise EngineTimeout(f"{what}: no answer from the worker (pid {self.proc.pid}) by its deadline; "
                                f"killed. Log: {self.log_path}") from None
        if line is None:
            code = reap(self.proc, what)
            raise EngineError(f"{what}: worker exited with code {code}\n{self.log_tail()}")
        try:
            msg = json.loads(line)
            if not isinstance(msg, dict):
                raise ValueError
        except ValueError:
            self.kill()
            raise EngineError(f"{what}: malformed reply from the worker: {line[:200]!r}") from None
        return msg

    def wait_ready(self, what: str, deadline: float) -> None:
        """Wait for the worker's ready line within the deadline."""
        if not self._ready:
            self.read(what, deadline)
            self._ready = True

    def request(self, msg: dict[str, Any], what: str, deadline: float, on_event: Any = None) -> dict[str, Any]:
        """Send one command and wait for its reply, passing events on to ``on_event``."""
        self.wait_ready(what, deadline)
        self._send((json.dumps(msg) + "\n").encode(), what, deadline)
        while True:
            reply = self.read(what, deadline)
            if reply.get("event"):
                if on_event:
                    on_event(reply)
                continue
            if not reply.get("ok"):
                raise EngineError(f"{what}: {reply.get('error')}\n{self.log_tail()}")
            return reply

    def _send(self, data: bytes, what: str, deadline: float) -> None:
        """Write a request within the deadline: a worker that stops reading fills the pipe's
        buffer (64 KiB) with a large batch, and a plain write would then block its lane for good."""
        view = memoryview(data)
        while view:
            left = None if deadline == float("inf") else deadline - time.monotonic()
            if left is not None and left <= 0:
                self.kill()
                raise EngineTimeout(f"{what}: the worker (pid {self.proc.pid}) did not read its request "
                                    f"({len(data)} bytes, {len(data) - len(view)} taken) by its deadline; killed. "
                                    f"Log: {self.log_path}")
            poll = select.poll()  # not select.select: a long run's descriptors may pass FD_SETSIZE
            poll.register(self._stdin, select.POLLOUT)
            if not poll.poll(None if left is None else max(1, int(left * 1000))):
                continue
            try:
                view = view[os.write(self._stdin, view):]
            except BlockingIOError:
                continue
            except OSError:  # BrokenPipeError: it exited
                raise EngineError(f"{what}: worker is gone\n{self.log_tail()}") from None

    def log_tail(self, n: int = 15) -> str:
        """The last lines of the worker's log, for error messages."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "worker log tail:\n  " + "\n  ".join(lines[-n:])

    def kill(self) -> None:
        """End the process: its memory, the model's included, goes back to the system. The worker
        holds nothing that needs a clean shutdown, and vLLM's takes seconds, so it is killed."""
        if self.proc.poll() is None:
            self.proc.kill()
            reap(self.proc, f"worker {self.log_path.stem}")
        if not self._log.closed:
            self._log.close()
