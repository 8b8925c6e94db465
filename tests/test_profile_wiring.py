"""The machine profile reaches a run: SymbolicMoE (the API, and `symoe run` through it) applies it
to the pool when it drives this machine's engines, and says where each figure came from."""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import pytest

import symoe.moe
from symoe.config import profile
from symoe.config.pool import Config
from symoe.execution.report import RunReport
from symoe.generation.fake import ScaledClock, fake_engines
from symoe.method.datasets import bundled
from symoe.moe import SymbolicMoE, observe_or_warn, profile_file
from symoe.store import Store

POOL = """
[engine]
platform = "cpu"
max_tokens = 256
[devices]
memory_gb = 8.0
""" + "".join(f'[[model]]\nname = "{n}"\nweight_gb = 1.0\n' for n in
              ("SmolLM2-135M-Instruct", "Qwen2.5-Coder-0.5B-Instruct", "gemma-3-270m"))


def test_symbolic_moe_uses_the_profile(tmp_path):
    (tmp_path / "pool.toml").write_text(POOL)
    cfg = Config.from_toml(tmp_path / "pool.toml")
    p = profile.load("cpu")
    p.models[profile.model_key(cfg.model("gemma-3-270m"))] = profile.ModelProfile(load_s=42.0)
    profile.save(p)
    moe = SymbolicMoE(cfg, bundled("tiny_profiles.json"), bundled("tiny_task.json"), store=tmp_path / "s.sqlite")
    assert moe.config.load_seconds("gemma-3-270m") == 42.0
    assert moe.config.load_seconds("SmolLM2-135M-Instruct") == pytest.approx(cfg.load_seconds("SmolLM2-135M-Instruct"))
    assert "gemma-3-270m (load)" in moe.cost_note and "SmolLM2-135M-Instruct" in moe.cost_note
    clock = ScaledClock(0)  # engines given (a simulation): the config's figures, untouched
    fake = SymbolicMoE(cfg, bundled("tiny_profiles.json"), bundled("tiny_task.json"), store=tmp_path / "s.sqlite",
                       engines=lambda c: fake_engines(c, clock), clock=clock)
    assert fake.config.load_seconds("gemma-3-270m") == cfg.load_seconds("gemma-3-270m")


def corrupt_profile(cfg: Config) -> str:
    path = profile_file(cfg)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("{not json")
    return path


def test_an_unreadable_profile_costs_a_warning_not_the_run(tmp_path, caplog):
    (tmp_path / "pool.toml").write_text(POOL)
    cfg = Config.from_toml(tmp_path / "pool.toml")
    path = corrupt_profile(cfg)
    with caplog.at_level(logging.WARNING):
        moe = SymbolicMoE(cfg, bundled("tiny_profiles.json"), bundled("tiny_task.json"), store=tmp_path / "s.sqlite")
        assert moe.config.load_seconds("gemma-3-270m") == pytest.approx(cfg.load_seconds("gemma-3-270m"))
        assert "all from the config" in moe.cost_note and path in moe.cost_note
        with Store(tmp_path / "s.sqlite") as store:  # after a finished run: the profile cannot take it
            observe_or_warn(cfg, RunReport("r", [], [], 0.0, 0.0, 0, 0), store)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and all(path in w for w in warned), warned


def test_a_cluster_pool_neither_takes_nor_feeds_this_machines_profile(tmp_path, monkeypatch):
    (tmp_path / "pool.toml").write_text(POOL + '[cluster]\naddress = "127.0.0.1:6379"\n[[cluster.node]]\nname = "a"\n'
                                        'resources = ["symoe_dev_0"]\n')
    cfg = Config.from_toml(tmp_path / "pool.toml")
    p = profile.load("cpu")
    p.models[profile.model_key(cfg.model("gemma-3-270m"))] = profile.ModelProfile(load_s=42.0)
    profile.save(p)
    moe = SymbolicMoE(cfg, bundled("tiny_profiles.json"), bundled("tiny_task.json"), store=tmp_path / "s.sqlite")
    assert moe.config.load_seconds("gemma-3-270m") == cfg.load_seconds("gemma-3-270m") != 42.0
    assert "[cluster]" in moe.cost_note and "not applied" in moe.cost_note and "not recorded" in moe.cost_note
    observed = []  # the run itself is a stand-in (no Ray here): only whether it is recorded matters
    monkeypatch.setattr(symoe.moe, "provide", lambda *a: None)
    monkeypatch.setattr(symoe.moe, "run_pipeline", lambda *a: SimpleNamespace(report=None))
    monkeypatch.setattr(symoe.moe, "observe_or_warn", lambda *a: observed.append(a))
    moe.run([], tmp_path / "out")
    assert observed == []
