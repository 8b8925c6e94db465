"""Tensor-parallel steps (tp > 1): the reference strategy on several devices and the planner's TP
candidate run on fake engines as the plan predicts, step by step; a sharded model holds memory on,
and keeps other generations off, every device of its group; the engines are told the TP size and
the device group (GPU: vLLM's ``tensor_parallel_size`` over the group's GPUs; CPU: one engine on
the union of the group's cores)."""

import dataclasses
import json
import sys
import threading
import types

import numpy as np
import pytest

import symoe
from symoe.execution import RunOptions, run_plan
from symoe.generation import EngineError, ModelSettings, Request, Sampling, SamplingParams
from symoe.generation import device_group as device_group_module
from symoe.generation import local as local_module
from symoe.generation.fake import FakeEngine, ScaledClock, fake_engines
from symoe.generation.local import LocalEngine
from symoe.generation.vllm_server import server_command
from symoe.generation.worker import VllmEngine
from symoe.method.datasets import Question
from symoe.method.routing import Assignment
from symoe.method.workloads import category_keywords, skewed_profiles
from symoe.planning.plan import Plan, PlanArrays, Role, StepKind, simulate
from symoe.store import Store

PAPER = symoe.Config.bundled("paper16")
AGG = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
QUIET = RunOptions(progress=False, pictures=False)
# Measured per-step spread of the scheduler's timing tests on fake engines (tests/test_scheduler.py's
# prefetch plan at 10 real seconds, 3 runs on the shared 2-core machine): every step's start and end
# within 1.0-2.1% of the makespan of its prediction. A reference run on 2 devices (26 steps, 6 real
# seconds) drifted 4.9% by its last step on a quiet machine in CI (wake-up latencies add up along a
# device's steps), so the margin is the scheduler tests' 10%; a TP step timed as tp 1 is off by 23%
# (2 devices) and 58% (4 devices) by the end of a reference run.
STEP_TOLERANCE = 0.10
INF = float("inf")


def questions(n, seed=0):
    rng = np.random.default_rng(seed)
    cats = [f"c{i}" for i in range(14)]
    qcats = [cats[i] for i in rng.integers(0, 14, n)]
    return [Question(f"q{i}", f"Question {i} about {c}?\n(A) yes\n(B) no", "A", "letter", c) for i, c in enumerate(qcats)]


def routed(n, seed=0):
    qs = questions(n, seed)
    cats = sorted({q.category for q in qs})
    a = symoe.route(skewed_profiles(PAPER.names, cats), category_keywords([q.category for q in qs]), seed=seed,
                    question_ids=[q.id for q in qs])
    return qs, a


def run_on_fakes(p, qs, tmp_path, real_seconds):
    clock = ScaledClock(real_seconds / p.makespan)
    engines = fake_engines(p.config, clock)
    store = Store(tmp_path / "store.sqlite")
    try:
        report = run_plan(p, qs, store, tmp_path / "run", Sampling(), options=QUIET, engines=engines, clock=clock)
    finally:
        store.close()
    return report, engines


def check_timeline(p, report):
    """Every step ran, once, within the tolerance of its predicted start and end."""
    assert sorted(r.step for r in report.steps) == list(range(p.n_steps))
    tol = STEP_TOLERANCE * p.makespan
    for r in report.steps:
        assert abs(r.start - r.predicted_start) < tol and abs(r.end - r.predicted_end) < tol, (
            f"step {r.step} ({r.kind.label} {r.model} on device {r.device}): ran {r.start:.1f}-{r.end:.1f}, "
            f"predicted {r.predicted_start:.1f}-{r.predicted_end:.1f} (tolerance {tol:.1f})")
    assert abs(report.makespan / p.makespan - 1) < STEP_TOLERANCE


def tp_plan(case):
    if case.startswith("reference"):
        qs, a = routed(300)
        return qs, symoe.plan(a, PAPER.with_devices(int(case[-1])), aggregator=AGG, strategy="reference")
    # The planner's TP candidate: few questions of one long-writing model on 4 devices, where one
    # sharded copy beats four replicas (no replica's batch beats one sequence decoded alone).
    qs = questions(8)
    a = Assignment((AGG,), np.zeros((len(qs), 1), dtype=np.int64), tuple(q.id for q in qs))
    return qs, symoe.plan(a, dataclasses.replace(PAPER.with_devices(4), tp_efficiency=1.0), aggregator=AGG)


