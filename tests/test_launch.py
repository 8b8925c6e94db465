"""execution/launch.py: the one place that picks the engines of plan runs, stages and symoe serve."""

from types import SimpleNamespace

import pytest

import symoe
from symoe.execution.launch import Launch, plan_engines, stage_engine
from symoe.generation.engine import EngineError
from symoe.generation.fake import FakeEngine, ScaledClock
from symoe.generation.local import LocalEngine
from symoe.generation.remote import RemoteEngine
from symoe.generation.routed import RoutedEngine
from symoe.generation.served import ServedEngine
from symoe.planning.endpoints import with_endpoint_devices


def pool(tmp_path, served=False):
    """Two local devices (a plain or a served model) and an endpoint model on its own virtual device."""
    local = {"name": "L", "path": str(tmp_path / "L"), "weight_gb": 1.0, **({"serve": "vllm"} if served else {})}
    remote = {"name": "m", "endpoint": "http://127.0.0.1:9/v1"}
    cfg = symoe.Config.from_dict({"devices": {"count": 2, "memory_gb": 8.0}, "model": [local, remote]})
    return with_endpoint_devices(cfg)  # as a plan's config


def test_plan_runs_stages_and_serve_get_their_engines_from_one_place(tmp_path):
    cfg = pool(tmp_path)
    made = plan_engines(cfg, tmp_path)
    assert [type(e) for e in made] == [LocalEngine, LocalEngine, RemoteEngine] and [e.device for e in made] == [0, 1, 2]
    assert [e.memory_bytes for e in made[:2]] == [d.memory_bytes for d in cfg.devices[:2]]
    stages = stage_engine(cfg, tmp_path)  # every model through one engine: the endpoint model routed to its own
    assert isinstance(stages, RoutedEngine) and isinstance(stages.default, LocalEngine) and set(stages.by_model) == {"m"}
    served = plan_engines(pool(tmp_path, served=True), tmp_path)
    assert isinstance(served[0], ServedEngine) and isinstance(served[0].others, LocalEngine)
    clock = ScaledClock(0)
    fakes = plan_engines(cfg, tmp_path, Launch(fake=clock))
    assert all(isinstance(e, FakeEngine) and e.clock is clock for e in fakes)
    serve = stage_engine(cfg, tmp_path, Launch(fake=clock))  # symoe serve --fake
    assert isinstance(serve, FakeEngine)
    with pytest.raises(EngineError, match="the plan has 3 devices, the cluster topology 1"):
        plan_engines(cfg, tmp_path, Launch(topology=SimpleNamespace(devices=[object()])))
    for e in [*made, stages, *served, *fakes, serve]:
        e.close()
