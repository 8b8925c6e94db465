"""Cluster topology without a cluster: the [cluster] table, devices by node from ray.nodes()-shaped
records (GPUs per node, or for CPU testing one custom resource per device), lost nodes."""

import dataclasses
import importlib
import tomllib
import types

import numpy as np
import pytest

import symoe
from symoe.config.cluster_table import ClusterTable
from symoe.config.pool import GB, Config
from symoe.config.topology import LOST, from_nodes, from_table
from symoe.errors import SymoeError

POOL = """
[engine]
platform = "{platform}"
[devices]
memory_gb = 80
overlap_load = true
[[model]]
name = "m"
weight_gb = 16
"""


def node(name, ip, node_id, alive=True, **res):
    return {"NodeName": name, "NodeManagerAddress": ip, "NodeID": node_id, "Alive": alive, "Resources": res}


NODES = [node("gpu-b", "10.0.0.2", "b" * 56, GPU=4.0, CPU=64.0), node("gpu-a", "10.0.0.1", "a" * 56, GPU=8.0),
         node("gpu-c", "10.0.0.3", "c" * 56, alive=False, GPU=8.0), node("cpu-only", "10.0.0.4", "d" * 56, CPU=8.0)]


def test_discovered_gpus_are_numbered_node_by_node_in_name_order():
    t = from_nodes(ClusterTable(address="10.0.0.1:6379", discover=True, host_memory_gb=400), "gpu", 80.0, NODES)
    assert [(d.node, d.local) for d in t.devices] == [("gpu-a", j) for j in range(8)] + [("gpu-b", j) for j in range(4)]
    assert [d.index for d in t.devices] == list(range(12))  # the dead node and the GPU-less one offer nothing
    assert t.devices[0].bundle() == {"GPU": 1.0, "node:10.0.0.1": 0.001}  # pinned to its node
    assert t.devices[0].host_bytes == 400 * GB / 8 and t.devices[8].host_bytes == 400 * GB / 4
    devs = t.planning_devices(overlap_load=True)
    assert len(devs) == 12 and devs[0].memory_bytes == 80 * GB


def test_cpu_devices_are_custom_resources_and_share_their_host():
    nodes = [node("node-a", "127.0.0.1", "a" * 56, symoe_dev_0=1.0, CPU=1.0),
             node("node-b", "127.0.0.1", "b" * 56, symoe_dev_2=1.0, symoe_dev_1=1.0, other=1.0)]
    t = from_nodes(ClusterTable(discover=True), "cpu", 8.0, nodes)
    assert [(d.node, d.resource) for d in t.devices] == [("node-a", "symoe_dev_0"), ("node-b", "symoe_dev_1"),
                                                         ("node-b", "symoe_dev_2")]
    assert t.devices[1].bundle() == {"symoe_dev_1": 1.0}
    assert [t.host_share(i) for i in range(3)] == [(0, 3), (1, 3), (2, 3)]  # one host: its cores split three ways
    assert t.subset([0, 2]).devices[1].resource == "symoe_dev_2" and t.subset([0, 2]).devices[1].index == 1


def test_listed_nodes_are_checked_against_the_cluster():
    table = ClusterTable(node=[{"name": "gpu-a", "devices": 8, "memory_gb": 40}, {"name": "gpu-b", "devices": 2}])
    t = from_nodes(table, "gpu", 80.0, NODES)
    assert [d.node for d in t.devices] == ["gpu-a"] * 8 + ["gpu-b"] * 2
    assert t.devices[0].memory_bytes == 40 * GB and t.devices[8].memory_bytes == 80 * GB
    assert t.devices[8].node_id == "b" * 56
    with pytest.raises(SymoeError, match="gpu-b' offers 4 GPUs, 6 are listed"):
        from_nodes(ClusterTable(node=[{"name": "gpu-b", "devices": 6}]), "gpu", 80.0, NODES)
    with pytest.raises(SymoeError, match="'gpu-c': no alive node of that name .*alive: cpu-only, gpu-a, gpu-b"):
        from_nodes(ClusterTable(node=[{"name": "gpu-c", "devices": 8}]), "gpu", 80.0, NODES)
    # A run keeps a lost node's devices (so their work can be replanned), marked lost.
    t = from_nodes(ClusterTable(node=[{"name": "gpu-a", "devices": 1}, {"name": "gpu-c", "devices": 2}]), "gpu", 80.0,
                   NODES, lost_ok=True)
    assert [(d.index, d.node, d.node_id == LOST) for d in t.devices] == [(0, "gpu-a", False), (1, "gpu-c", True),
                                                                        (2, "gpu-c", True)]
    with pytest.raises(SymoeError, match="does not offer resource"):
        from_nodes(ClusterTable(node=[{"name": "node-a", "resources": ["symoe_dev_7"]}]), "cpu", 8.0,
                   [node("node-a", "127.0.0.1", "a" * 56, symoe_dev_0=1.0)])


