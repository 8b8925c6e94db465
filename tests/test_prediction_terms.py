"""Terms the 2-core prediction check showed missing (issue 21): a device's worker start before its
first load, the prefill rate by engine share (one core of two prefills about half as fast), timed
on as many distinct prompts as runs prefill at once, and the keyword stage's shared prompts (a
question's samples prefill once: vLLM's prefix cache)."""

from dataclasses import replace

import numpy as np
import pytest

from symoe.config import profile
from symoe.config.pool import Config
from symoe.execution.measure import prefill_rate
from symoe.execution.prediction import keyword_seconds, plan_step_groups
from symoe.generation.engine import BatchInfo
from symoe.method.routing import Assignment
from symoe.planning.planner import plan
from symoe.planning.steps import StepKind


def cpu_pool(devices: int = 1) -> Config:
    return Config.from_dict({"engine": {"platform": "cpu"}, "devices": {"memory_gb": 8.0, "count": devices},
                             "model": [{"name": "small", "weight_gb": 1.0, "prefill_tps": 100.0},
                                       {"name": "other", "weight_gb": 2.0}]})


def test_a_questions_keyword_samples_prefill_their_prompt_once():
    cfg = cpu_pool()
    prompt = cfg.model_tokens("small").expert_prompt
    once = keyword_seconds(cfg, "small", 30, 48, samples=5)
    each = keyword_seconds(cfg, "small", 30, 48, samples=1)
    assert each - once == pytest.approx(30 * prompt * (1 - 1 / 5) / 100.0)


def test_the_keyword_prompt_measured_replaces_the_expert_prompt():
    cfg = cpu_pool()
    short = replace(cfg, models=(replace(cfg.model("small"), keywords_prompt_tokens=100.0), cfg.model("other")))
    prompt = cfg.model_tokens("small").expert_prompt
    assert keyword_seconds(cfg, "small", 10, 48) - keyword_seconds(short, "small", 10, 48) == \
        pytest.approx(10 * (prompt - 100.0) / 100.0)


def test_a_devices_first_load_waits_for_its_worker():
    cfg = cpu_pool(devices=2)
    a = Assignment(("small", "other"), np.array([[0, 1], [1, 0], [0, 1]]))
    base = plan(a, cfg, optimize_s=0)
    started = plan(a, replace(cfg, engine=cfg.engine.model_copy(update={"worker_start_s": 7.0})), optimize_s=0)
    assert base.timeline is not None and started.timeline is not None
    t0, t1 = base.timeline, started.timeline
    assert started.makespan == pytest.approx(base.makespan + 7.0)
    firsts = {int(np.flatnonzero(base.arrays.device == d)[0]) for d in np.unique(base.arrays.device)}
    assert firsts and all(base.arrays.kind_of(s) == StepKind.LOAD for s in firsts)
    for s in range(base.n_steps):  # everything moves by the start; each first load begins at 0 and takes it in
        assert t1.end[s] == pytest.approx(t0.end[s] + 7.0)
        assert t1.start[s] == pytest.approx(0.0 if s in firsts else t0.start[s] + 7.0)
    # A run measures the wait inside each device's first load: so does the load group.
    assert plan_step_groups([started])["load"] == pytest.approx(plan_step_groups([base])["load"] + 7.0 * len(firsts))


