"""The machine profile (issue 21 item 2): measured figures applied to a pool, runs adding their
observations, `symoe calibrate --show`, and the measurement helpers (no engine: the real
measurement is `symoe calibrate`, run by hand)."""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace

import pytest
from click.testing import CliRunner

from symoe.cli import main
from symoe.config import profile
from symoe.config.pool import GB, Config
from symoe.execution.calibration import observe
from symoe.execution.measure import curve_batches, curve_point, kv_tokens, load_phases
from symoe.execution.report import RunReport, StepRecord
from symoe.generation.engine import BatchInfo
from symoe.planning.steps import StepKind
from symoe.records import Generation
from symoe.store import Store

POOL = """
[engine]
platform = "cpu"
max_tokens = 256
[devices]
memory_gb = 8.0
[defaults]
load_bandwidth_gbps = 0.5
init_s = 4.0
[[model]]
name = "small"
weight_gb = 1.0
[[model]]
name = "other"
weight_gb = 2.0
"""


def pool(tmp_path) -> Config:
    (tmp_path / "pool.toml").write_text(POOL)
    return Config.from_toml(tmp_path / "pool.toml")


def measured(cfg: Config) -> profile.Profile:
    p = profile.load(cfg.engine.platform)
    mp = profile.ModelProfile(start_s=3.0, read_gbps=0.25, init_s=1.0, load_s=9.0, prefill_tps=500.0,
                              curves={"2": [10.0, 25.0, 30.0, 20.0]}, kv_tokens=6000)  # noisy: faster than 2x, then slower
    profile.add_lengths(mp, "expert", 256, list(range(10, 250, 10)))
    p.models[profile.model_key(cfg.model("small"))] = mp
    return p


def test_profile_figures_replace_the_configs(tmp_path, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)  # one device: both cores
    cfg = pool(tmp_path)
    p = measured(cfg)
    profile.save(p)
    got, note = profile.apply(cfg)  # read back from $SYMOE_PROFILES
    small = got.model("small")
    assert got.load_seconds("small") == pytest.approx(3.0 + 1.0 * GB / 0.25e9 + 1.0)
    assert small.decode_curve == (10.0, 20.0, 30.0, 30.0)  # made valid: at most doubling, never slower
    assert small.prefill_tps == 500.0
    assert small.max_seqs == 6000 // (300 + 256)  # the KV cache holds that many expert requests at the run's cap
    assert small.expert_output_quantiles is not None and len(small.expert_output_quantiles) == 16
    other = got.model("other")  # not in the profile: the config's figures (lengths capped at the run's 256)
    assert (other.load_s, other.decode_curve, other.expert_output_tokens) == (cfg.model("other").load_s, None, 256)
    assert "small (load, prefill_tps, decode_curve, max_seqs, lengths)" in note and "other: all" in note
    # A run at 48 new tokens caps the lengths observed at 256 (seeded: the first 48 tokens are the same).
    capped, _ = profile.apply(cfg, max_tokens=48, profile=p)
    assert max(capped.model("small").expert_output_quantiles or ()) == 48
    assert capped.run_seconds("small", "expert", 8) < got.run_seconds("small", "expert", 8)
    # Aggregate lengths are capped by the aggregate cap, not the expert one (review 14 #4).
    profile.add_lengths(p.models[profile.model_key(cfg.model("small"))], "aggregate", 512, [100, 300, 500])
    both, _ = profile.apply(cfg, max_tokens=48, aggregate_max_tokens=512, profile=p)
    assert both.model("small").aggregate_output_quantiles == (100.0, 300.0, 500.0)
    assert max(both.model("small").expert_output_quantiles or ()) == 48
    # Two CPU devices on this host: each engine has one core; no curve measured there: the 2-core one scaled.
    two, note = profile.apply(cfg.with_devices(2), profile=p)
    assert two.model("small").decode_curve == (5.0, 10.0, 15.0, 15.0)
    assert "decode_curve scaled from 2 to 1 cores" in note


def test_lengths_for_a_higher_cap_fall_back_to_all():
    mp = profile.ModelProfile()
    profile.add_lengths(mp, "expert", 48, [48, 20, 48])
    assert profile.lengths_for(mp, "expert", 256) == [48, 20, 48]  # the best there is
    profile.add_lengths(mp, "expert", 512, [300, 100])
    assert profile.lengths_for(mp, "expert", 256) == [256, 100]    # only those generated with a cap >= 256


def test_no_profile_says_so(tmp_path):
    got, note = profile.apply(pool(tmp_path))
    assert "all from the config" in note and got.load_seconds("small") == pytest.approx(4.0 + 2.0)


