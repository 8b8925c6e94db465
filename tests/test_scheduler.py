"""The scheduler on fake engines (scaled clock): plans of 10,000 questions on 1, 4 and 16 devices
run as predicted, every generation once and stored, aggregation after its experts; faults
(death, hang, garbage, slow) stop the run cleanly or are recovered with retries."""

import json
import multiprocessing
import threading
from collections import Counter

import numpy as np
import pytest

import symoe
from symoe.execution import RunOptions, run_plan
from symoe.generation import EngineError, EngineTimeout, Sampling
from symoe.generation.fake import FakeEngine, Fault, ScaledClock
from symoe.method.datasets import Question
from symoe.method.workloads import category_keywords, skewed_profiles
from symoe.planning.plan import Role, StepKind
from symoe.store import Store

PAPER = symoe.Config.bundled("paper16")
AGG = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
QUIET = RunOptions(progress=False, pictures=False)
SMALL_S = 1.5  # real seconds of a small plan's run: the tests that use it assert no timing, only order and counts
LARGE_S = 25.0  # real seconds of a 10,000-question run (its makespan is checked against the plan's)
CORESIDENT_S = 10.0  # real seconds of a co-residency run (ditto)


def workload(n, seed=0):
    rng = np.random.default_rng(seed)
    cats = [f"c{i}" for i in range(14)]
    qcats = [cats[i] for i in rng.integers(0, 14, n)]
    qs = [Question(f"q{i}", f"Question {i} about {c}?\n(A) yes\n(B) no", "A", "letter", c) for i, c in enumerate(qcats)]
    a = symoe.route(skewed_profiles(PAPER.names, cats), category_keywords(qcats), seed=seed,
                    question_ids=[q.id for q in qs])
    return qs, a


def fake_run(p, qs, tmp_path, real_seconds=SMALL_S, faults=(), options=QUIET, slow=None, engine=FakeEngine):
    # Real time per plan second: the plan's predicted makespan takes about ``real_seconds``.
    clock = ScaledClock(real_seconds / p.makespan)
    engines = [engine(d, p.config, clock, faults if d == 0 else (), (slow or {}).get(d, 1.0))
               for d in range(len(p.config.devices))]
    store = Store(tmp_path / "store.sqlite")
    try:
        report = run_plan(p, qs, store, tmp_path / "run", Sampling(), options=options, engines=engines, clock=clock)
    finally:
        store.close()
    return report, engines


def check_exactly_once_and_ordered(p, qs, engines, tmp_path):
    log = [x for e in engines for x in e.log]
    counts = Counter(x[0] for x in log)
    assert max(counts.values()) == 1  # nothing generated twice
    experts = [x for x in log if x[1] == "expert"]
    aggs = [x for x in log if x[1] == "aggregate"]
    assert len(experts) == len(qs) * p.k and len(aggs) == len(qs)
    assert Counter(x[2] for x in experts) == {q.id: p.k for q in qs}
    done = {}
    for _, _, q, _, finish in experts:
        done[q] = max(done.get(q, 0.0), finish)
    assert all(start >= done[q] for _, _, q, start, _ in aggs)  # each aggregation after its experts
    with Store(tmp_path / "store.sqlite") as s:
        assert s.count("expert") == len(qs) * p.k and s.count("aggregate") == len(qs)


@pytest.mark.parametrize("devices", [1, 4, 16])
def test_large_plans_run_as_predicted(devices, tmp_path):
    qs, a = workload(10_000)
    p = symoe.plan(a, PAPER.with_devices(devices), aggregator=AGG)
    aggregating = {int(d) for d in p.arrays.device[(p.arrays.kind == StepKind.RUN) & (p.arrays.role == Role.AGGREGATE)]}
    raised = []
    old = threading.excepthook
    threading.excepthook = lambda args: raised.append(args)
    try:
        report, engines = fake_run(p, qs, tmp_path, real_seconds=LARGE_S)
    finally:
        threading.excepthook = old
    assert not raised
    check_exactly_once_and_ordered(p, qs, engines, tmp_path)
    assert report.generated == len(qs) * (p.k + 1) and report.reused == 0
    # The run follows the plan's timeline: a scheduler that serialised devices or missed overlaps would
    # be off by far more than the 10% a busy machine's thread wake-ups can add over LARGE_S real seconds.
    assert abs(report.makespan / p.makespan - 1) < 0.10, (report.makespan, p.makespan)
    if devices > 1:  # cross-device aggregation: experts of one question on several devices
        assert len({int(d) for d in p.arrays.device[p.arrays.kind == StepKind.RUN]}) == devices
        assert aggregating


