"""The CP-SAT polish (issues 12, 20, 22) against exact optima of tiny instances and random valid plans.

On seeded random instances (heterogeneous device memory, mixed load/generate overlap, sleep mode
and host memory, aggregators, tensor-parallel efficiency, per-model output tokens of unequal
length), with the exhaustive search of tests/test_planner_exact.py as the judge, run on its own
(no plan under test is part of its optimum):
- the polished plan's bound is at most the search's optimum and every plan's makespan;
- the polished plan is valid (core validator), at least its bound, never worse than the
  heuristic's, and within device and host memory at every instant of its predicted timeline;
- the bound also holds for random valid plans with tensor-parallel steps, parks and wakes,
  which the search does not make;
- the polish is reproducible: a budget in the solver's deterministic time, one worker, a fixed
  seed; the same plan twice and in a process pinned to one core;
- a relaxation above a valid plan's makespan is an error, never a zero gap.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

import symoe
from symoe import Config, _core
from symoe.planning.polish import polish
from test_planner_exact import Instance, check_memory_timeline, optimum, random_instance, random_tp_plan

EPS = 1e-9
BUDGET = 0.5  # deterministic seconds per polish; tiny instances are solved (or proven) long before


def unequal_tokens(inst: Instance, rng: np.random.Generator) -> Instance:
    """The instance with some models writing several times the others' output (reasoning models)."""
    t = inst.cfg.tokens
    models = tuple(replace(m, expert_output_tokens=t.expert_output * f, aggregate_output_tokens=t.aggregate_output * f)
                   if (f := float(rng.choice([1.0, 1.0, 3.0, 8.0]))) != 1.0 else m for m in inst.cfg.models)
    cfg = Config(models, inst.cfg.devices, t, inst.cfg.tp_efficiency, inst.cfg.pause_s)
    return Instance(cfg, inst.experts, inst.agg)


def solve(seed: int):
    rng = np.random.default_rng(10_000 + seed)
    inst = unequal_tokens(random_instance(rng), rng)
    plans = {s: inst.plan(s) for s in ("symoe", "reference", "naive")}
    r = polish(plans["symoe"], BUDGET)
    opt, seqs = optimum(inst, math.inf)  # the search alone: no plan under test takes part
    assert seqs is not None
    return inst, plans, r, opt


SEEDS = range(200)


@pytest.fixture(scope="module")
def suite():
    return [solve(seed) for seed in SEEDS]


def test_bound_below_optimum_and_plan_above_bound(suite):
    for inst, plans, r, opt in suite:
        q = r.plan
        assert q.lower_bound <= opt * (1 + EPS), (inst.cfg, inst.experts, inst.agg, q.lower_bound, opt)
        for p in plans.values():  # plans the search does not make (tensor-parallel steps) too
            assert q.lower_bound <= p.makespan * (1 + EPS)
        assert q.lower_bound >= plans["symoe"].lower_bound  # never weaker than the core's bound
        assert q.makespan >= q.lower_bound * (1 - EPS)
        assert q.makespan <= plans["symoe"].makespan * (1 + EPS)
        assert r.optimal == (q.makespan <= q.lower_bound * (1 + 1e-9))


def test_polished_plans_are_valid_and_within_memory(suite):
    improved = 0
    for inst, _plans, r, _opt in suite:
        q = r.plan
        q.validate()  # the core's validator and simulator, then aggregation after its experts
        check_memory_timeline(q)
        again = _core.simulate({"devices": inst.D, **q.arrays.as_dict()}, **inst.args())
        assert again["makespan"] == pytest.approx(q.makespan, rel=1e-12)
        improved += r.improved
    assert improved >= 5  # the solver's plans do replace heuristic ones


def test_quality_against_the_optimum(suite):
    def stats(x):
        return f"mean {x.mean():.4f}, p90 {np.quantile(x, 0.9):.4f}, max {x.max():.4f}"

    heur = np.array([plans["symoe"].makespan / opt for inst, plans, r, opt in suite])
    pol = np.array([r.plan.makespan / opt for inst, plans, r, opt in suite])
    gap = np.array([opt / r.plan.lower_bound for inst, plans, r, opt in suite])
    print(f"\nover {len(suite)} tiny instances: heuristic / optimum {stats(heur)}; polished / optimum {stats(pol)}; "
          f"optimum / polished bound {stats(gap)}")
    assert (pol <= heur * (1 + EPS)).all()
    # The search makes no tensor-parallel steps: below 1 where they pay. README: mean 1.000, max 1.05.
    assert pol.mean() < 1.01 and pol.max() < 1.10
    # Above the true optimum/bound where tensor parallelism pays (tests/test_planner_exact.py
    # measures the bound without it).
    assert gap.mean() < 1.25 and (gap >= 1 - EPS).all()


