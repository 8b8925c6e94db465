"""Routing 1,000,000 questions x 16 experts x 3-5 keywords, k=3, rare filter on:
C++ core (1 thread, all threads) beside the vectorised NumPy reference, in one run.

    pytest bench/test_bench_routing.py --benchmark-group-by=group
"""

import os

import numpy as np
import numpy_reference
import pytest

import symoe

N, M, V = 1_000_000, 16, 400


@pytest.fixture(scope="module")
def workload():
    rng = np.random.default_rng(0)
    # Skewed profiles: a few experts strong on many keywords, as skill profiling produces.
    prof = rng.integers(-8, 6, size=(M, V)) + (rng.random((M, 1)) * 6).astype(np.int64)
    lengths = rng.integers(3, 6, size=N)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    indices = rng.integers(0, V, size=int(indptr[-1])).astype(np.int64)
    p = symoe.Profiles(tuple(f"m{i}" for i in range(M)), tuple(f"k{j}" for j in range(V)), prof)
    return p, indptr, indices


def test_numpy_reference_agrees(workload):
    p, indptr, indices = workload
    n = 50_000
    ip, ix = indptr[: n + 1], indices[: indptr[n]]
    a = symoe.route(p, (ip, ix), seed=1)
    assert np.array_equal(numpy_reference.route(p.matrix, ip, ix, seed=1), a.experts)


@pytest.mark.benchmark(group="route-1M")
def test_numpy_reference(benchmark, workload):
    p, indptr, indices = workload
    out = benchmark.pedantic(numpy_reference.route, args=(p.matrix, indptr, indices), kwargs={"seed": 1},
                             rounds=3, iterations=1)
    assert out.shape == (N, 3)


@pytest.mark.benchmark(group="route-1M")
@pytest.mark.parametrize("threads", [1, os.cpu_count()], ids=lambda t: f"threads={t}")
def test_core(benchmark, workload, threads):
    p, indptr, indices = workload
    a = benchmark.pedantic(symoe.route, args=(p, (indptr, indices)), kwargs={"seed": 1, "threads": threads},
                           rounds=10, iterations=1, warmup_rounds=1)
    assert a.experts.shape == (N, 3)