def test_cluster_table_in_the_pool_file():
    text = POOL.format(platform="gpu") + """
[cluster]
backend = "ray"
address = "10.0.0.1:6379"
[[cluster.node]]
name = "gpu-a"
devices = 2
host_memory_gb = 100
[[cluster.node]]
name = "gpu-b"
devices = 1
memory_gb = 40
"""
    cfg = Config.from_dict(tomllib.loads(text), source="pool.toml")
    assert [d.memory_bytes / GB for d in cfg.devices] == [80, 80, 40]  # listed nodes: the plan's devices
    assert [d.host_bytes / GB for d in cfg.devices] == [50, 50, 0]
    assert Config.from_dict(tomllib.loads(cfg.to_toml())) == cfg
    assert Config.from_plain(cfg.to_dict()) == cfg  # plan files keep the cluster table
    assert [d.node for d in from_table(cfg.cluster, "gpu", 80.0).devices] == ["gpu-a", "gpu-a", "gpu-b"]
    for bad, msg in [('[cluster]\nbackend = "slurm"\ndiscover = true\n', "backend should be 'ray'"),
                     ('[cluster]\nadress = "x"\ndiscover = true\n', "did you mean 'address'"),
                     ('[cluster]\nbackend = "ray"\n', "list the nodes"),
                     ('[cluster]\n[[cluster.node]]\nname = "a"\n', "either devices .GPUs. or resources")]:
        with pytest.raises(SymoeError, match=msg):
            Config.from_dict(tomllib.loads(POOL.format(platform="gpu") + bad), source="pool.toml")
    with pytest.raises(SymoeError, match="CPU devices are named by resources"):
        Config.from_dict(tomllib.loads(POOL.format(platform="cpu") + '[cluster]\n[[cluster.node]]\nname = "a"\n'
                                       'devices = 2\n'), source="pool.toml")


# --- the Ray engine's bookkeeping, with Ray's calls stubbed (no cluster) ---------------------------

TWO_SIZES = ClusterTable(node=[{"name": "gpu-a", "devices": 1, "memory_gb": 40}, {"name": "gpu-b", "devices": 1}])


def ray_engine_of(device, monkeypatch, platform="gpu"):
    import dataclasses

    from symoe.cluster.ray_engine import RayEngine

    monkeypatch.setenv("SYMOE_TEST_SECRET_KEY", "sk-do-not-leak")
    cfg = Config.from_dict(tomllib.loads(POOL.format(platform=platform)), source="pool.toml")
    cfg = dataclasses.replace(cfg, models=(dataclasses.replace(cfg.models[0], api_key_env="SYMOE_TEST_SECRET_KEY"),),
                              devices=(cfg.devices[0], cfg.devices[0]))
    return cfg, RayEngine.for_config(cfg, from_nodes(TWO_SIZES, "gpu", 80.0, NODES), device)


def test_ray_actors_get_their_devices_memory_share_and_no_keys(monkeypatch):
    from symoe.cluster import ray_engine as re
    from symoe.generation import ModelSettings

    class Actor:
        class load:
            @staticmethod
            def remote(spec):
                return spec

    class Host:
        def options(self, **opts):
            return self

        def remote(self):
            return Actor()

    sent = []
    monkeypatch.setattr(re, "remote_host", lambda: Host())
    monkeypatch.setattr(re.RayDevice, "placement", lambda self, what, deadline, model="": object())
    monkeypatch.setattr(re.RayEngine, "_get", lambda self, spec, *a: sent.append(spec) or {"pid": 1})
    for d in (0, 1):
        cfg, eng = ray_engine_of(d, monkeypatch)
        assert eng.env_vars.get("SYMOE_TEST_SECRET_KEY") == ""  # blanked in the actor's environment
        eng.load(ModelSettings.of(cfg, "m"), "load m", eng.clock.now() + 60)
    m = cfg.models[0]
    assert [s["gpu_memory_utilization"] for s in sent] == pytest.approx([m.resident_bytes / (40 * GB),
                                                                         m.resident_bytes / (80 * GB)])