@pytest.mark.parametrize("case", ["reference-2", "reference-4", "planner-tp-4"])
def test_tp_plans_run_as_predicted(case, tmp_path):
    qs, p = tp_plan(case)
    runs = p.arrays.kind == StepKind.RUN
    assert (p.arrays.tp[runs] == len(p.config.devices)).all()  # every run spans every device
    report, engines = run_on_fakes(p, qs, tmp_path, real_seconds=6.0)
    check_timeline(p, report)
    assert report.generated == len(qs) * (p.k + 1)
    # Only the group's first device hosts the models; the others held their shards meanwhile.
    assert all(not e.log for e in engines[1:]) and engines[1].peak_bytes > 0


def mixed_plan():
    """Three devices: a model alone on device 1, then one sharded over devices 0-1 (it waits for
    device 1's run), then a second model of device 1 (loaded meanwhile) runs once the sharded run
    is over; device 2 runs beside them all."""
    names = PAPER.names
    A, B, C, D = (PAPER.index(names[i]) for i in range(4))
    n = 300  # questions 0-296 for the sharded model: its run is long enough to tell tp 2 from tp 1
    experts = np.array([[A]] * (n - 3) + [[C], [B], [D]], dtype=np.int64)
    L, R, U = StepKind.LOAD, StepKind.RUN, StepKind.UNLOAD
    steps = [(L, 1, C, 1, []), (R, 1, C, 1, [n - 3]), (L, 1, D, 1, []), (L, 0, A, 2, []),
             (R, 0, A, 2, list(range(n - 3))), (R, 1, D, 1, [n - 1]), (U, 1, C, 1, []), (U, 1, D, 1, []),
             (U, 0, A, 2, []), (L, 2, B, 1, []), (R, 2, B, 1, [n - 2]), (U, 2, B, 1, [])]
    items, begin, end = [], [], []
    for *_, its in steps:
        begin.append(len(items))
        items += its
        end.append(len(items))
    arrays = PlanArrays.of(dict(kind=np.array([s[0] for s in steps], np.int8), role=np.full(len(steps), Role.EXPERT, np.int8),
                  device=np.array([s[1] for s in steps], np.int32), model=np.array([s[2] for s in steps], np.int32),
                  tp=np.array([s[3] for s in steps], np.int32), item_begin=np.array(begin, np.int64),
                  item_end=np.array(end, np.int64), seconds=np.zeros(len(steps)), items=np.array(items, np.int64)))
    qs = questions(n)
    cfg = dataclasses.replace(PAPER.with_devices(3), tp_efficiency=0.75)
    p = Plan("hand", cfg, experts, None, arrays, question_ids=tuple(q.id for q in qs),
             question_hashes=tuple(q.text_hash for q in qs))
    p.timeline = simulate(p)
    return qs, p


def test_a_sharded_run_holds_its_whole_group(tmp_path):
    qs, p = mixed_plan()
    t = p.timeline
    assert t.start[4] >= t.end[1] and t.start[5] >= t.end[4]  # the plan's own order on device 1
    report, engines = run_on_fakes(p, qs, tmp_path, real_seconds=4.0)
    check_timeline(p, report)
    ran = {r.step: r for r in report.steps}
    assert ran[4].start >= ran[1].end and ran[5].start >= ran[4].end


def requests(model, n):
    params = SamplingParams(0.0, 16, 0)
    return [Request(f"{model}-{i}", model, "expert", 0, f"q{i}", params, prompt="hi") for i in range(n)]


def test_fake_engine_shards_memory_over_the_group():
    cfg = PAPER.with_devices(2, memory_gb=25)
    engines = fake_engines(cfg, ScaledClock(0.0))
    big, small, other = AGG, PAPER.names[3], PAPER.names[0]  # about 24, 16 and 24 GB resident
    s_big = ModelSettings.of(cfg, big).on_devices((0, 1))
    engines[1].load(ModelSettings.of(cfg, small), "load small", INF)
    with pytest.raises(EngineError, match="out of memory on device 1"):  # half of big does not fit beside it
        engines[0].load(s_big, "load big", INF)
    engines[1].unload(small, "unload small", INF)
    engines[0].load(s_big, "load big", INF)
    assert engines[1].used_bytes() == pytest.approx(cfg.model(big).resident_bytes / 2)
    with pytest.raises(EngineError, match="out of memory on device 1"):
        engines[1].load(ModelSettings.of(cfg, other), "load other", INF)
    engines[0].unload(big, "unload big", INF)
    assert engines[1].used_bytes() == 0
    with pytest.raises(EngineError, match="not linked"):  # an engine that cannot see the group refuses it
        FakeEngine(0, cfg, ScaledClock(0.0)).load(s_big, "load big", INF)


