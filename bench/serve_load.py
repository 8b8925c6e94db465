"""Load test of ``symoe serve`` (issue 23): open-loop clients (request i is sent at i / rate
seconds, whatever the earlier ones are doing) through the ``openai`` client, each request a
distinct MMLU-Pro question with its own seed. For each rate, batching by expert (``--window-ms``,
default 100) against one Symbolic-MoE pass per request (``--window-ms 0``); then the batch mode,
``symoe run`` on the same questions with the same pool and engine, as one more row.
Prints p50/p99 latency (from each request's scheduled send time), throughput, whether the mode
sustains the offered rate, engine batches and model calls per request, and checks that every
answer is the one of its own question.

    .venv/bin/python bench/serve_load.py --requests 400 --rates 10,40,160 --scale 0.001
    .venv/bin/python bench/serve_load.py --tiny --requests 24 --rates 0.2,1 --max-tokens 16

The fake engine's times are the tiny pool's cost model (bundled tiny.toml) times ``--scale``
(``symoe serve --fake`` and ``symoe run --fake``). ``--tiny``: the real tiny pool on CPU instead
(vLLM, models fetched on first use; minutes)."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openai

from symoe.config.pool import bundled_config_path
from symoe.method.datasets import Question, dataset_path, load_questions
from symoe.models.fetch import fetch_tiny
from symoe.serve.protocol import question_of
from symoe.store import Store

SUSTAINED = 0.9  # a mode sustains a rate when its throughput is at least this share of it
SEED0 = 1000  # request i is sent with seed SEED0 + i


@dataclass
class Row:
    """One line of the table. ``rate`` None: the batch mode (every question given at once)."""

    rate: float | None
    mode: str
    p50: float
    p99: float
    rps: float
    batches: float  # engine batches per request
    calls: float  # model calls per request

    @property
    def sustained(self) -> bool | None:
        """Whether the throughput kept up with the offered rate (None: no rate offered)."""
        return None if self.rate is None else self.rps >= SUSTAINED * self.rate

    def line(self) -> str:
        rate = "all at once" if self.rate is None else f"{self.rate:g}"
        ok = {None: "-", True: "yes", False: "no"}[self.sustained]
        return (f"| {rate} | {self.mode} | {self.p50:.3f} | {self.p99:.3f} | {self.rps:.3g} | {ok} | "
                f"{self.batches:.2f} | {self.calls:.1f} |")


@dataclass
class Result:
    """The table's rows and each mode's extracted answer of every question (index = request)."""

    rows: list[Row] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)  # the batch mode's seconds per stage (summary.json)
    answers: dict[str, list[str | None]] = field(default_factory=dict)  # by "<mode> @ <rate>" or "batch mode"


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
    m = re.search(r"\((\d+) engine batches", err)
    return int(m.group(1)) if m else -1


def load(url: str, texts: list[str], rate: float, clients: int,
         max_tokens: int | None = None) -> tuple[dict[str, float], list[str | None]]:
    """Open loop at ``rate`` requests/s; latency from each request's scheduled time. Refuses an
    answer whose question or seed is not its request's; returns the figures and every answer."""
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    lat: list[float] = [0.0] * len(texts)
    calls: list[int] = [0] * len(texts)
    answers: list[str | None] = [None] * len(texts)
    wrong = threading.Event()
    extra = {} if max_tokens is None else {"max_tokens": max_tokens}
    t0 = time.perf_counter() + 0.5

    def one(i: int) -> None:
        due = t0 + i / rate
        time.sleep(max(0.0, due - time.perf_counter()))
        r = client.chat.completions.create(model="symoe-mmlu_pro", messages=[{"role": "user", "content": texts[i]}],
                                           seed=SEED0 + i, extra_body={"symoe": {"details": True}, **extra})
        d = (r.model_extra or {})["symoe"]
        if d["question"] != question_of(texts[i]).id or d["seed"] != SEED0 + i or not r.choices[0].message.content:
            wrong.set()
        calls[i], answers[i] = d["model_calls"], d["answer"]
        lat[i] = time.perf_counter() - due

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(len(texts))))
    wall = time.perf_counter() - t0
    if wrong.is_set():
        raise SystemExit("an answer came back on the wrong request")
    a = np.array(lat)
    return ({"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "rps": len(texts) / wall,
             "calls": float(np.mean(calls))}, answers)