def test_a_node_lost_while_reserving_names_the_model(monkeypatch):
    rpg = importlib.import_module("ray.util.placement_group")  # ray.util.placement_group is also a function

    from symoe.cluster.ray_device import RayDevice
    from symoe.generation import EngineTimeout, ModelSettings
    from symoe.generation.engine import DeviceLost

    class PG:
        def ready(self):
            return None

    def no_answer(self, ref, what, deadline):
        raise EngineTimeout(what)

    monkeypatch.setattr(rpg, "placement_group", lambda bundles, name: PG())
    monkeypatch.setattr(RayDevice, "wait", no_answer)
    monkeypatch.setattr(RayDevice, "node_gone", lambda self, node_id=None: True)
    cfg, eng = ray_engine_of(1, monkeypatch)
    with pytest.raises(DeviceLost, match="is not alive") as e:
        eng.load(ModelSettings.of(cfg, "m"), "load m", eng.clock.now() + 60)
    assert e.value.model == "m" and e.value.device == 1 and e.value.node_lost


def test_actors_and_placement_groups_that_do_not_go_are_reported(monkeypatch, caplog):
    import logging

    import ray
    rpg = importlib.import_module("ray.util.placement_group")  # ray.util.placement_group is also a function

    from symoe.cluster.ray_host import Hosted
    from symoe.generation import ModelSettings

    def refuse(*a, **k):
        raise RuntimeError("the cluster does not answer")

    monkeypatch.setattr(ray, "kill", refuse)
    monkeypatch.setattr(rpg, "remove_placement_group", refuse)
    cfg, eng = ray_engine_of(0, monkeypatch)
    eng.resident["m"] = Hosted(object(), ModelSettings.of(cfg, "m"), pid=4242)
    eng.dev.pg = type("PG", (), {"id": "pg-0123"})()
    with caplog.at_level(logging.WARNING, logger="symoe"):
        eng.close()
    assert "model m on device 0" in caplog.text and "pid 4242" in caplog.text and "not killed" in caplog.text
    assert "placement group pg-0123 was not removed" in caplog.text


def test_a_tensor_parallel_plan_is_refused_before_the_cluster_is_touched(monkeypatch, tmp_path):
    # The Ray engine hosts each model on one device: a TP step must not start the run (and load or
    # generate what comes before it) only to fail at its own load.
    from symoe.execution import RunOptions, on_cluster
    from symoe.generation import Sampling
    from symoe.planning.plan import StepKind
    from symoe.store import Store

    paper = Config.bundled("paper16")
    agg = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
    a = symoe.Assignment((agg,), np.zeros((4, 1), dtype=np.int64), tuple(f"q{i}" for i in range(4)))
    p = symoe.plan(a, paper.with_devices(2), aggregator=agg, strategy="reference")
    runs = p.arrays.kind == StepKind.RUN
    assert (p.arrays.tp[runs] == 2).all()

    def touched(*args, **kwargs):
        raise AssertionError("the cluster was touched")

    monkeypatch.setattr(on_cluster, "connect", touched)
    monkeypatch.setattr(on_cluster, "live_topology", touched)
    topology = types.SimpleNamespace(devices=[object(), object()], address="auto")
    with Store(tmp_path / "store.sqlite") as store:
        with pytest.raises(SymoeError, match=r"tensor-parallel over devices \[0, 1\]"):
            on_cluster.run_on_cluster(p, [], store, tmp_path / "run", topology)
        with pytest.raises(SymoeError, match=r"tensor-parallel over devices \[0, 1\]"):  # a pool with [cluster]
            on_cluster.run_on_config(p, [], store, tmp_path / "run", Sampling(), None, RunOptions())
    # The reference plan's pause (model -1) spans both devices too: no model is hosted there, so it
    # is neither refused alone nor named in place of the TP model after it.
    arrays = p.arrays.copy()
    arrays.tp[arrays.model >= 0] = 1
    on_cluster.refuse_tensor_parallel(dataclasses.replace(p, arrays=arrays))
    arrays.tp[4:] = 2  # the first TP step is the pause at 3; the first TP model step comes after it
    assert arrays.model[3] == -1 and (arrays.model[4:] >= 0).all()
    with pytest.raises(SymoeError, match=rf"step 4: model {agg} is planned tensor-parallel over devices \[0, 1\]"):
        on_cluster.refuse_tensor_parallel(dataclasses.replace(p, arrays=arrays))
