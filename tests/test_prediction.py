"""The whole run predicted (issue 21 item 3): keywords, matching and generation before the run
starts, and summary.json keeping the prediction beside the measurement per stage and step kind.
Fake engines on a scaled clock; no timing is asserted, only that the figures are the cost model's."""

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import symoe.pipeline
from symoe.config.pool import Config
from symoe.execution import RunOptions
from symoe.execution.prediction import (
    STAGES,
    STEP_GROUPS,
    comparison_rows,
    forecast_line,
    keyword_seconds,
    plan_seconds,
    plan_step_groups,
    step_group,
)
from symoe.generation import Sampling
from symoe.generation.fake import FakeEngine, ScaledClock
from symoe.method import embedding_speed
from symoe.method.datasets import Question
from symoe.method.matching import text_key
from symoe.method.routing import Profiles
from symoe.pipeline import RunSettings, Task, run_pipeline
from symoe.planning.plan import Plan, StepKind, simulate
from symoe.planning.planner import plan
from symoe.store import Store

QUIET = RunOptions(progress=False, pictures=False)
SAMPLING = Sampling(max_tokens=64, aggregate_max_tokens=64, seed=1)
OPTIONS = "\n".join(f"({c}) option {c}" for c in "ABCDEFGHIJ")
PROFILES = Profiles.from_dict({"org/a": {"algebra": 2}, "org/b": {"law": 3}, "org/c": {"law": 1}},
                              accuracy={"org/a": 0.5, "org/b": 0.7, "org/c": 0.2})
TASK = Task("t", "org/c", "org/a")


def pool() -> Config:
    # Hub ids on a GPU platform: no folder is checked, and the fake engine loads nothing.
    return Config.from_dict({"devices": {"memory_gb": 80.0, "count": 2},
                             "model": [{"name": f"org/{m}", "weight_gb": 1.0} for m in ("a", "b", "c")]})


