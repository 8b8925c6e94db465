"""The Ray engine on a real two-node Ray cluster with real vLLM CPU engines (SmolLM2-135M-Instruct).

The cluster (ray_cluster.py: a private network and PID namespace, one start for the whole session,
shared with test_serve_ray.py) runs the driver ray_driver.py, which writes what it saw per phase;
these tests check the phases ``both``, ``fault`` and ``rerun``."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'symoe[ray]')")

from ray_cluster import SKIP_REASON, SMOL, namespace_processes, namespaces_allowed, phase  # noqa: E402

pytestmark = pytest.mark.skipif(not namespaces_allowed(), reason=SKIP_REASON)


def test_a_plan_runs_on_both_nodes_with_aggregation_across_them(ray_cluster):
    r = phase(ray_cluster, "both")
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


def test_a_lost_node_is_reported_and_a_rerun_with_retries_completes_on_the_other(ray_cluster):
    f = phase(ray_cluster, "fault")
    assert f["killed"], "node-b's raylet was not found to kill"
    err = f["error"]
    assert err is not None, "the run did not fail although node-b was killed mid-run"
    assert err["type"] == "DeviceLost" and err["node"] == "node-b" and err["device"] == 1 and err["node_lost"]
    assert "node node-b" in err["message"] and "was lost" in err["message"] and SMOL in err["message"]
    assert 0 < f["stored"] < f["expected"]
    r = phase(ray_cluster, "rerun")  # `symoe run-plan --retries 1` on the same plan file, node-b gone
    assert r["code"] == 0, r["stdout"] + r["stderr"]
    assert r["stored"] == r["expected"]
    missing = r["expected"] - f["stored"]
    assert f"{missing} generations made, {f['stored']} reused" in r["stdout"]  # only the missing work
    assert r["kept"]  # what was stored before the loss is unchanged
    assert {(d, node) for d, kind, node in r["steps"] if kind == "load"} == {(0, "node-a")}


def test_the_cluster_is_torn_down(ray_cluster):
    assert ray_cluster.code == 0, ray_cluster.log[-6000:]
    assert ray_cluster.left == [] and namespace_processes(ray_cluster.ray_tmp) == []
