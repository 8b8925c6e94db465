"""``symoe serve`` on a real two-node Ray cluster: a pool with a ``[cluster]`` table is served on the
cluster's devices, each model a Ray actor running real vLLM on CPU (SmolLM2-135M-Instruct and
gemma-3-270m), and concurrent chat requests are answered. The cluster lives in a private network
and PID namespace, as in test_ray_e2e.py (whose helpers are reused); the driver,
ray_serve_driver.py, runs there too. Not a quick test: ~4 min on a busy 2-core machine (230 s
measured: a cluster start, two vLLM loads, one window), like test_ray_e2e.py unmarked and bounded
by LIMIT_S."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'symoe[ray]')")

from symoe.method.matching import embedder_folder  # noqa: E402
from symoe.models.fetch import fetch_tiny  # noqa: E402
from test_ray_e2e import namespace_processes, namespaces_allowed  # noqa: E402

HERE = Path(__file__).parent
SMOL, GEMMA = "SmolLM2-135M-Instruct", "gemma-3-270m"
LIMIT_S = 900

pytestmark = pytest.mark.skipif(not namespaces_allowed(), reason="needs root allowed to unshare a network and PID "
                                "namespace, and ip (the cluster must see only 127.0.0.1)")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    fetch_tiny([SMOL, GEMMA])  # the namespace has no network: models and embedder on disk first
    embedder_folder()
    out = tmp_path_factory.mktemp("ray-serve")
    ray_tmp = tempfile.mkdtemp(prefix="symoe-rs-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = dict(os.environ, RAY_BIN=str(Path(sys.executable).parent), RAY_PORT="6379", RAY_TMP=ray_tmp, NODES="2",
               RAY_ADDRESS="127.0.0.1:6379")
    cmd = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child", "bash", str(HERE / "ray_netns.sh"),
           sys.executable, str(HERE / "ray_serve_driver.py"), str(out)]
    log_path = out / "driver.log"
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
    f = out / "serve.json"
    log_text = log_path.read_text(errors="replace")
    assert f.exists(), f"the driver did not finish (exit {proc.returncode}):\n{log_text[-6000:]}"
    res = json.loads(f.read_text())
    assert "crash" not in res, res["crash"] + log_text[-3000:]
    yield res, left, ray_tmp
    shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_cluster_pool_is_served_on_its_devices_by_ray_actors(served):
    res, left, ray_tmp = served
    # The placement line: one model on each of the cluster's two devices, both loaded at start.
    start = res["start"]
    assert f"device 0: {GEMMA}*" in start and f"device 1: {SMOL}*" in start or \
        f"device 0: {SMOL}*" in start and f"device 1: {GEMMA}*" in start, start
    answers = res["answers"]
    assert all(a is not None and a[0] == 200 for a in answers), (answers, res["stderr"])
    for _, body in answers:
        assert body["choices"][0]["message"]["content"].strip()
        assert {e["model"] for e in body["symoe"]["experts"]} <= {SMOL, GEMMA}
    assert len({b["symoe"]["question"] for _, b in answers}) == 3  # each its own answer
    assert res["bad"] == 400 and res["code"] == 0, res["stderr"]  # still serving, then a clean stop
    assert "2 loads" in res["stderr"]  # one actor per device, loaded once
    assert res["stored"]["keywords"] == 3 * 5 and res["stored"]["expert"] == 3 * 2 and res["stored"]["aggregate"] == 3
    assert left == [] and namespace_processes(ray_tmp) == []