def test_bound_below_random_valid_plans():
    # Tensor-parallel steps, reloads, parks and wakes: plans the search does not make.
    rng = np.random.default_rng(11)
    checked = 0
    for _ in range(300):
        inst = unequal_tokens(random_instance(rng, devices=int(rng.integers(2, 4))), rng)
        arrays = random_tp_plan(inst, rng)
        try:
            t = _core.simulate({"devices": inst.D, **arrays}, **inst.args())
        except ValueError:
            continue
        r = polish(inst.plan("symoe"), BUDGET)
        assert r.plan.lower_bound <= t["makespan"] * (1 + EPS), (inst.cfg, arrays, r.relaxation_bound, t["makespan"])
        checked += 1
        if checked == 60:
            break
    assert checked >= 30


def test_large_workload_is_modelled_per_model_and_device():
    # 20,000 questions: the models' size depends on models x devices only; the plan stays valid.
    cfg = Config.bundled("paper16").with_devices(4)
    experts = np.random.default_rng(0).integers(0, 16, size=(20_000, 3))
    a = symoe.Assignment(cfg.names, experts)
    p = symoe.plan(a, cfg, aggregator="deepseek-ai/DeepSeek-R1-Distill-Llama-8B", optimize_s=0)
    r = polish(p, 1.0)
    r.plan.validate()
    assert p.lower_bound <= r.plan.lower_bound <= r.plan.makespan <= p.makespan * (1 + EPS)
    assert math.isfinite(r.relaxation_bound)


def test_plan_option_and_round_trip(tmp_path):
    cfg = Config.bundled("paper16").with_devices(2)
    a = symoe.Assignment(cfg.names, np.random.default_rng(1).integers(0, 16, size=(300, 3)))
    p = symoe.plan(a, cfg, aggregator="microsoft/Phi-3.5-mini-instruct", optimize_s=0.5)
    h = symoe.plan(a, cfg, aggregator="microsoft/Phi-3.5-mini-instruct", optimize_s=0)
    assert h.lower_bound <= p.lower_bound <= p.makespan <= h.makespan * (1 + EPS)
    q = symoe.Plan.from_json_text(p.to_json())  # the proven bound survives the plan file
    assert q.lower_bound == p.lower_bound and q.gap == p.gap
    with pytest.raises(ValueError, match="optimize_s"):
        symoe.plan(a, cfg, optimize_s=-1)
    with pytest.raises(ValueError, match="positive time budget"):
        polish(h, 0)


def test_cli_optimize_flag(tmp_path):
    import json

    from click.testing import CliRunner

    from symoe.cli import main

    cfg = Config.bundled("paper16")
    a = symoe.Assignment(cfg.names, np.random.default_rng(2).integers(0, 16, size=(50, 3)))
    a.save(tmp_path / "a.jsonl")
    out = {}
    for secs in ("0", "0.5"):
        r = CliRunner().invoke(main, ["plan", "--assignment", str(tmp_path / "a.jsonl"), "--config", "paper16",
                                      "--devices", "2", "--optimize", secs, "--out", str(tmp_path / f"p{secs}.json")])
        assert r.exit_code == 0, r.output
        out[secs] = json.loads((tmp_path / f"p{secs}.json").read_text())["metrics"]
    assert out["0.5"]["lower_bound_s"] >= out["0"]["lower_bound_s"]
    assert out["0.5"]["predicted_makespan_s"] <= out["0"]["predicted_makespan_s"] * (1 + EPS)
    r = CliRunner().invoke(main, ["plan", "--assignment", str(tmp_path / "a.jsonl"), "--config", "paper16",
                                  "--optimize", "-1"])
    assert r.exit_code == 2 and "--optimize" in r.output


def test_pairs_small_with_large_models_under_tight_memory():
    # 30 GB: one 20 GB model and one 8 GB model fit together, two large ones do not. Loading the
    # next small model beside each large one (and the reverse) hides loads the heuristic leaves
    # in series; the polish finds the exact optimum.
    from test_planner_exact import model

    tok = symoe.Tokens(100, 100, 100, 100)
    big1, big2, small1, small2 = (model("L1", 20, 20, 10.0), model("L2", 20, 20, 10.0), model("S1", 8, 8, 10.0),
                                  model("S2", 8, 8, 10.0))
    inst = Instance(Config((big1, big2, small1, small2), (symoe.Device(30e9),), tok), [[0, 1], [2, 3]])
    h = inst.plan("symoe")
    opt, _ = optimum(inst, math.inf)
    r = polish(h, 2.0)
    assert h.makespan > opt * 1.1  # the heuristic alone loses
    assert r.plan.makespan == pytest.approx(opt, rel=1e-9)
    check_memory_timeline(r.plan)


