"""Planner benchmarks.

    pytest bench/test_bench_planning.py -s --benchmark-group-by=group

Prints the paper workload's simulated makespans (naive / reference / symoe on 1 and 4 GPUs, gap to
the lower bound; predictions of the documented cost model in configs/paper16.toml) and times
planning 1,000,000 questions x 16 experts.
"""

from pathlib import Path

import numpy as np
import pytest

import symoe
from symoe.method.workloads import category_keywords, skewed_profiles

AGG = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"


@pytest.fixture(scope="module")
def paper():
    cfg = symoe.Config.bundled("paper16")
    qs = symoe.load_questions("mmlu_pro")
    cats = sorted({q.category for q in qs})
    a = symoe.route(skewed_profiles(cfg.names, cats), category_keywords([q.category for q in qs]))
    return cfg, a


def test_paper_workload_report(paper):
    cfg, a = paper
    used = sum(1 for n in a.counts().values() if n)
    print(f"\nMMLU-Pro test, {len(a)} questions, k=3, {used} experts after the rare filter + aggregator "
          f"(simulated with configs/paper16.toml)")
    print(f"{'devices':>7} {'strategy':>9} {'loads':>5} {'makespan s':>11} {'lower bound':>11} {'gap':>7} {'vs symoe':>8}")
    for d in (1, 4):
        c = cfg.with_devices(d)
        plans = {s: symoe.plan(a, c, aggregator=AGG, strategy=s) for s in ("naive", "reference", "symoe")}
        for s, p in plans.items():
            print(f"{d:>7} {s:>9} {p.timeline.loads:>5} {p.makespan:>11,.0f} {p.lower_bound:>11,.0f} "
                  f"{100 * p.gap:>6.1f}% {p.makespan / plans['symoe'].makespan:>7.2f}x")
    for eff in (0.25, 1 / 3, 0.5, 1.0):
        c = symoe.Config(cfg.models, cfg.with_devices(4).devices, cfg.tokens, eff, cfg.pause_s)
        r = symoe.plan(a, c, aggregator=AGG, strategy="reference").makespan
        s = symoe.plan(a, c, aggregator=AGG).makespan
        print(f"sensitivity: reference tensor-parallel efficiency {eff:.3g}: reference/symoe on 4 GPUs = {r / s:.2f}x")


def test_unequal_devices_report(paper):
    """Devices of unequal memory (issue 12): every strategy plans within each device's memory."""
    cfg, a = paper
    for memory_gb in ((80, 10), (80, 40, 24, 10)):
        devs = tuple(symoe.Device(m * 1e9, True, 512e9) for m in memory_gb)
        c = symoe.Config(cfg.models, devs, cfg.tokens, cfg.tp_efficiency, cfg.pause_s)
        print(f"\ndevices of {', '.join(f'{m} GB' for m in memory_gb)}:")
        plans = {s: symoe.plan(a, c, aggregator=AGG, strategy=s) for s in ("naive", "reference", "symoe")}
        for s, p in plans.items():
            print(f"{s:>9} {p.timeline.loads:>5} loads {p.makespan:>11,.0f} s  bound {p.lower_bound:>9,.0f}  "
                  f"gap {100 * p.gap:6.1f}%  {p.makespan / plans['symoe'].makespan:5.2f}x symoe")


def test_exact_quality_report():
    """The default plan against exact optima of tiny instances (the exhaustive search of
    tests/test_planner_exact.py, run on its own; instances without tensor-parallel speed-up)."""
    import math
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import test_planner_exact as exact

    rows = []
    for seed in exact.SEEDS:
        inst = exact.quality_instance(seed)
        agg = None if inst.agg is None else [inst.cfg.names[g] if g >= 0 else None for g in inst.agg]
        p = symoe.plan(inst.assignment(), inst.cfg, aggregator=agg)
        rows.append((p, exact.optimum(inst, math.inf)[0]))
    r = np.array([p.makespan / opt for p, opt in rows])
    gap = np.array([opt / p.lower_bound for p, opt in rows])
    for name, x in (("default plan / optimum", r), ("optimum / bound", gap)):
        print(f"\n{name:>27}: mean {x.mean():.4f}  p90 {np.quantile(x, 0.9):.4f}  max {x.max():.4f}", end="")
    print(f"\n({len(rows)} instances of 2-5 models, 1-3 devices, 1-3 questions)")


@pytest.fixture(scope="module")
def million():
    cfg = symoe.Config.bundled("paper16")
    rng = np.random.default_rng(0)
    p = np.array([25, 20, 15, 10, 8, 6, 5, 4, 3, 2, 1, 0.4, 0.3, 0.2, 0.05, 0.05])
    experts = rng.choice(16, size=(1_000_000, 3), p=p / p.sum())
    return cfg, symoe.Assignment(cfg.names, experts)


@pytest.mark.benchmark(group="plan-1M")
@pytest.mark.parametrize("devices", [1, 4, 16])
def test_plan_million(benchmark, million, devices):
    cfg, a = million
    c = cfg.with_devices(devices)  # the default plan (the polish runs where the heuristic is not proven within 1%)
    p = benchmark.pedantic(symoe.plan, args=(a, c), kwargs={"aggregator": AGG}, rounds=3, iterations=1)
    benchmark.extra_info["gap"] = p.gap
    assert p.n_steps > 0
