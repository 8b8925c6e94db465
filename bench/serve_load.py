"""Load test of ``symoe serve`` (issue 23) with the fake engine: open-loop clients (request i is
sent at i / rate seconds, whatever the earlier ones are doing) through the ``openai`` client, each
request a distinct MMLU-Pro question with its own seed. For each rate, batching by expert
(``--window-ms``, default 100) against one Symbolic-MoE pass per request (``--window-ms 0``).
Prints p50/p99 latency (from each request's scheduled send time), throughput, engine batches
and model calls per request, and checks that every answer is the one of its own question.

    .venv/bin/python bench/serve_load.py --requests 400 --rates 10,40,160 --scale 0.001
    .venv/bin/python bench/serve_load.py --tiny --requests 24 --rates 0.2,1 --max-tokens 16

The fake engine's times are the tiny pool's cost model (bundled tiny.toml) times ``--scale``.
``--tiny``: the real tiny pool on CPU instead (vLLM, models fetched on first use; minutes)."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai

from symoe.config.pool import bundled_config_path
from symoe.method.datasets import dataset_path, load_questions
from symoe.models.fetch import fetch_tiny
from symoe.serve.protocol import question_of


def pool_file(folder: Path) -> Path:
    """The tiny pool's cost figures without model folders (the fake engine loads nothing)."""
    text = Path(bundled_config_path("tiny")).read_text()
    text = "\n".join(ln for ln in text.splitlines() if not ln.startswith("path ="))
    p = folder / "pool.toml"
    p.write_text(text.replace('platform = "cpu"', 'platform = "gpu"'))
    return p


def start(pool: Path, folder: Path, window_ms: float, scale: float | None) -> tuple[subprocess.Popen[str], str]:
    """``symoe serve`` (``--fake`` unless ``scale`` is None) on a free port; returns the process and its URL."""
    cmd = [sys.executable, "-m", "symoe.cli", "serve", "--config", str(pool), "--port", "0",
           "--window-ms", str(window_ms), "--store", str(folder / f"store-{window_ms:g}.sqlite"), "--max-batch", "1024"]
    cmd += [] if scale is None else ["--fake", str(scale)]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    assert p.stderr is not None
    line = p.stderr.readline()
    m = re.search(r"at (http://\S+/v1)", line)
    if not m:
        p.kill()
        raise SystemExit(f"server did not start: {line}{p.stderr.read()}")
    return p, m.group(1)


def stop(p: subprocess.Popen[str]) -> int:
    """SIGTERM; the engine batches it reports."""
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    m = re.search(r"\((\d+) engine batches\)", err)
    return int(m.group(1)) if m else -1


def load(url: str, texts: list[str], rate: float, clients: int, max_tokens: int | None = None) -> dict[str, float]:
    """Open loop at ``rate`` requests/s; latency from each request's scheduled time."""
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    lat: list[float] = [0.0] * len(texts)
    calls: list[int] = [0] * len(texts)
    wrong = threading.Event()
    extra = {} if max_tokens is None else {"max_tokens": max_tokens}
    t0 = time.perf_counter() + 0.5

    def one(i: int) -> None:
        due = t0 + i / rate
        time.sleep(max(0.0, due - time.perf_counter()))
        r = client.chat.completions.create(model="symoe-mmlu_pro", messages=[{"role": "user", "content": texts[i]}],
                                           seed=1000 + i, extra_body={"symoe": {"details": True}, **extra})
        d = (r.model_extra or {})["symoe"]
        if d["question"] != question_of(texts[i]).id or not r.choices[0].message.content:
            wrong.set()
        calls[i] = d["model_calls"]
        lat[i] = time.perf_counter() - due

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(len(texts))))
    wall = time.perf_counter() - t0
    if wrong.is_set():
        raise SystemExit("an answer came back on the wrong request")
    a = np.array(lat)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "rps": len(texts) / wall,
            "calls": float(np.mean(calls))}


def main() -> None:
    """Run every (rate, mode) point and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--rates", default="10,40,160", help="Requests per second, comma-separated.")
    ap.add_argument("--scale", type=float, default=0.001, help="Real seconds per cost-model second.")
    ap.add_argument("--window-ms", type=float, default=100.0)
    ap.add_argument("--clients", type=int, default=256, help="Client threads (at most this many in flight).")
    ap.add_argument("--tiny", action="store_true", help="The real tiny pool on CPU (vLLM), not the fake engine.")
    ap.add_argument("--max-tokens", type=int, default=None, help="max_tokens of every request (--tiny: keep it short).")
    a = ap.parse_args()
    texts = [q.text for q in load_questions(dataset_path("mmlu_pro"))][: a.requests]
    what = "real tiny pool on CPU (vLLM)" if a.tiny else f"fake engine, tiny pool cost model x {a.scale}"
    print(f"{len(texts)} requests per point; {what}; {os.cpu_count()} cores (shared with other work)")
    print("| rate (req/s) | mode | p50 s | p99 s | throughput req/s | engine batches / req | model calls / req |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pool = fetch_tiny() if a.tiny else pool_file(folder)
        for rate in (float(r) for r in a.rates.split(",")):
            for window, name in ((a.window_ms, f"batched ({a.window_ms:g} ms)"), (0.0, "per request")):
                p, url = start(pool, folder / f"{rate:g}", window, None if a.tiny else a.scale)
                try:
                    r = load(url, texts, rate, a.clients, a.max_tokens)
                finally:
                    batches = stop(p)
                print(f"| {rate:g} | {name} | {r['p50']:.3f} | {r['p99']:.3f} | {r['rps']:.3g} | "
                      f"{batches / len(texts):.2f} | {r['calls']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
