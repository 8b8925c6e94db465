"""In-process engine vs a vLLM server symoe starts, on the same expert requests, and throughput
against an OpenAI-compatible endpoint at several ``max_concurrency`` values.

    python bench/serve_bench.py --requests 64 --max-tokens 64 --concurrency 1,4,16 --out runs/serve_bench

1. The same ``--requests`` expert requests (MMLU-Pro test questions, tiny pool's SmolLM2) through
   :class:`LocalEngine` (a vLLM worker process) and through :class:`ServedEngine` (a vLLM
   OpenAI-compatible server on 127.0.0.1): load time, generation time, tokens/s.
2. While that server runs, the same requests through :class:`RemoteEngine` pointed at it, at each
   ``--concurrency`` (the endpoint is a real vLLM server; a fresh sampling seed per level, so no
   answer is served from an earlier level).

Every number is measured here (wall clock, ``time.perf_counter``); nothing is predicted. Writes
``serve_bench.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import symoe
from symoe.generation import ModelSettings, Sampling
from symoe.generation.endpoint import EndpointSettings
from symoe.generation.engine import Clock
from symoe.generation.local import LocalEngine
from symoe.generation.remote import RemoteEngine
from symoe.generation.served import ServedEngine
from symoe.method.datasets import load_questions
from symoe.method.requests import Requests
from symoe.models.fetch import fetch_tiny

SMOL = "SmolLM2-135M-Instruct"
DEADLINE_S = 3600.0


def requests(cfg: symoe.Config, n: int, max_tokens: int, seed: int) -> list:
    qs = load_questions("mmlu_pro", limit=n)
    mk = Requests(cfg, Sampling(max_tokens=max_tokens, seed=seed))
    return [mk.expert(SMOL, q, 0) for q in qs]


def measure(eng, model: str, reqs: list, clock: Clock) -> dict:
    got: list = []
    t0 = time.perf_counter()
    b = eng.generate(model, reqs, got.append, f"bench {type(eng).__name__}", clock.now() + DEADLINE_S)
    s = time.perf_counter() - t0
    assert len(got) == len(reqs), f"{len(got)} of {len(reqs)} generations came back"
    return {"requests": len(reqs), "seconds": s, "tokens": b.tokens, "prompt_tokens": b.prompt_tokens,
            "tokens_per_s": b.tokens / s, "load_average_1m": os.getloadavg()[0]}  # a shared machine: say how busy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--out", default="runs/serve_bench")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = symoe.Config.from_toml(fetch_tiny([SMOL]))
    ms = ModelSettings.of(cfg, SMOL)
    reqs = requests(cfg, args.requests, args.max_tokens, seed=0)
    clock = Clock()
    result: dict = {"model": SMOL, "requests": args.requests, "max_tokens": args.max_tokens}

    local = LocalEngine.for_config(cfg, 0, out / "logs")
    try:
        t0 = time.perf_counter()
        local.load(ms, "bench load (in-process)", clock.now() + DEADLINE_S, keep_spare=False)
        result["in_process"] = {"load_s": time.perf_counter() - t0, **measure(local, SMOL, reqs, clock)}
    finally:
        local.close()
    print("in-process:", json.dumps(result["in_process"]), flush=True)

    served = ServedEngine.for_config(cfg, 0, out / "logs", {SMOL})
    try:
        t0 = time.perf_counter()
        info = served.load(ms, "bench load (served)", clock.now() + DEADLINE_S)
        result["served"] = {"load_s": time.perf_counter() - t0, **measure(served, SMOL, reqs, clock)}
        print("served:", json.dumps(result["served"]), flush=True)
        url = f"http://127.0.0.1:{info['port']}/v1"
        result["endpoint"] = []
        for i, c in enumerate(int(x) for x in args.concurrency.split(",")):
            remote = RemoteEngine(1, EndpointSettings(SMOL, url, max_concurrency=c, request_timeout_s=DEADLINE_S))
            try:
                remote.load(ms, "bench check", clock.now() + 60)
                row = {"max_concurrency": c, **measure(remote, SMOL, requests(cfg, args.requests, args.max_tokens,
                                                                                seed=1 + i), clock)}
            finally:
                remote.close()
            result["endpoint"].append(row)
            print("endpoint:", json.dumps(row), flush=True)
    finally:
        served.close()
    (out / "serve_bench.json").write_text(json.dumps(result, indent=2))
    print(f"\n{'engine':<28}{'load s':>9}{'gen s':>9}{'tokens':>8}{'tok/s':>9}")
    for name in ("in_process", "served"):
        r = result[name]
        print(f"{name:<28}{r['load_s']:>9.1f}{r['seconds']:>9.1f}{r['tokens']:>8}{r['tokens_per_s']:>9.1f}")
    for r in result["endpoint"]:
        print(f"{'endpoint, concurrency ' + str(r['max_concurrency']):<28}{'':>9}{r['seconds']:>9.1f}{r['tokens']:>8}"
              f"{r['tokens_per_s']:>9.1f}")


if __name__ == "__main__":
    main()