def plan_digest(p: symoe.Plan) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in sorted(p.arrays.as_dict()):
        h.update(name.encode() + p.arrays.as_dict()[name].tobytes())
    h.update(repr((p.makespan, p.lower_bound)).encode())
    return h.hexdigest()


REPRO = """
import sys, numpy as np, symoe, os
sys.path.insert(0, {tests!r})
from test_polish import plan_digest, repro_plans
os.sched_setaffinity(0, {{0}})
print(" ".join(plan_digest(p) for p in repro_plans()))
"""


def repro_plans() -> list[symoe.Plan]:
    """Default plans that the polish changes: tiny instances and a 300-question paper16 workload."""
    out = []
    for seed in (34, 63, 105, 185):
        inst = random_instance(np.random.default_rng(seed))
        agg = None if inst.agg is None else [inst.cfg.names[g] if g >= 0 else None for g in inst.agg]
        out.append(symoe.plan(inst.assignment(), inst.cfg, aggregator=agg))
    cfg = Config.bundled("paper16").with_devices(2)
    a = symoe.Assignment(cfg.names, np.random.default_rng(1).integers(0, 16, size=(300, 3)))
    out.append(symoe.plan(a, cfg, aggregator="microsoft/Phi-3.5-mini-instruct", optimize_s=0.5))
    return out


def test_polish_is_reproducible():
    # The same plans twice in this process and once in a process pinned to one core. (Before: a
    # wall-clock budget and an 8-worker portfolio, whose result depends on load and core count.)
    import os
    import subprocess
    import sys

    first = [plan_digest(p) for p in repro_plans()]
    assert first == [plan_digest(p) for p in repro_plans()]
    tests = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", REPRO.format(tests=tests)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == first


def test_relaxation_above_a_valid_plan_is_an_error(monkeypatch):
    # A bound model that claims more than a valid plan's makespan is wrong; clamping it to the
    # makespan (as before) reported a zero gap, hiding the bug.
    import symoe.planning.polish_bound as pb
    from symoe.errors import SymoeError

    inst = random_instance(np.random.default_rng(3))
    h = inst.plan("symoe")
    monkeypatch.setattr(pb, "relaxation_bound", lambda inst, horizon_s, budget, workers: horizon_s * 1.2)
    with pytest.raises(SymoeError, match="exceeds the valid plan's makespan"):
        polish(h, BUDGET)


@pytest.mark.parametrize("optimize_s", [None, 0.0, 0.25])
def test_run_passes_its_polish_budget_to_the_planner(tmp_path, monkeypatch, optimize_s):
    # symoe run --optimize S -> SymbolicMoE.run -> run_pipeline -> plan(optimize_s=S); the default
    # (None) is plan()'s own budget, 0 the heuristic plan alone.
    import symoe.pipeline
    from symoe.store import Store
    from test_evaluation import pipeline, questions

    seen: list = []
    real = symoe.pipeline.plan

    def spy(*args, **kw):
        seen.append(kw.get("optimize_s", "missing"))
        return real(*args, **kw)

    monkeypatch.setattr(symoe.pipeline, "plan", spy)
    with Store(tmp_path / "s.sqlite") as store:
        pipeline(tmp_path, store, questions(4), "run", baseline="top-k", optimize_s=optimize_s)
    assert seen == [optimize_s]


def test_cli_run_optimize_option(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from symoe.cli import main
    from symoe.moe import SymbolicMoE

    got: list = []

    class Stop(RuntimeError):
        pass

    def fake_run(self, qs, out_dir, baseline, skip_agreed, optimize_s=None):
        got.append(optimize_s)
        raise Stop("stop here")

    monkeypatch.setattr(SymbolicMoE, "run", fake_run)
    for args, want in (([], None), (["--optimize", "0"], 0.0), (["--optimize", "1.5"], 1.5)):
        r = CliRunner().invoke(main, ["run", "--limit", "2", "--out", str(tmp_path / "r"), *args])
        assert "stop here" in r.output, r.output
        assert got[-1] == want
    r = CliRunner().invoke(main, ["run", "--optimize", "-1"])
    assert r.exit_code == 2 and "--optimize" in r.output
