"""Driver of test_ray_e2e.py and test_serve_ray.py, run inside their private network namespace
(see ray_netns.sh and ray_cluster.py).

Phases, on one two-node cluster (node-a: device 0, node-b: device 1), each writing what it saw to
``<out>/<phase>.json`` for the tests to check. The pool file is the tiny pool's with a ``[cluster]``
table (discover = true); runs go through ``run_plan`` (no engines given: the config's cluster).
- ``both``: a plan with work on both nodes and aggregation across them, run to the end;
- ``serve``: ``symoe serve`` on the cluster's two devices (ray_serve_driver.py); needs both nodes;
- ``fault``: another store; node-b's raylet is killed once its model is loaded and the first
  generation is stored; the run must stop with a report naming the node;
- ``rerun``: ``symoe run-plan --retries 1`` on the fault phase's plan file: device 1 is found
  lost, the missing work is replanned over device 0 and completes.
Every wait is bounded; a phase that cannot finish raises (the namespace then dies with us).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import psutil

from symoe.cluster.live import with_discovered_devices
from symoe.config.pool import Config
from symoe.execution import RunOptions, run_plan
from symoe.execution.replan import stored_work
from symoe.generation import Sampling
from symoe.generation.engine import DeviceLost
from symoe.method.datasets import dataset_path, load_questions
from symoe.method.requests import Requests
from symoe.method.routing import Assignment
from symoe.models.fetch import fetch_tiny
from symoe.planning.plan import Plan, StepKind
from symoe.planning.planner import plan
from symoe.store import Store

SMOL = "SmolLM2-135M-Instruct"
DATA = dataset_path("mmlu_pro")
SAMPLING = Sampling(max_tokens=24, aggregate_max_tokens=40)


def kill_node(name: str) -> list[int]:
    """SIGKILL the raylet of node ``name`` (a crash: its workers, our actor included, follow)."""
    pids = [p.pid for p in psutil.process_iter(["cmdline"])
            if (cmd := p.info["cmdline"]) and cmd[0].endswith("/raylet") and f"--node-name={name}" in cmd]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids


def pool_file(out: Path) -> Path:
    """The tiny pool (SmolLM2 only) with a [cluster] table: the running cluster's devices."""
    path = out / "pool.toml"
    text = Path(fetch_tiny([SMOL])).read_text()
    path.write_text(text + f'\n[cluster]\nbackend = "ray"\naddress = "{os.environ["RAY_ADDRESS"]}"\ndiscover = true\n')
    return path


def setup(out: Path, n_questions: int) -> tuple:
    cfg = with_discovered_devices(Config.from_toml(pool_file(out)))
    qs = load_questions(DATA, limit=n_questions)
    ids = tuple(q.id for q in qs)
    p = plan(Assignment((SMOL,), np.zeros((len(qs), 2), dtype=np.int64), question_ids=ids), cfg, aggregator=SMOL)
    p.question_hashes = tuple(q.text_hash for q in qs)
    return cfg, qs, p


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (a zombie holds no memory)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def placement(p) -> dict:
    """Per device the questions of its expert and aggregation runs (from the plan)."""
    out: dict = {}
    for st in p.steps():
        if st["kind"] == "run":
            out.setdefault(str(st["device"]), {}).setdefault(st["role"], []).extend(st["questions"])
    return out