def batch_mode(pool: Path, folder: Path, qs: Sequence[Question], scale: float | None,
               max_tokens: int | None) -> tuple[Row, list[str | None], dict[str, float]]:
    """``symoe run`` over ``qs`` (the first of the bundled MMLU-Pro test split, as the load sent)
    with the same pool and engine, into a fresh store. Its wall time is the pipeline's (summary.json
    ``wall_s``: keywords to results written; imports and the forecast excluded); every answer is
    ready when it ends, so p50 = p99 = the wall time."""
    store, out = folder / "batch.sqlite", folder / "batch" / "run"
    cmd = [sys.executable, "-m", "symoe.cli", "run", "--config", str(pool), "--dataset", "mmlu_pro",
           "--limit", str(len(qs)), "--store", str(store), "--out", str(out)]
    cmd += [] if scale is None else ["--fake", str(scale)]
    cmd += [] if max_tokens is None else ["--max-tokens", str(max_tokens)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"symoe run failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    if [q.id for q in qs] != list(rows):
        raise SystemExit(f"symoe run answered {len(rows)} questions, not the {len(qs)} the load test sent")
    log = [json.loads(ln) for ln in (out / "run" / "run_log.jsonl").read_text().splitlines()]
    runs = sum(s["kind"] == "run" for s in log) + 1  # the plan's generate steps and the keyword stage's one batch
    with Store(store) as st:
        calls = st.count()  # every generation of this run (a fresh store): keyword samples, experts, aggregations
    wall, n = float(summary["wall_s"]), len(qs)
    return Row(None, "batch mode (symoe run)", wall, wall, n / wall, runs / n, calls / n), \
        [rows[q.id]["final_answer"] for q in qs], summary["stage_seconds"]


def same(a: Sequence[str | None], b: Sequence[str | None]) -> int:
    """How many requests got the same extracted answer."""
    return sum(x == y for x, y in zip(a, b))


def run(argv: Sequence[str] | None = None) -> Result:
    """Run every (rate, mode) point and the batch mode; print the table and the answers' agreement."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--rates", default="10,40,160", help="Requests per second, comma-separated.")
    ap.add_argument("--scale", type=float, default=0.001, help="Real seconds per cost-model second.")
    ap.add_argument("--window-ms", type=float, default=100.0)
    ap.add_argument("--clients", type=int, default=256, help="Client threads (at most this many in flight).")
    ap.add_argument("--tiny", action="store_true", help="The real tiny pool on CPU (vLLM), not the fake engine.")
    ap.add_argument("--max-tokens", type=int, default=None, help="max_tokens of every request (--tiny: keep it short).")
    a = ap.parse_args(argv)
    qs = load_questions(dataset_path("mmlu_pro"))[: a.requests]
    texts = [q.text for q in qs]
    what = "real tiny pool on CPU (vLLM)" if a.tiny else f"fake engine, tiny pool cost model x {a.scale}"
    print(f"{len(texts)} requests per point; {what}; {os.cpu_count()} cores (shared with other work)")
    print("| rate (req/s) | mode | p50 s | p99 s | throughput req/s | sustained | engine batches / req | model calls / req |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    res = Result()
    scale = None if a.tiny else a.scale
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pool = fetch_tiny() if a.tiny else pool_file(folder)
        for rate in (float(r) for r in a.rates.split(",")):
            for window, name in ((a.window_ms, f"batched ({a.window_ms:g} ms)"), (0.0, "per request")):
                p, url = start(pool, folder / f"{rate:g}", window, scale)
                try:
                    r, answers = load(url, texts, rate, a.clients, a.max_tokens)
                finally:
                    batches = stop(p)
                row = Row(rate, name, r["p50"], r["p99"], r["rps"], batches / len(texts), r["calls"])
                res.rows.append(row)
                res.answers[f"{name} @ {rate:g}"] = answers
                print(row.line(), flush=True)
        row, res.answers["batch mode"], res.stages = batch_mode(pool, folder, qs, scale, a.max_tokens)
        res.rows.append(row)
        print(row.line(), flush=True)
    report(res, a.tiny)
    return res


def report(res: Result, tiny: bool) -> None:
    """The highest rate each mode sustains, and how the modes' answers agree."""
    print(f"\nsustained: throughput >= {SUSTAINED:.0%} of the offered rate. Batch mode: every answer is ready only "
          f"when the run ends, so p50 = p99 = its wall time (keywords to results written): "
          + ", ".join(f"{k} {v:.2f} s" for k, v in res.stages.items()) + ".")
    for mode in dict.fromkeys(r.mode for r in res.rows if r.rate is not None):
        ok = [r.rate for r in res.rows if r.mode == mode and r.sustained and r.rate is not None]
        print(f"highest rate sustained, {mode}: " + (f"{max(ok):g} req/s" if ok else "none of those offered"))
    (name, first), *others = [(k, v) for k, v in res.answers.items() if k != "batch mode"]
    n = len(first)
    for k, v in others:  # the fake engine's text is a function of the request: equal by construction
        print(f"extracted answers, {k} = {name}: {same(v, first)}/{n}"
              + ("" if tiny else " (equal by construction: same seeds and prompts)"))
    print(f"extracted answers, batch mode = {name}: {same(res.answers['batch mode'], first)}/{n} "
          f"(not equal by construction: symoe run samples and routes every question with one seed, the batch's "
          f"rare-expert filter applied; each request has its own seed {SEED0} + i)")


if __name__ == "__main__":
    run()
