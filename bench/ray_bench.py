"""Ray engine benchmark (issue 14): real vLLM CPU engines on a local Ray cluster.

1. Overhead of the Ray engine vs the local engine on the same small plan, one node, one device:
   load time and generation tokens/s side by side (and whether both wrote the same texts: same
   vLLM, same seeds).
2. Two nodes vs one on the same questions: measured and predicted makespan.

The cluster (two nodes on 127.0.0.1, one CPU device each) lives in a private network and PID
namespace, as in tests/test_ray_e2e.py, and dies with it. Run as root:

    .venv/bin/python bench/ray_bench.py [--questions 8] [--max-tokens 48] [--out bench/ray_bench.json]

On a shared 2-core machine the two "nodes" split the same two cores, so two nodes cannot be twice
as fast; the plan's prediction assumes they are independent devices.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOL = "SmolLM2-135M-Instruct"


def outside(args: argparse.Namespace) -> None:
    """Start the namespace with its cluster and run this script inside it."""
    from symoe.models.fetch import fetch_tiny

    fetch_tiny([SMOL])  # the namespace has no network
    ray_tmp = tempfile.mkdtemp(prefix="symoe-raybench-", dir="/tmp")
    env = dict(os.environ, RAY_BIN=str(Path(sys.executable).parent), RAY_PORT="6379", RAY_TMP=ray_tmp, NODES="2",
               RAY_ADDRESS="127.0.0.1:6379")
    cmd = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child", "bash",
           str(ROOT / "tests" / "ray_netns.sh"), sys.executable, __file__, "--inside", "--questions", str(args.questions),
           "--max-tokens", str(args.max_tokens), "--out", str(Path(args.out).resolve())]
    proc = subprocess.run(cmd, env=env, timeout=3000)
    if proc.returncode:
        raise SystemExit(f"benchmark failed (exit {proc.returncode}); Ray logs under {ray_tmp}")
    shutil.rmtree(ray_tmp, ignore_errors=True)


def steps_summary(report) -> dict:  # type: ignore[no-untyped-def]
    """Load seconds and generation throughput of a run report."""
    from symoe.planning.steps import StepKind

    loads = [s.end - s.start for s in report.steps if s.kind == StepKind.LOAD]
    runs = [s for s in report.steps if s.kind == StepKind.RUN]
    run_s = sum(s.end - s.start for s in runs)
    tokens = sum(s.tokens for s in runs)
    info = next((s.info for s in report.steps if s.kind == StepKind.LOAD), {})
    return {"load_s": loads, "engine_import_s": info.get("import_s"), "engine_init_s": info.get("load_s"),
            "run_s": run_s, "tokens": tokens, "tokens_per_s": tokens / run_s if run_s else None,
            "makespan_s": report.makespan, "predicted_makespan_s": report.predicted_makespan,
            "generated": report.generated}


def inside(args: argparse.Namespace) -> None:
    """The measurements (run inside the namespace, connected to its cluster)."""
    import numpy as np

    from symoe.cluster.live import discover
    from symoe.config.cluster_table import ClusterTable
    from symoe.config.pool import Config
    from symoe.execution import RunOptions, run_plan
    from symoe.execution.on_cluster import run_on_cluster
    from symoe.generation import Sampling
    from symoe.generation.local import LocalEngine
    from symoe.method.datasets import load_questions
    from symoe.method.routing import Assignment
    from symoe.models.fetch import fetch_tiny
    from symoe.planning.planner import plan
    from symoe.store import Store

    sys.path.insert(0, str(ROOT / "tests"))

    out = Path(args.out)
    work = Path(tempfile.mkdtemp(prefix="raybench-"))
    base = Config.from_toml(fetch_tiny([SMOL]))
    qs = load_questions("mmlu_pro", limit=args.questions)
    a = Assignment((SMOL,), np.zeros((len(qs), 2), dtype=np.int64), question_ids=tuple(q.id for q in qs))
    sampling = Sampling(max_tokens=args.max_tokens, aggregate_max_tokens=args.max_tokens)
    opts = RunOptions(progress=False, pictures=False)
    topo = discover(ClusterTable(address=os.environ["RAY_ADDRESS"], discover=True), "cpu", 8.0)
    one, two = plan(a, base.with_devices(1), aggregator=SMOL), plan(a, base.with_devices(2), aggregator=SMOL)
    results: dict = {"questions": len(qs), "k": 2, "max_tokens": args.max_tokens, "model": SMOL,
                     "cores": os.cpu_count(), "nodes": [d.node for d in topo.devices]}

    def texts(store_path: Path) -> dict[str, str]:
        with Store(store_path) as s:
            return {k: s.get(k).text for k in s.all_keys()}  # type: ignore[union-attr]

    t = time.monotonic()
    with Store(work / "local.sqlite") as s:
        r = run_plan(one, qs, s, work / "local", sampling, options=opts,
                     engines=[LocalEngine.for_config(one.config, 0, work / "local" / "logs")])
    results["local_1_device"] = steps_summary(r)
    print(f"local: {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
    t = time.monotonic()
    with Store(work / "ray1.sqlite") as s:
        r = run_on_cluster(one, qs, s, work / "ray1", topo.subset([0]), sampling, options=opts)
    results["ray_1_node"] = steps_summary(r)
    results["same_texts_local_vs_ray"] = texts(work / "local.sqlite") == texts(work / "ray1.sqlite")
    print(f"ray, one node: {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
    t = time.monotonic()
    with Store(work / "ray2.sqlite") as s:
        r = run_on_cluster(two, qs, s, work / "ray2", topo, sampling, options=opts)
    results["ray_2_nodes"] = steps_summary(r)
    print(f"ray, two nodes: {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


def main() -> None:
    """Parse the arguments; measure inside the namespace, or start it."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--out", default=str(ROOT / "bench" / "ray_bench.json"))
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    (inside if args.inside else outside)(args)


if __name__ == "__main__":
    main()