@pytest.mark.parametrize("case", ["prefetch", "naive-sleep"])
def test_coresidency_prefetch_and_evictions(case, tmp_path):
    if case == "prefetch":  # two models resident at once; the next loads while one generates
        qs, a = workload(2_000)
        cfg = PAPER.with_devices(2, memory_gb=50)
        p = symoe.plan(a, cfg, aggregator=AGG)
    else:  # one model fits: every other model is parked (sleep mode) and woken, per question
        qs, a = workload(60)
        cfg = PAPER.with_devices(2, memory_gb=30, host_memory_gb=400).with_sleep(True)
        p = symoe.plan(a, cfg, aggregator=AGG, strategy="naive")
    kinds = Counter(StepKind(k) for k in p.arrays.kind)
    if case == "prefetch":
        assert [StepKind(k) for k in p.arrays.kind[p.arrays.device == 0]][:3] == [StepKind.LOAD, StepKind.LOAD, StepKind.RUN]
    else:
        assert kinds[StepKind.PARK] > 10 and kinds[StepKind.WAKE] > 10
    report, engines = fake_run(p, qs, tmp_path, real_seconds=CORESIDENT_S)
    check_exactly_once_and_ordered(p, qs, engines, tmp_path)
    # The run follows the plan's timeline: a scheduler that serialised devices or missed overlaps would
    # be off by far more than the 10% a busy machine's thread wake-ups can add over CORESIDENT_S real seconds.
    assert abs(report.makespan / p.makespan - 1) < 0.10, (report.makespan, p.makespan)


def small(tmp_path, n=200, devices=2):
    qs, a = workload(n)
    return qs, symoe.plan(a, PAPER.with_devices(devices), aggregator=AGG)


@pytest.mark.parametrize("kind", ["die", "hang", "garbage"])
def test_fault_stops_the_run_cleanly(kind, tmp_path):
    qs, p = small(tmp_path)
    opts = RunOptions(progress=False, pictures=False, deadline_factor=3.0, deadline_margin_s=0.0)
    fault = Fault(kind, after=5)
    with pytest.raises(EngineError) as e:
        fake_run(p, qs, tmp_path, faults=[fault], options=opts)
    msg = str(e.value)
    assert "on device 0" in msg and "run" in msg
    assert msg.startswith("step ") and any(m in msg for m in p.config.names)
    if kind == "hang":
        assert isinstance(e.value, EngineTimeout) and "deadline" in msg
    if kind == "garbage":
        assert "malformed" in msg
    with Store(tmp_path / "store.sqlite") as s:
        kept = s.count()
        assert kept >= 5  # what finished before the fault is stored
    # Rerun without the fault: only what the store lacks is generated.
    report, engines = fake_run(p, qs, tmp_path)
    assert report.reused >= kept and report.generated + report.reused == len(qs) * (p.k + 1)
    assert report.generated == sum(len(e.log) for e in engines)
    check_exactly_once_and_ordered_after_resume(p, qs, tmp_path)


def check_exactly_once_and_ordered_after_resume(p, qs, tmp_path):
    with Store(tmp_path / "store.sqlite") as s:
        assert s.count("expert") == len(qs) * p.k and s.count("aggregate") == len(qs)


