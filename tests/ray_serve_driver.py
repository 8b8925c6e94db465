"""The ``serve`` phase of ray_driver.py (test_serve_ray.py), run inside the private network namespace
of ray_cluster.py on its two-node Ray cluster (node-a: device 0, node-b: device 1).

``symoe serve`` on the tiny pool's SmolLM2 (keywords, an expert, the aggregator) and gemma-3-270m
(an expert) with a ``[cluster]`` table: the placement puts them on the cluster's two devices, each
a Ray actor. Three chat requests are sent at once, then one malformed body; then SIGTERM. What it
saw goes to ``<out>/serve.json`` (written by ray_driver.py). Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from symoe.method.datasets import bundled
from symoe.method.routing import Profiles
from symoe.models.fetch import fetch_tiny
from symoe.store import Store

SMOL, GEMMA = "SmolLM2-135M-Instruct", "gemma-3-270m"
QUESTIONS = ["What is 2+2? Answer with a number.", "Name the capital of France.", "Is water wet? Answer yes or no."]
START_S, ANSWER_S = 600, 600


def files(out: Path) -> tuple[Path, Path, Path]:
    """The pool (with its [cluster] table), the two experts' profiles and the task."""
    pool = out / "serve-pool.toml"  # ray_driver.py's other phases write pool.toml
    pool.write_text(Path(fetch_tiny([SMOL, GEMMA])).read_text()
                    + f'\n[cluster]\nbackend = "ray"\naddress = "{os.environ["RAY_ADDRESS"]}"\ndiscover = true\n')
    tiny = Profiles.from_json(bundled("tiny_profiles.json")).to_dict()
    prof = out / "serve-profiles.json"
    prof.write_text(json.dumps({"profiles": {m: tiny[m] for m in (SMOL, GEMMA)}}))
    task = out / "serve-task.json"
    task.write_text(json.dumps({"name": "mmlu_pro", "aggregator": SMOL, "keyword_model": SMOL}))
    return pool, prof, task


def ask(url: str, text: str, out: list, i: int) -> None:
    body = {"model": "symoe-mmlu_pro", "messages": [{"role": "user", "content": text}], "max_tokens": 12,
            "symoe": {"details": True}}
    r = httpx.post(url + "/chat/completions", json=body, timeout=ANSWER_S)
    out[i] = [r.status_code, r.json()]


def serve(out: Path) -> dict:
    pool, prof, task = files(out)
    cmd = [sys.executable, "-m", "symoe.cli", "serve", "--config", str(pool), "--profiles", str(prof), "--task",
           str(task), "--port", "0", "-k", "2", "--window-ms", "2000", "--max-tokens", "12",
           "--store", str(out / "serve.sqlite")]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    res: dict = {}
    try:
        reader = threading.Thread(target=lambda: lines.extend(iter(p.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
        reader.start()
        end = time.monotonic() + START_S
        while not any("serving" in ln for ln in lines) and p.poll() is None and time.monotonic() < end:
            time.sleep(0.5)
        start = next((ln for ln in lines if "serving" in ln), None)
        if start is None:
            raise RuntimeError("the server did not start:\n" + "".join(lines)[-4000:])
        m = re.search(r"at (http://[\d.]+:\d+/v1)", start)
        assert m, start
        url = m.group(1)
        answers: list = [None] * len(QUESTIONS)
        ts = [threading.Thread(target=ask, args=(url, q, answers, i)) for i, q in enumerate(QUESTIONS)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(ANSWER_S + 30)
        bad = httpx.post(url + "/chat/completions", content=b"{", timeout=60).status_code
        res = {"start": start, "answers": answers, "bad": bad}
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            res["code"] = p.wait(120)
        except subprocess.TimeoutExpired:
            p.kill()
            res["code"] = None
        res["stderr"] = "".join(lines)[-4000:]
    with Store(out / "serve.sqlite") as store:
        res["stored"] = {role: store.count(role) for role in ("keywords", "expert", "aggregate")}
    return res
