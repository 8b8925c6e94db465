"""Driver of test_ray_e2e.py, run inside its private network namespace (see ray_netns.sh).

Phases, on one two-node cluster (node-a: device 0, node-b: device 1), each writing what it saw to
``<out>/<phase>.json`` for the test to check:
- ``both``: a plan with work on both nodes and aggregation across them, run to the end;
- ``fault``: another plan; node-b's raylet is killed once its model is loaded and the first
  generation is stored; the run must stop with a report naming the node;
- ``rerun``: the same plan again with retries: device 1 is found lost, the missing work is
  replanned over device 0 and completes.
Every wait is bounded; a phase that cannot finish raises (the namespace then dies with us).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np

from conftest import DATA as BENCH
from symoe.cluster import ClusterTable, discover, run_on_cluster
from symoe.config import Config
from symoe.datasets import load_questions
from symoe.execution import RunOptions
from symoe.execution.replan import plan_requests, stored_work
from symoe.generation import Requests, Sampling
from symoe.generation.ray_engine import DeviceLost
from symoe.models import fetch_tiny
from symoe.planning import plan
from symoe.routing import Assignment
from symoe.store import Store

SMOL = "SmolLM2-135M-Instruct"
DATA = BENCH / "MMLU_Pro_test.json"
SAMPLING = Sampling(max_tokens=24, aggregate_max_tokens=40)


def kill_node(name: str) -> list[int]:
    """SIGKILL the raylet of node ``name`` (a crash: its workers, our actor included, follow)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"/raylet") and f"--node-name={name}".encode() in cmd:
            os.kill(int(d), signal.SIGKILL)
            pids.append(int(d))
    return pids


def setup(n_questions: int, offset: int) -> tuple:
    cfg = Config.from_toml(fetch_tiny([SMOL]))
    topo = discover(ClusterTable(address=os.environ["RAY_ADDRESS"], discover=True), "cpu", 8.0)
    cfg = dataclasses.replace(cfg, devices=topo.planning_devices(False))
    qs = load_questions(DATA, limit=offset + n_questions)[offset:]
    ids = tuple(q.id for q in qs)
    p = plan(Assignment((SMOL,), np.zeros((len(qs), 2), dtype=np.int64), question_ids=ids), cfg, aggregator=SMOL)
    return cfg, topo, qs, p


def placement(p) -> dict:
    """Per device the questions of its expert and aggregation runs (from the plan)."""
    out: dict = {}
    for st in p.steps():
        if st["kind"] == "run":
            out.setdefault(str(st["device"]), {}).setdefault(st["role"], []).extend(st["questions"])
    return out


def phase_both(out: Path) -> dict:
    cfg, topo, qs, p = setup(4, 0)
    with Store(out / "both.sqlite") as store:
        r = run_on_cluster(p, qs, store, out / "both-run", topo, SAMPLING, options=RunOptions(progress=False))
        total = stored_work(p, qs, store, Requests(cfg, SAMPLING))
        texts = [store.get(x.key).text for x in plan_requests(p, qs, Requests(cfg, SAMPLING))]
    return {"nodes": [d.node for d in topo.devices], "placement": placement(p), "generated": r.generated,
            "reused": r.reused, "stored": total, "expected": len(qs) * 3, "finals": [x.final_text for x in r.results],
            "expert_texts": texts, "steps": [[s.device, s.kind, s.info.get("node")] for s in r.steps]}


def phase_fault(out: Path) -> dict:
    cfg, topo, qs, p = setup(6, 4)
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
            run_on_cluster(p, qs, store, out / "fault-run", topo, SAMPLING, options=RunOptions(progress=False),
                           run_id=RUN_ID)
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
    cfg, _, qs, _ = setup(6, 4)
    # The plan of the fault phase, over both devices (node-b is gone now: discovery sees one).
    topo_all = json.loads((out / "topology.json").read_text())
    from symoe.cluster import ClusterDevice, Topology

    topo = Topology(topo_all["address"], "cpu", tuple(ClusterDevice(**d) for d in topo_all["devices"]))
    cfg = dataclasses.replace(cfg, devices=topo.planning_devices(False))
    p = plan(Assignment((SMOL,), np.zeros((len(qs), 2), dtype=np.int64), question_ids=tuple(q.id for q in qs)), cfg,
             aggregator=SMOL)
    with Store(out / "fault.sqlite") as store:
        r = run_on_cluster(p, qs, store, out / "rerun-run", topo, SAMPLING, options=RunOptions(progress=False, retries=1))
        stored = stored_work(p, qs, store, Requests(cfg, SAMPLING))
        keys = {k: store.get(k).text for k in store.all_keys()}
    return {"generated": r.generated, "reused": r.reused, "retries": r.retries, "stored": stored,
            "expected": len(qs) * 3, "steps": [[s.device, s.kind, s.info.get("node")] for s in r.steps],
            "kept": all(keys.get(k) == v for k, v in json.loads((out / "fault-keys.json").read_text()).items())}


def main() -> None:
    out = Path(sys.argv[1])
    for phase in sys.argv[2:]:
        t0 = time.monotonic()
        try:
            if phase == "both":
                res = phase_both(out)
            elif phase == "fault":
                _, topo, _, _ = setup(1, 0)
                (out / "topology.json").write_text(json.dumps(dataclasses.asdict(topo)))
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
            raise SystemExit(1)


if __name__ == "__main__":
    main()