def phase_both(out: Path) -> dict:
    cfg, qs, p = setup(out, 4)
    assert cfg.cluster is not None
    with Store(out / "both.sqlite") as store:
        r = run_plan(p, qs, store, out / "both-run", SAMPLING, options=RunOptions(progress=False))
        total = stored_work(p, qs, store, Requests(cfg, SAMPLING))
        texts = [store.get(x.key).text for x in Requests(cfg, SAMPLING).plan_experts(p, qs)]
    # The actors' processes (this PID namespace holds them all) are gone: their memory is free.
    pids = [s.info["pid"] for s in r.steps if s.kind == StepKind.LOAD]
    deadline = time.monotonic() + 30
    while (alive := [x for x in pids if running(x)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    return {"actor_pids": pids, "actors_alive_after": alive,
            "nodes": [n.name for n in cfg.cluster.node], "placement": placement(p), "generated": r.generated,
            "reused": r.reused, "stored": total, "expected": len(qs) * 3, "finals": [x.final_text for x in r.results],
            "expert_texts": texts, "steps": [[s.device, s.kind.label, s.info.get("node")] for s in r.steps]}


def phase_fault(out: Path) -> dict:
    cfg, qs, p = setup(out, 6)
    p.to_json(out / "fault-plan.json")
    store_path = out / "fault.sqlite"
    killed: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + 900
        with Store(store_path) as s:
            while not stop.is_set() and time.monotonic() < deadline:
                if any(e["device"] == 1 and e["kind"] == "load" for e in s.events(RUN_ID)) and s.count() >= 1:
                    killed.extend(kill_node("node-b"))
                    return
                time.sleep(0.2)

    Store(store_path).close()
    th = threading.Thread(target=watch, daemon=True)
    th.start()
    err = None
    try:
        with Store(store_path) as store:
            run_plan(p, qs, store, out / "fault-run", SAMPLING, options=RunOptions(progress=False), run_id=RUN_ID)
    except DeviceLost as e:
        err = {"type": type(e).__name__, "message": str(e), "device": e.device, "node": e.node, "node_lost": e.node_lost}
    finally:
        stop.set()
        th.join(5)
    with Store(store_path) as store:
        stored = stored_work(p, qs, store, Requests(cfg, SAMPLING))
        keys = {k: store.get(k).text for k in store.all_keys()}
    (out / "fault-keys.json").write_text(json.dumps(keys))
    return {"killed": killed, "error": err, "stored": stored, "expected": len(qs) * 3, "placement": placement(p)}


RUN_ID = "fault-run"


def phase_rerun(out: Path) -> dict:
    p = Plan.from_json(out / "fault-plan.json")  # over both devices; node-b is gone now
    qs = load_questions(DATA, limit=len(p.experts))
    cmd = [sys.executable, "-m", "symoe.cli", "run-plan", "--questions", str(DATA), "--limit", str(len(qs)),
           "--plan", str(out / "fault-plan.json"), "--store", str(out / "fault.sqlite"), "--run-dir",
           str(out / "rerun-run"), "--max-tokens", str(SAMPLING.max_tokens), "--aggregate-max-tokens",
           str(SAMPLING.aggregate_max_tokens), "--retries", "1"]
    cli = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    with Store(out / "fault.sqlite") as store:
        stored = stored_work(p, qs, store, Requests(p.config, SAMPLING))
        keys = {k: store.get(k).text for k in store.all_keys()}
    log = [json.loads(x) for x in (out / "rerun-run" / "run_log.jsonl").read_text().splitlines()] \
        if (out / "rerun-run" / "run_log.jsonl").exists() else []
    return {"code": cli.returncode, "stdout": cli.stdout[-3000:], "stderr": cli.stderr[-3000:], "stored": stored,
            "expected": len(qs) * 3, "steps": [[x["device"], x["kind"], x["info"].get("node")] for x in log],
            "kept": all(keys.get(k) == v for k, v in json.loads((out / "fault-keys.json").read_text()).items())}


def main() -> None:
    out = Path(sys.argv[1])
    failed = False
    for phase in sys.argv[2:]:
        t0 = time.monotonic()
        try:
            if phase == "both":
                res = phase_both(out)
            elif phase == "serve":
                from ray_serve_driver import serve  # this folder is on the path: the script's own

                res = serve(out)
            elif phase == "fault":
                res = phase_fault(out)
            elif phase == "rerun":
                res = phase_rerun(out)
            else:
                raise SystemExit(f"unknown phase {phase}")
        except Exception:
            res = {"crash": traceback.format_exc()}
        res["seconds"] = time.monotonic() - t0
        (out / f"{phase}.json").write_text(json.dumps(res, indent=1))
        print(f"phase {phase}: {res['seconds']:.0f} s", file=sys.stderr, flush=True)
        if "crash" in res:
            print(res["crash"], file=sys.stderr)
            if phase != "serve":  # the serve phase's server is stopped whatever happened: the others can go on
                raise SystemExit(1)
            failed = True
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