def test_runs_add_observations_once(tmp_path):
    cfg = pool(tmp_path)
    steps = [StepRecord(0, 0, StepKind.LOAD, "small", 0.0, 7.5, 0.0, 6.0),
             StepRecord(1, 0, StepKind.RUN, "small", 7.5, 20.0, 6.0, 15.0, 4, 400, 1200,
                        {"generated": 4, "role": "expert"})]
    report = RunReport("r", steps, [], 20.0, 15.0, 4, 0)
    with Store(tmp_path / "store.sqlite") as st:
        for i, n in enumerate((50, 100, 120, 130)):
            st.put(Generation(f"k{i}", "small", f"q{i}", "expert", 0, json.dumps({"max_tokens": 256}), "x", 300, n,
                              "stop"))
        path = observe(cfg, report, st)
        observe(cfg, report, st)
    mp = profile.Profile.model_validate_json(path.read_text()).models[profile.model_key(cfg.model("small"))]
    assert mp.run_lengths == {"expert": {"256": [50, 100, 120, 130]}}  # the store's, not added twice
    assert mp.loads == [7.5, 7.5]
    assert (mp.runs[0].n, mp.runs[0].prompt_tokens, mp.runs[0].tokens, mp.runs[0].seconds, mp.runs[0].role) == \
        (4, 1200, 400, 12.5, "expert")
    got, note = profile.apply(cfg)
    assert got.load_seconds("small") == 7.5 and got.model("small").expert_output_quantiles == (50, 100, 120, 130)


def test_calibrate_show(tmp_path):
    cfg = pool(tmp_path)
    profile.save(measured(cfg))
    r = CliRunner().invoke(main, ["calibrate", "--config", str(tmp_path / "pool.toml"), "--show"])
    assert r.exit_code == 0, r.output
    assert "machine profile" in r.output and "small@" in r.output and "10 25 30 20" in r.output
    assert "cost figures from the machine profile" in r.output


def test_load_phases_from_vllm_log(tmp_path):
    log = tmp_path / "w.log"
    log.write_text("INFO [default_loader.py:291] Loading weights took 1.84 seconds\n"
                   "INFO [core.py:98] init engine (profile, create kv cache, warmup model) took 6.20 seconds\n")
    assert load_phases(log) == (1.84, 6.2) and kv_tokens(log) is None
    log.write_text("INFO [kv_cache_utils.py:2327] CPU KV cache size: 23,296 tokens, Maximum concurrency ...\n")
    assert kv_tokens(log) == 23296
    log.write_text("nothing timed\n")
    assert load_phases(log) is None


def test_curve_batches_reach_the_cores_curve_on_gpu():
    """On a GPU the curve is measured up to min(128, what the KV cache holds) sequences (review 14 #6)."""
    assert curve_batches("cpu", 10**6) == (1, 2, 4, 8, 16)
    assert curve_batches("gpu", None) == (1, 2, 4, 8, 16, 32, 64, 128)
    assert curve_batches("gpu", 40 * 88) == (1, 2, 4, 8, 16, 32)
    assert curve_batches("gpu", 10) == (1,)


def test_curve_point():
    # 4 sequences x 24 tokens: the first token after 0.5 s (prefill of 400 prompt tokens), 23 more steps in 2.3 s
    rate, prefill = curve_point(4, BatchInfo(2.8, 96, 400, 4, 0.5), 24)
    assert rate == pytest.approx(4 * 23 / 2.3) and prefill == pytest.approx(800.0)


def test_pool_toml_keeps_profile_figures(tmp_path):
    got, _ = profile.apply(pool(tmp_path), profile=measured(pool(tmp_path)))
    again = Config.from_dict(tomllib.loads(got.to_toml()))
    assert again.run_seconds("small", "expert", 5) == pytest.approx(got.run_seconds("small", "expert", 5))


def test_runs_seen_rescale_the_curve(tmp_path):
    """Runs that took twice what the measured curve predicts halve its rates (from 3 runs on)."""
    cfg = pool(tmp_path)
    p = measured(cfg)
    mp = p.models[profile.model_key(cfg.model("small"))]
    base, _ = profile.apply(cfg, profile=p)
    share = profile.engine_share(cfg)
    for n in (2, 4, 8):
        want = base.run_seconds("small", "expert", n)  # lengths as profiled: the same mean
        mean = sum(base.model("small").expert_output_quantiles or ()) / 16
        overhead = base.model("small").overhead_s
        mp.runs.append(profile.RunSeen(n=n, prompt_tokens=300 * n, tokens=round(mean * n),
                                       seconds=overhead + 2 * (want - overhead), role="expert", share=share,
                                       run=f"run{n}"))
        got, note = profile.apply(cfg, profile=p)
        if len(mp.runs) < 3:
            assert got.model("small").decode_curve == base.model("small").decode_curve
    assert got.model("small").decode_curve == pytest.approx(tuple(x / 2 for x in base.model("small").decode_curve or ()),
                                                            rel=0.02)
    assert "rates x0.50 from 3 runs seen" in note


