"""Scheduler overhead with the fake engine at zero latency (engines take no time, so what is
measured is the scheduler and the store): 100,000 generations over 16 devices, and a plan of many
one-item steps for the per-step cost; beside them, the store's raw commit rate.

    pytest bench/test_bench_scheduler.py -s --benchmark-group-by=group
"""

import tempfile
from pathlib import Path

import numpy as np
import pytest

import symoe
from symoe.execution import RunOptions, run_plan
from symoe.generation import Generation, Sampling
from symoe.generation.fake import FakeEngine, ScaledClock
from symoe.method.datasets import Question
from symoe.method.workloads import category_keywords, skewed_profiles
from symoe.store import Store

PAPER = symoe.Config.bundled("paper16")
AGG = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"


def workload(n):
    rng = np.random.default_rng(0)
    cats = [f"c{i}" for i in range(14)]
    qc = [cats[i] for i in rng.integers(0, 14, n)]
    qs = [Question(f"q{i}", f"Question {i}?\n(A) yes\n(B) no", "A", "letter", c) for i, c in enumerate(qc)]
    a = symoe.route(skewed_profiles(PAPER.names, cats), category_keywords(qc), question_ids=[q.id for q in qs])
    return qs, a


def run_once(p, qs):
    clock = ScaledClock(0)
    engines = [FakeEngine(d, p.config, clock) for d in range(len(p.config.devices))]
    d = Path(tempfile.mkdtemp())
    with Store(d / "store.sqlite") as store:
        return run_plan(p, qs, store, d / "run", Sampling(), options=RunOptions(progress=False, pictures=False),
                        engines=engines, clock=clock)


@pytest.mark.benchmark(group="scheduler")
def test_100k_generations_16_devices(benchmark):
    qs, a = workload(25_000)  # 75,000 expert answers + 25,000 aggregations
    p = symoe.plan(a, PAPER.with_devices(16), aggregator=AGG)
    runs = []
    benchmark.pedantic(lambda: runs.append(run_once(p, qs)), rounds=2, iterations=1)
    n = runs[-1].generated
    assert n == 100_000
    t = min(r.makespan for r in runs)  # the scheduled run itself: lanes, engines (no time), store commits
    total = benchmark.stats.stats.min  # also request building, grading and the report files
    benchmark.extra_info.update(generations=n, steps=p.n_steps, schedule_s=t, per_generation_ms=1e3 * t / n,
                                generations_per_s=n / t)
    print(f"\n100k generations / 16 devices: scheduled in {t:.2f} s: {1e6 * t / n:.1f} us per generation "
          f"({n / t:,.0f} per s), {p.n_steps} steps; {total:.2f} s with request building, grading and report")


@pytest.mark.benchmark(group="scheduler")
def test_per_step_overhead(benchmark):
    qs, a = workload(400)  # naive: a load, a run of one item and an unload per expert slot
    p = symoe.plan(a, PAPER.with_devices(16), aggregator=AGG, strategy="naive")
    runs = []
    benchmark.pedantic(lambda: runs.append(run_once(p, qs)), rounds=2, iterations=1)
    t = min(r.makespan for r in runs)
    benchmark.extra_info.update(steps=p.n_steps, per_step_ms=1e3 * t / p.n_steps)
    print(f"\nnaive plan: {p.n_steps} steps, {runs[-1].generated} generations scheduled in {t:.2f} s: "
          f"{1e3 * t / p.n_steps:.3f} ms per step (its generation included)")


@pytest.mark.benchmark(group="scheduler")
def test_store_commit_rate(benchmark):
    def commits():
        with Store(Path(tempfile.mkdtemp()) / "s.sqlite") as s:
            for i in range(20_000):
                s.put(Generation(f"k{i}", "m", f"q{i}", "expert", 0, "{}", "The answer is (A). " * 20, 300, 600,
                                 "stop", 1.0))

    benchmark.pedantic(commits, rounds=2, iterations=1)
    t = benchmark.stats.stats.min
    benchmark.extra_info["commits_per_s"] = 20_000 / t
    print(f"\nstore alone: {20_000 / t:,.0f} commits per s ({1e6 * t / 20_000:.1f} us each)")