def test_the_profile_gives_the_worker_start_and_the_prefill_of_the_engines_share(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMOE_PROFILES", str(tmp_path / "profiles"))
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    cfg = cpu_pool()
    p = profile.load("cpu")
    p.models[profile.model_key(cfg.model("small"))] = profile.ModelProfile(worker_start_s=6.0, prefills={"2": 400.0})
    p.models[profile.model_key(cfg.model("other"))] = profile.ModelProfile(worker_start_s=8.0, prefill_tps=90.0)
    one, note = profile.apply(cfg, profile=p)
    assert one.engine.worker_start_s == pytest.approx(7.0) and "worker start 7.0 s" in note
    assert one.model("small").prefill_tps == 400.0
    assert one.model("other").prefill_tps == 90.0  # a profile from before prefills: its one rate
    two, _ = profile.apply(cfg.with_devices(2), profile=p)  # one core each: half the 2-core rate
    assert two.model("small").prefill_tps == pytest.approx(200.0)
    p.models[profile.model_key(cfg.model("small"))].prefills["1"] = 230.0
    two, _ = profile.apply(cfg.with_devices(2), profile=p)
    assert two.model("small").prefill_tps == 230.0
    again = profile.recalibrated(p.models[profile.model_key(cfg.model("small"))],
                                 profile.ModelProfile(prefills={"2": 410.0}))
    assert again.prefills == {"1": 230.0, "2": 410.0}


def test_prefill_rate_of_a_one_token_batch():
    assert prefill_rate(BatchInfo(4.0, 16, 4000, 16, 2.0)) == pytest.approx(2000.0)
    assert prefill_rate(BatchInfo(4.0, 16, 4000, 16, None)) == pytest.approx(1000.0)
    assert prefill_rate(BatchInfo(0.0, 0, 0, 0, None)) is None


def test_loads_and_worker_starts_are_kept_by_engine_share(tmp_path, monkeypatch):
    # Measured on 2 vCPUs: Qwen2.5-0.5B loaded in 9.7 s on a 2-core engine and 20.9 s on a 1-core one.
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    cfg = cpu_pool()
    mp = profile.ModelProfile(load_s=9.7, worker_start_s=10.0, loads_by_share={"2": 9.7, "1": 20.9},
                              worker_starts={"2": 10.0, "1": 15.5})
    p = profile.load("cpu")
    p.models[profile.model_key(cfg.model("small"))] = mp
    one, _ = profile.apply(cfg, profile=p)
    two, _ = profile.apply(cfg.with_devices(2), profile=p)
    assert (one.load_seconds("small"), one.engine.worker_start_s) == (9.7, 10.0)
    assert (two.load_seconds("small"), two.engine.worker_start_s) == (20.9, 15.5)
    merged = profile.recalibrated(mp, profile.ModelProfile(loads_by_share={"2": 8.0}, worker_starts={"2": 9.0}))
    assert merged.loads_by_share == {"2": 8.0, "1": 20.9} and merged.worker_starts == {"2": 9.0, "1": 15.5}


def test_calibrating_a_two_device_share_measures_both_engines_at_once(tmp_path, monkeypatch):
    import threading

    from symoe.execution import measure

    cfg = cpu_pool(devices=2)
    share = profile.engine_share(cfg)
    both = threading.Barrier(2, timeout=10)  # each device's measurement waits for the other's: at once, or it fails
    seen: list[int] = []

    def fake(cfg_, name, qs, aggregate, log_dir, say, keywords=False, prefill=(), device=0):
        seen.append(device)
        if len(cfg_.devices) > 1:
            both.wait()
        mp = profile.ModelProfile(worker_start_s=10.0 + device, load_s=20.0 + 2 * device, prefill_tps=100.0 * (device + 1),
                                  prefills={share: 100.0 * (device + 1)}, curves={share: [10.0 + device, 20.0 + device]})
        profile.add_lengths(mp, "expert", 256, [5 + device])
        return mp

    monkeypatch.setattr(measure, "measure_model", fake)
    lines: list[str] = []
    mp = measure.measure_together(cfg, "small", [], False, tmp_path, lines.append)
    assert sorted(seen) == [0, 1]
    assert (mp.worker_start_s, mp.load_s, mp.prefill_tps) == (10.5, 21.0, 150.0)
    assert mp.worker_starts[share] == 10.5 and mp.loads_by_share[share] == 21.0 and mp.prefills[share] == 150.0
    assert mp.curves[share] == [10.5, 20.5]
    assert mp.lengths["expert"] == {"256": [5]}  # device 0's answers (the same requests on both)
    assert any("2 engines at once" in line for line in lines)
    seen.clear()
    measure.measure_together(cpu_pool(devices=1), "small", [], False, tmp_path, lines.append)
    assert seen == [0]  # one device: measured alone