def test_fake_engine_sharded_generation_occupies_the_group():
    cfg = PAPER.with_devices(2)
    big, small = AGG, PAPER.names[3]
    engines = fake_engines(cfg, ScaledClock(2.0 / cfg.run_seconds(big, "expert", 4, tp=2)))  # 2 real s
    engines[0].load(ModelSettings.of(cfg, big).on_devices((0, 1)), "load big", INF)
    engines[1].load(ModelSettings.of(cfg, small), "load small", INF)
    started, out = threading.Event(), []
    th = threading.Thread(target=lambda: out.append(engines[0].generate(big, requests(big, 4), lambda g: started.set(),
                                                                        "run big", INF)))
    th.start()
    assert started.wait(30)
    with pytest.raises(EngineError, match="device 1 is generating"):
        engines[1].generate(small, requests(small, 1), lambda g: None, "run small", INF)
    th.join()
    assert out and out[0].generated == 4


class StubWorker:
    """Stands in for the worker process: runs the worker's own EngineArgs building against a stub vLLM."""

    made: list["StubWorker"] = []

    def __init__(self, env, log_path, *args, **kwargs):
        self.env, self.engine, self.proc = dict(env), VllmEngine(), types.SimpleNamespace(poll=lambda: None)
        StubWorker.made.append(self)

    def wait_ready(self, what, deadline):
        pass

    def request(self, msg, what, deadline, on_event=None):
        return self.engine.load(json.loads(json.dumps(msg))["model"])  # as it crosses the pipe

    def kill(self):
        pass


@pytest.fixture
def stub_vllm(monkeypatch):
    seen = []

    class EngineArgs:
        def __init__(self, **kw):
            seen.append(kw)

    vllm = types.SimpleNamespace(EngineArgs=EngineArgs, LLMEngine=types.SimpleNamespace(from_engine_args=lambda a: a))
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setattr(local_module, "Worker", StubWorker)
    monkeypatch.setattr(device_group_module.os, "cpu_count", lambda: 8)
    StubWorker.made = []
    return seen


def test_local_engine_gets_tp_size_and_device_group_on_gpu(stub_vllm, tmp_path):
    cfg = PAPER.with_devices(4)
    assert cfg.engine.platform == "gpu"
    settings = ModelSettings.of(cfg, AGG)
    eng = LocalEngine.for_config(cfg, 2, tmp_path)
    eng.load(settings.on_devices((2, 3)), "load", float("inf"), keep_spare=False)
    assert stub_vllm[-1]["tensor_parallel_size"] == 2
    assert stub_vllm[-1]["gpu_memory_utilization"] == pytest.approx(settings.gpu_memory_utilization / 2)
    assert StubWorker.made[-1].env["CUDA_VISIBLE_DEVICES"] == "2,3"
    eng.load(dataclasses.replace(settings, name="other"), "load one", float("inf"), keep_spare=False)
    assert "tensor_parallel_size" not in stub_vllm[-1] and StubWorker.made[-1].env["CUDA_VISIBLE_DEVICES"] == "2"
    served = server_command(settings.on_devices((2, 3)), 8000)
    assert served[served.index("--tensor-parallel-size") + 1] == "2"


def test_local_engine_runs_a_cpu_group_on_the_union_of_its_cores(stub_vllm, tmp_path):
    cfg = dataclasses.replace(PAPER.with_devices(4), engine=PAPER.engine.model_copy(update={"platform": "cpu"}))
    settings = ModelSettings(AGG, str(tmp_path), platform="cpu").on_devices((2, 3))
    assert settings.tensor_parallel_size == 1 and settings.device_group == (2, 3)
    eng = LocalEngine.for_config(cfg, 2, tmp_path)
    eng.load(settings, "load", float("inf"), keep_spare=False)
    assert "tensor_parallel_size" not in stub_vllm[-1]
    assert StubWorker.made[-1].env["VLLM_CPU_OMP_THREADS_BIND"] == "4-7"  # devices 2 and 3 of 4 on 8 cores
    assert LocalEngine.for_config(cfg, 2, tmp_path).env["VLLM_CPU_OMP_THREADS_BIND"] == "4-5"
