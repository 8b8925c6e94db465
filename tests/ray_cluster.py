"""One real two-node Ray cluster for the whole test session (test_ray_e2e.py and test_serve_ray.py).

The cluster is started inside a private network namespace (``unshare --net``, only loopback up:
outside one, Ray would bind the machine's external interface) that is also a PID namespace, so every
Ray process dies with the namespace's first process. The driver (ray_driver.py) runs in it too and
writes what it saw per phase to ``<out>/<phase>.json``; the tests check those files. A cluster start
costs tens of seconds on two cores, so the phases of both test modules share one start: the fixture
(``ray_cluster``, made a session fixture by tests/conftest.py) runs them all the first time a test
asks for it. ``serve`` runs before ``fault``, which kills node-b."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import psutil
import pytest

HERE = Path(__file__).parent
SMOL, GEMMA = "SmolLM2-135M-Instruct", "gemma-3-270m"
PHASES = ("both", "serve", "fault", "rerun")
LIMIT_S = 2400  # the whole driver: cluster start, four phases, eight model loads on a busy 2-core machine


@functools.cache
def namespaces_allowed() -> bool:
    """Whether this process may make a private network and PID namespace with loopback up."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return False
    probe = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child", "ip", "link", "set", "lo", "up"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


SKIP_REASON = "needs root allowed to unshare a network and PID namespace, and ip (the cluster must see only 127.0.0.1)"


def namespace_processes(marker: str) -> list[int]:
    """Processes whose command line names ``marker`` (the cluster's private temp folder)."""
    return [p.pid for p in psutil.process_iter(["cmdline"]) if marker in "\0".join(p.info["cmdline"] or [])]


class Cluster(NamedTuple):
    """What the driver left: its folder of phase files, exit code and log, and the namespace's leftovers."""

    out: Path
    code: int | None
    log: str
    left: list[int]
    ray_tmp: str


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from symoe.method.matching import embedder_folder
    from symoe.models.fetch import fetch_tiny

    fetch_tiny([SMOL, GEMMA])  # the namespace has no network: models and embedder must be on disk first
    embedder_folder()
    out = tmp_path_factory.mktemp("ray")
    ray_tmp = tempfile.mkdtemp(prefix="symoe-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = dict(os.environ, RAY_BIN=str(Path(sys.executable).parent), RAY_PORT="6379", RAY_TMP=ray_tmp, NODES="2",
               RAY_ADDRESS="127.0.0.1:6379")
    log_path = out / "driver.log"
    cmd = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child", "bash", str(HERE / "ray_netns.sh"),
           sys.executable, str(HERE / "ray_driver.py"), str(out), *PHASES]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=LIMIT_S)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if proc.poll() is None:  # --kill-child: the namespace's init, and with it every process there, dies
                proc.kill()
                proc.wait(30)
            deadline = time.monotonic() + 30
            while namespace_processes(ray_tmp) and time.monotonic() < deadline:
                time.sleep(0.5)
            left = namespace_processes(ray_tmp)
            for pid in left:  # not expected: the PID namespace ends with its init
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    yield Cluster(out, proc.returncode, log_path.read_text(errors="replace"), left, ray_tmp)
    shutil.rmtree(ray_tmp, ignore_errors=True)


def phase(cluster: Cluster, name: str) -> dict:
    """What the driver saw in phase ``name`` (fails with the driver's log if the phase did not finish)."""
    f = cluster.out / f"{name}.json"
    assert f.exists(), f"phase {name} did not finish (driver exit {cluster.code}):\n{cluster.log[-6000:]}"
    res: dict = json.loads(f.read_text())
    assert "crash" not in res, res["crash"] + cluster.log[-3000:]
    return res
