"""``symoe serve`` on a real two-node Ray cluster: a pool with a ``[cluster]`` table is served on the
cluster's devices, each model a Ray actor running real vLLM on CPU (SmolLM2-135M-Instruct and
gemma-3-270m), and concurrent chat requests are answered. The cluster is the session's one (ray_cluster.py,
shared with test_ray_e2e.py: one start for both); its driver runs the ``serve`` phase
(ray_serve_driver.py) while both nodes are up. Not a quick test: two vLLM loads and one window."""

from __future__ import annotations

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'symoe[ray]')")

from ray_cluster import GEMMA, SKIP_REASON, SMOL, namespace_processes, namespaces_allowed, phase  # noqa: E402

pytestmark = pytest.mark.skipif(not namespaces_allowed(), reason=SKIP_REASON)


def test_a_cluster_pool_is_served_on_its_devices_by_ray_actors(ray_cluster):
    res = phase(ray_cluster, "serve")
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
    assert ray_cluster.left == [] and namespace_processes(ray_cluster.ray_tmp) == []