def test_rescaling_counts_runs_on_this_share_and_disregards_outliers(tmp_path):
    """Three generate steps of one run are one run seen; other shares' runs are not counted in the
    note; a median beyond FACTOR_RANGE is disregarded, not clipped (review 14 #14)."""
    cfg = pool(tmp_path)
    p = measured(cfg)
    mp = p.models[profile.model_key(cfg.model("small"))]
    base, _ = profile.apply(cfg, profile=p)
    share = profile.engine_share(cfg)
    mean = sum(base.model("small").expert_output_quantiles or ()) / 16
    overhead = base.model("small").overhead_s

    def seen(n: int, slower: float, run: str, on: str = share) -> profile.RunSeen:
        want = base.run_seconds("small", "expert", n)
        return profile.RunSeen(n=n, prompt_tokens=300 * n, tokens=round(mean * n), seconds=overhead + slower * (want - overhead),
                               role="expert", share=on, run=run)

    mp.runs = [seen(n, 2.0, "one") for n in (2, 4, 8)] + [seen(4, 2.0, f"x{i}", "other-share") for i in range(5)]
    got, note = profile.apply(cfg, profile=p)
    assert got.model("small").decode_curve == base.model("small").decode_curve and "runs seen" not in note
    mp.runs += [seen(n, 2.0, f"r{n}") for n in (2, 4)]
    got, note = profile.apply(cfg, profile=p)
    assert "rates x0.50 from 3 runs seen" in note
    mp.runs = [seen(n, 10.0, f"r{n}") for n in (2, 4, 8)]  # ten times the figures: other conditions
    got, note = profile.apply(cfg, profile=p)
    assert got.model("small").decode_curve == base.model("small").decode_curve and "runs seen" not in note


def test_recalibrate_keeps_what_runs_saw_and_measures_the_tasks_aggregator(tmp_path, monkeypatch):
    """symoe calibrate --task: aggregate lengths for that task's aggregator; a second calibration
    keeps runs, loads and run lengths, and trimming keeps the new lengths (review 14 #5)."""
    cfg = pool(tmp_path)
    calls: list[tuple[str, bool]] = []

    def fake_measure(cfg_, name, qs, aggregate, log_dir, say, keywords=False, prefill=()):  # no engine: measure_model's figures
        calls.append((name, aggregate, keywords))
        mp = profile.ModelProfile(load_s=5.0, curves={"2": [10.0, 20.0]})
        profile.add_lengths(mp, "expert", 256, [7] * profile.MAX_LENGTHS)
        return mp

    monkeypatch.setattr("symoe.execution.measure.measure_model", fake_measure)
    monkeypatch.setattr("symoe.cli.calibrate.load_questions", lambda *a, **k: [])
    timed: list[int] = []
    monkeypatch.setattr("symoe.cli.calibrate.measure_embedding", lambda texts: timed.append(len(texts)))
    (tmp_path / "task.json").write_text(json.dumps({"name": "t", "aggregator": "other", "keyword_model": "small"}))
    p = profile.load(cfg.engine.platform)
    key = profile.model_key(cfg.model("small"))
    old = profile.ModelProfile(loads=[7.5], run_lengths={"expert": {"256": [50]}}, curves={"1": [4.0]},
                               runs=[profile.RunSeen(n=2, prompt_tokens=600, tokens=100, seconds=3.0, role="expert",
                                                     share="2")])
    profile.add_lengths(old, "expert", 256, [99] * 10)
    p.models[key] = old
    profile.save(p)
    args = ["calibrate", "--config", str(tmp_path / "pool.toml"), "--task", str(tmp_path / "task.json"),
            "--log-dir", str(tmp_path / "logs")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert sorted(calls) == [("other", True, False), ("small", False, True)]  # the keyword model's samples too
    assert timed == [128]  # and the embedder, on profile keywords
    mp = profile.load(cfg.engine.platform).models[key]
    assert (mp.loads, mp.run_lengths, len(mp.runs), mp.load_s) == ([7.5], {"expert": {"256": [50]}}, 1, 5.0)
    assert mp.curves == {"1": [4.0], "2": [10.0, 20.0]}
    assert mp.lengths["expert"]["256"] == [7] * profile.MAX_LENGTHS  # the new ones kept, the old trimmed


def test_keyword_lengths_time_the_keyword_stage(tmp_path):
    # Keyword samples are short (a list of skills), the keyword model's expert answers long: the
    # keyword stage's forecast uses the samples' own measured lengths, kept through a pool file.
    from symoe.execution.prediction import keyword_seconds

    cfg = pool(tmp_path)
    p = measured(cfg)
    without, _ = profile.apply(cfg, profile=p)
    profile.add_lengths(p.models[profile.model_key(cfg.model("small"))], "keywords", 48, [8, 12, 16, 20])
    got, _ = profile.apply(cfg, profile=p)
    assert got.model("small").keywords_output_quantiles == (8.0, 12.0, 16.0, 20.0)
    assert got.model("small").expert_output_quantiles == without.model("small").expert_output_quantiles
    expert_like = keyword_seconds(without, "small", 30, 48)
    short = keyword_seconds(got, "small", 30, 48)
    assert short < expert_like
    drain = replace(got.model("small"), expert_output_quantiles=(8.0, 12.0, 16.0, 20.0), max_tokens=None)
    assert short == pytest.approx(got.load_seconds("small") + replace(got, models=(drain, *got.models[1:]))
                                  .with_max_tokens(48).run_seconds("small", "expert", 30) + got.model("small").unload_s)
    again = Config.from_dict(tomllib.loads(got.to_toml()))
    assert again.model("small").keywords_output_quantiles == (8.0, 12.0, 16.0, 20.0)
