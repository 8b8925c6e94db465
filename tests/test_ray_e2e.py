"""The Ray engine on a real two-node Ray cluster with real vLLM CPU engines (SmolLM2-135M-Instruct).

The cluster is started by this module inside a private network namespace (``unshare --net``, only
loopback up: outside one, Ray would bind the machine's external interface) that is also a PID
namespace, so every Ray process dies with the namespace's first process; the driver
(ray_driver.py) runs in it too and writes what it saw per phase. One cluster start serves all the
tests below (a start plus the vLLM loads cost minutes on two cores)."""

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

import psutil
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'symoe[ray]')")

from symoe.models.fetch import fetch_tiny  # noqa: E402

HERE = Path(__file__).parent
SMOL = "SmolLM2-135M-Instruct"
LIMIT_S = 1500  # the whole driver: cluster start, three phases, six model loads on a busy 2-core machine



def namespaces_allowed() -> bool:
    """Whether this process may make a private network and PID namespace with loopback up."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return False
    probe = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child", "ip", "link", "set", "lo", "up"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = pytest.mark.skipif(not namespaces_allowed(), reason="needs root allowed to unshare a network and PID "
                                "namespace, and ip (the cluster must see only 127.0.0.1)")


def namespace_processes(marker: str) -> list[int]:
    """Processes whose command line names ``marker`` (the cluster's private temp folder)."""
    return [p.pid for p in psutil.process_iter(["cmdline"]) if marker in "\0".join(p.info["cmdline"] or [])]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    fetch_tiny([SMOL])  # the namespace has no network: the model must be on disk first
    out = tmp_path_factory.mktemp("ray")
    ray_tmp = tempfile.mkdtemp(prefix="symoe-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = dict(os.environ, RAY_BIN=str(Path(sys.executable).parent), RAY_PORT="6379", RAY_TMP=ray_tmp, NODES="2",
               RAY_ADDRESS="127.0.0.1:6379")
    log_path = out / "driver.log"
    cmd = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child", "bash", str(HERE / "ray_netns.sh"),
           sys.executable, str(HERE / "ray_driver.py"), str(out), "both", "fault", "rerun"]
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
    yield out, proc.returncode, log_path.read_text(errors="replace"), left, ray_tmp
    shutil.rmtree(ray_tmp, ignore_errors=True)


def phase(cluster, name: str) -> dict:
    out, code, log, _, _ = cluster
    f = out / f"{name}.json"
    assert f.exists(), f"phase {name} did not finish (driver exit {code}):\n{log[-6000:]}"
    res = json.loads(f.read_text())
    assert "crash" not in res, res["crash"]
    return res


def test_a_plan_runs_on_both_nodes_with_aggregation_across_them(cluster):
    r = phase(cluster, "both")
    assert r["nodes"] == ["node-a", "node-b"]
    where = r["placement"]
    assert set(where) == {"0", "1"} and all(where[d].get("expert") for d in where)
    expert_dev = {q: d for d, w in where.items() for q in w["expert"]}
    agg_dev = {q: d for d, w in where.items() for q in w["aggregate"]}
    assert any(agg_dev[q] != expert_dev[q] for q in agg_dev)  # an aggregation reads another node's answers
    assert r["generated"] == r["stored"] == r["expected"] and r["reused"] == 0
    assert all(t.strip() for t in r["expert_texts"] + r["finals"])  # the models really wrote something
    loads = {(d, node) for d, kind, node in r["steps"] if kind == "load"}
    assert loads == {(0, "node-a"), (1, "node-b")}
    assert len(r["actor_pids"]) == 2 and r["actors_alive_after"] == []  # unloaded: the actors' processes ended


def test_a_lost_node_is_reported_and_a_rerun_with_retries_completes_on_the_other(cluster):
    f = phase(cluster, "fault")
    assert f["killed"], "node-b's raylet was not found to kill"
    err = f["error"]
    assert err is not None, "the run did not fail although node-b was killed mid-run"
    assert err["type"] == "DeviceLost" and err["node"] == "node-b" and err["device"] == 1 and err["node_lost"]
    assert "node node-b" in err["message"] and "was lost" in err["message"] and SMOL in err["message"]
    assert 0 < f["stored"] < f["expected"]
    r = phase(cluster, "rerun")  # `symoe run-plan --retries 1` on the same plan file, node-b gone
    assert r["code"] == 0, r["stdout"] + r["stderr"]
    assert r["stored"] == r["expected"]
    missing = r["expected"] - f["stored"]
    assert f"{missing} generations made, {f['stored']} reused" in r["stdout"]  # only the missing work
    assert r["kept"]  # what was stored before the loss is unchanged
    assert {(d, node) for d, kind, node in r["steps"] if kind == "load"} == {(0, "node-a")}


def test_the_cluster_is_torn_down(cluster):
    out, code, log, left, ray_tmp = cluster
    assert code == 0, log[-6000:]
    assert left == [] and namespace_processes(ray_tmp) == []