class Recording(FakeEngine):
    """A fake engine that also keeps each batch it was asked for: (model, request keys)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = []

    def generate(self, model, requests, on_done, what, deadline):
        self.batches.append((model, [r.key for r in requests]))
        return super().generate(model, requests, on_done, what, deadline)


@pytest.mark.parametrize("kind,op", [("die", "generate"), ("hang", "generate"), ("garbage", "generate"),
                                     ("die", "load")])
def test_retries_recover(kind, op, tmp_path):
    qs, p = small(tmp_path)
    opts = RunOptions(progress=False, pictures=False, deadline_factor=3.0, deadline_margin_s=0.0, retries=2)
    report, engines = fake_run(p, qs, tmp_path, faults=[Fault(kind, op=op, after=7)], options=opts, engine=Recording)
    assert report.retries == 1
    assert report.generated == len(qs) * (p.k + 1)
    check_exactly_once_and_ordered(p, qs, engines, tmp_path)
    calls, e0 = engines[0].calls, engines[0]
    if op == "load":  # the first load failed; the same model was loaded again before it generated anything
        model = calls[0][1]
        assert calls[0] == ("load", model) and ("load", model) in calls[1:]
        assert calls.index(("load", model), 1) < calls.index(("generate", model))
        return
    # The first batch of device 0 failed after 7 generations; the model was loaded again after the
    # fault, and its next batch held exactly the items that were missing: nothing stored was redone.
    model, keys = e0.batches[0]
    failed = calls.index(("generate", model))
    again = calls.index(("generate", model), failed + 1)
    assert ("load", model) in calls[failed + 1:again]
    retried = next(k for m, k in e0.batches[1:] if m == model)
    assert retried == keys[7:]


def test_retries_are_bounded(tmp_path):
    qs, p = small(tmp_path)
    opts = RunOptions(progress=False, pictures=False, retries=2)
    with pytest.raises(EngineError, match="fake death"):
        fake_run(p, qs, tmp_path, faults=[Fault("die", times=3)], options=opts)


def test_slow_device_is_not_a_fault_within_its_deadline(tmp_path):
    qs, p = small(tmp_path)
    report, _ = fake_run(p, qs, tmp_path, slow={1: 1.5})
    assert report.generated == len(qs) * (p.k + 1)
    assert report.makespan > p.makespan * 1.05  # the slow device shows in the measured makespan


def test_resume_reuses_everything(tmp_path):
    qs, p = small(tmp_path, n=100)
    fake_run(p, qs, tmp_path)
    report, engines = fake_run(p, qs, tmp_path)
    assert report.generated == 0 and report.reused == len(qs) * (p.k + 1)
    assert all(not e.log for e in engines)


def test_answers_stored_meanwhile_by_another_run_release_aggregation(tmp_path):
    # Another run on the same store writes device 1's expert answers while this run is under way:
    # they are reused, and the aggregations that wait for them still start (no deadlock).
    from symoe.generation import Generation
    from symoe.method.requests import Requests

    qs, p = small(tmp_path, n=60)
    build = Requests(p.config, Sampling())
    a = p.arrays
    dev1 = [int(i) for s in np.flatnonzero((a.kind == StepKind.RUN) & (a.role == Role.EXPERT) & (a.device == 1))
            for i in a.items[a.item_begin[s]:a.item_end[s]]]
    assert dev1
    other = [build.expert(p.config.names[p.experts[i // p.k, i % p.k]], qs[i // p.k], i % p.k) for i in dev1]
    clock = ScaledClock(SMALL_S / p.makespan)

    class Meanwhile(FakeEngine):
        def generate(self, model, requests, on_done, what, deadline):
            if other:
                with Store(tmp_path / "store.sqlite") as s:
                    for r in other:
                        s.put(Generation.of(r, "another run. The answer is (A)", 1, 1, "stop", 0.0))
                other.clear()
            return super().generate(model, requests, on_done, what, deadline)

    engines = [Meanwhile(0, p.config, clock), FakeEngine(1, p.config, clock)]
    with Store(tmp_path / "store.sqlite") as store:
        r = run_plan(p, qs, store, tmp_path / "run", Sampling(), options=QUIET, engines=engines, clock=clock)
        assert store.count("aggregate") == len(qs)
    assert 0 < r.reused <= len(dev1) and r.generated + r.reused == len(qs) * (p.k + 1)


def one_of_two_runs(i, tmp_path, barrier):
    """One run of test_two_concurrent_runs..., in a process of its own (its own pid, connection
    and clock); what it generated goes to ``run<i>.json``."""
    qs, p = small(tmp_path, n=120)
    clock = ScaledClock(SMALL_S / p.makespan)
    engines = [FakeEngine(d, p.config, clock) for d in range(2)]
    barrier.wait(60)
    with Store(tmp_path / "store.sqlite") as store:
        r = run_plan(p, qs, store, tmp_path / f"run{i}", Sampling(), options=QUIET, engines=engines, clock=clock)
    made = [x[0] for e in engines for x in e.log]
    (tmp_path / f"run{i}.json").write_text(json.dumps({"generated": r.generated, "reused": r.reused, "made": made}))


def test_two_concurrent_runs_on_one_store_generate_each_item_once(tmp_path):
    # Two runs of one plan in two processes at once: claims (pid and start time) keep them apart.
    qs, p = small(tmp_path, n=120)
    Store(tmp_path / "store.sqlite").close()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=one_of_two_runs, args=(i, tmp_path, barrier)) for i in range(2)]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join(180)
    assert [pr.exitcode for pr in procs] == [0, 0]
    reports = [json.loads((tmp_path / f"run{i}.json").read_text()) for i in range(2)]
    made = Counter(k for r in reports for k in r["made"])
    assert len(made) == len(qs) * (p.k + 1) and max(made.values()) == 1  # together: each item once
    assert all(r["generated"] + r["reused"] == len(qs) * (p.k + 1) for r in reports), reports
    assert sum(r["generated"] for r in reports) == len(qs) * (p.k + 1)
    with Store(tmp_path / "store.sqlite") as s:
        assert s.count() == len(qs) * (p.k + 1)


def test_stale_claim_of_a_dead_run_is_taken_over(tmp_path):
    import subprocess
    import sys

    qs, p = small(tmp_path, n=30)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from symoe.method.requests import Requests

    build = Requests(p.config, Sampling())
    keys = [build.expert(p.config.names[p.experts[q, j]], qs[q], j).key for q in range(len(qs)) for j in range(p.k)]
    with Store(tmp_path / "store.sqlite") as s:
        s._db.executemany("INSERT INTO claims (key, owner, pid, created) VALUES (?,?,?,?)",
                          [(k, "dead-run", dead.pid, 0.0) for k in keys])
    report, engines = fake_run(p, qs, tmp_path)
    assert report.generated == len(qs) * (p.k + 1)
    with Store(tmp_path / "store.sqlite") as s:
        assert s._db.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0  # released at the end