def questions(n=6):
    return [Question(f"q{i}", f"Question {i}?\n{OPTIONS}", "A", "letter", f"cat{i % 2}") for i in range(n)]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Machine figures in a fresh cache (nothing read from the user's)."""
    monkeypatch.setenv("SYMOE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def engines(cfg):
    clock = ScaledClock(0)
    return [FakeEngine(d, cfg, clock) for d in range(len(cfg.devices))]


def routed_without_models(monkeypatch):
    """Keywords as if generated and matched (no keyword model, no embedder)."""
    monkeypatch.setattr(symoe.pipeline, "annotate", lambda qs, *a, **k: {q.id: ["law", "algebra"] for q in qs})
    monkeypatch.setattr(symoe.pipeline, "Embedder", lambda *a, **k: None)
    monkeypatch.setattr(symoe.pipeline, "match_keywords", lambda kws, *a, **k: dict(kws))


def run(tmp_path, **kw):
    with Store(tmp_path / "s.sqlite") as store:
        res = run_pipeline(questions(), pool(), PROFILES, TASK, store, tmp_path / "out",
                           RunSettings.of(pool(), sampling=SAMPLING, options=QUIET, **kw), engines=engines, clock=ScaledClock(0))
    return res, json.loads((tmp_path / "out" / "summary.json").read_text())["prediction"]


def test_summary_keeps_every_stage_and_step_kind_predicted_beside_measured(tmp_path, monkeypatch, cache):
    routed_without_models(monkeypatch)
    cfg = pool()
    res, pred = run(tmp_path)
    assert set(pred["stages"]) == set(STAGES) and set(pred["step_kinds"]) == set(STEP_GROUPS)
    for row in [*pred["stages"].values(), *pred["step_kinds"].values(), pred["makespan"], pred["whole_run"]]:
        assert {"predicted_s", "measured_s", "forecast_s"} <= set(row) and row["measured_s"] >= 0
    # Generation: the simulator's time of the plan that ran, its steps per kind and its makespan.
    plan = Plan.from_json(tmp_path / "out" / "plan.json")
    assert pred["stages"]["generation"]["predicted_s"] == pytest.approx(plan_seconds(plan), rel=1e-12)
    assert plan_seconds(plan) == pytest.approx(simulate(res.plan).finish, rel=1e-12) and plan_seconds(plan) > 0
    assert pred["makespan"]["predicted_s"] == pytest.approx(plan.makespan, rel=1e-12)
    groups = plan_step_groups([plan])
    for g in STEP_GROUPS:
        assert pred["step_kinds"][g]["predicted_s"] == pytest.approx(groups[g], rel=1e-12)
    assert groups["load"] > 0 and groups["expert run"] > 0 and groups["aggregate run"] > 0
    # Keywords: 6 questions x 5 samples the store lacked, on the keyword model (load, run, unload),
    # their lengths capped at the samples' new-token cap, each question's prompt prefilled once.
    m = TASK.keyword_model
    n = 6 * SAMPLING.keyword_samples
    assert pred["keyword_requests"] == n
    shared = replace(cfg, models=tuple(replace(x, expert_prompt_tokens=cfg.model_tokens(m).expert_prompt /
                                               SAMPLING.keyword_samples) if x.name == m else x for x in cfg.models))
    run_s = shared.with_max_tokens(SAMPLING.keyword_max_tokens).run_seconds(m, "keywords", n)
    assert run_s < cfg.run_seconds(m, "keywords", n)  # 48 new tokens, not an expert's answer
    assert pred["stages"]["keywords"]["predicted_s"] == pytest.approx(
        cfg.load_seconds(m) + run_s + cfg.model(m).unload_s, rel=1e-12)
    # Matching: the embedder's load and every text at this machine's figure (none measured here yet).
    speed = embedding_speed.load_speed()
    assert speed.texts == 0 and pred["embedding"]["seconds_per_text"] == speed.seconds_per_text
    assert pred["stages"]["matching"]["predicted_s"] == pytest.approx(
        speed.load_s + pred["matching_texts"] * speed.seconds_per_text)
    assert pred["forecast_generation_basis"] == "prior routing" and any("assumed" in x for x in pred["notes"])
    whole = sum(v["predicted_s"] for v in pred["stages"].values())
    assert pred["whole_run"]["predicted_s"] == pytest.approx(whole)
    assert pred["whole_run"]["measured_s"] == pytest.approx(sum(v["measured_s"] for v in pred["stages"].values()))
    assert res.prediction is not None and res.prediction.planned.total == pytest.approx(whole)


def test_a_fixed_baseline_is_forecast_from_its_own_plan(tmp_path, cache):
    res, pred = run(tmp_path, baseline="top-k")
    g = pred["stages"]["generation"]
    assert g["forecast_s"] == pytest.approx(g["predicted_s"], rel=1e-12) and g["predicted_s"] > 0
    assert pred["forecast_generation_basis"] == "plan"
    assert pred["stages"]["keywords"]["predicted_s"] == 0 and pred["stages"]["matching"]["predicted_s"] == 0


def test_skip_agreed_predicts_both_plans(tmp_path, monkeypatch, cache):
    routed_without_models(monkeypatch)
    res, pred = run(tmp_path, skip_agreed=True)
    second = Plan.from_json(tmp_path / "out" / "plan.json")  # aggregation where the experts disagree
    first = plan(res.assignment, pool())                      # the experts alone, run first
    assert pred["stages"]["generation"]["predicted_s"] == pytest.approx(plan_seconds(first) + plan_seconds(second))
    assert plan_seconds(first) > 0


def test_embedding_speed_is_measured_and_kept_per_machine(tmp_path, cache):
    assert embedding_speed.load_speed().source == "unmeasured"
    assert embedding_speed.observe(3, 1.0, 0.5) is None  # too few texts to mean anything
    first = embedding_speed.observe(10, 2.0, 0.6)
    assert first is not None and first.seconds_per_text == pytest.approx(0.2) and first.texts == 10
    # The machine profiles' folder ($SYMOE_PROFILES, a fresh one per test in conftest), never the cache's.
    assert embedding_speed.speed_path().parent == Path(os.environ["SYMOE_PROFILES"])
    assert first.source == str(embedding_speed.speed_path()) and not (cache / "profiles").exists()
    again = embedding_speed.observe(30, 3.0, 0.4)
    assert again is not None and again.seconds_per_text == pytest.approx(5.0 / 40) and again.load_s == pytest.approx(0.5)
    got = embedding_speed.load_speed()
    assert got.texts == 40 and got.seconds_per_text == pytest.approx(0.125) and got.source.endswith(".json")
    embedding_speed.speed_path().write_text("{")
    with pytest.raises(ValueError, match="embedding speed figure .*delete it"):
        embedding_speed.load_speed()


def test_an_unreadable_speed_file_costs_a_warning_not_the_run(tmp_path, monkeypatch, cache, caplog):
    routed_without_models(monkeypatch)
    path = embedding_speed.speed_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{")
    with caplog.at_level(logging.WARNING):
        res, pred = run(tmp_path)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and str(path) in warned[0], warned
    assert pred["embedding"]["seconds_per_text"] == embedding_speed.UNMEASURED.seconds_per_text
    assert embedding_speed.observe(10, 2.0, 0.6) is not None  # a measurement replaces the unreadable file
    assert embedding_speed.load_speed().texts == 10


def test_the_speed_file_is_replaced_from_a_per_process_tmp_file(cache, monkeypatch):
    written = []
    real = Path.replace

    def replace(self, target):
        written.append(self.name)
        return real(self, target)

    monkeypatch.setattr(Path, "replace", replace)
    assert embedding_speed.observe(10, 2.0, 0.6) is not None
    assert written == [embedding_speed.speed_path().with_suffix(f".{os.getpid()}.tmp").name]
    assert [p.name for p in embedding_speed.speed_path().parent.iterdir()] == [embedding_speed.speed_path().name]


def test_only_a_real_embedders_counters_are_observed(cache):
    class Counted:
        encoded, encode_s = 20, 2.0

    assert embedding_speed.observe_embedder(None, 0.3) is None  # a test double: nothing recorded
    assert not embedding_speed.speed_path().exists()
    got = embedding_speed.observe_embedder(Counted(), 0.3)
    assert got is not None and got.seconds_per_text == pytest.approx(0.1) and got.load_s == pytest.approx(0.3)


def test_uncached_counts_what_the_embeddings_file_lacks(tmp_path):
    path = tmp_path / "emb.npz"
    assert embedding_speed.uncached(path, ["law", "law", "physics"]) == 2
    np.savez(path, **{text_key("law"): np.zeros(3, dtype=np.float32)})
    assert embedding_speed.uncached(path, ["law", "physics", "biology"]) == 2


def test_the_keyword_stage_is_predicted_at_the_keyword_cap():
    # A keyword model with its own long max_tokens still answers keyword requests in at most
    # keyword_max_tokens (48) new tokens (method/requests.py): its forecast too.
    own = Config.from_dict({"devices": {"memory_gb": 80.0, "count": 2},
                            "model": [{"name": "org/a", "weight_gb": 1.0, "max_tokens": 4000}]})
    plain = pool()
    cap = SAMPLING.keyword_max_tokens
    assert keyword_seconds(own, "org/a", 30, cap) == pytest.approx(keyword_seconds(plain, "org/a", 30, cap), rel=1e-12)
    assert keyword_seconds(own, "org/a", 30, cap) < own.run_seconds("org/a", "keywords", 30)


def test_the_forecast_is_planned_once_for_the_run_it_describes(tmp_path, monkeypatch, cache):
    # symoe run prints SymbolicMoE.forecast and then runs: the run reuses that forecast (its prior
    # routing planned once), and a run of other settings makes its own.
    import symoe.moe

    made = []
    real = symoe.pipeline.predict_run
    monkeypatch.setattr(symoe.pipeline, "predict_run", lambda *a, **k: made.append(1) or real(*a, **k))
    moe = symoe.moe.SymbolicMoE(pool(), PROFILES, TASK, store=tmp_path / "s.sqlite", engines=engines, clock=ScaledClock(0),
                                settings=RunSettings.of(pool(), sampling=SAMPLING, options=QUIET, baseline="top-k"))
    qs = questions()
    told = moe.forecast(qs, tmp_path / "out")
    res = moe.run(qs, tmp_path / "out")
    assert len(made) == 1 and res.prediction is not None and res.prediction.forecast == told
    moe.run(qs, tmp_path / "out", baseline="random")  # not the forecast's settings: its own
    assert len(made) == 2


def test_step_groups():
    K = StepKind
    assert [step_group(k, r) for k, r in ((K.LOAD, None), (K.RUN, "expert"), (K.RUN, "aggregate"), (K.PARK, None),
                                          (K.WAKE, None), (K.UNLOAD, None), (K.PAUSE, None))] == \
        ["load", "expert run", "aggregate run", "park/wake/unload", "park/wake/unload", "park/wake/unload", "pause"]


def test_forecast_line_and_comparison_rows(tmp_path, monkeypatch, cache):
    routed_without_models(monkeypatch)
    res, pred = run(tmp_path)
    c = res.prediction
    line = forecast_line(c.forecast)
    assert line.startswith(f"predicted {c.forecast.total / 60:.1f} min: keywords ") and "(prior routing)" in line
    rows = {r[0].strip(): r[1:] for r in comparison_rows(c)}
    assert rows["generation"][1] == pred["stages"]["generation"]["predicted_s"]
    assert rows["whole run"] == [pred["whole_run"][x] for x in ("forecast_s", "predicted_s", "measured_s")]
    assert {"load", "expert run", "aggregate run", "makespan"} <= set(rows)
