"""``symoe serve``'s windows on one device and on two, with the fake engine (the cost model's times on
a scaled clock): the same requests, in windows of ``--window`` requests, through ``Mixture``
directly (no HTTP). Prints per device count the placement, the windows, engine batches, loads, and
the cost-model seconds from the first request to the last answer (the clock's seconds: real
seconds divided by ``--scale``, so a busy machine adds only its own overhead to them).

    python bench/serve_devices.py --requests 64 --window 16 --scale 0.01
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from symoe.config.pool import Config
from symoe.generation.fake import FakeEngine, ScaledClock
from symoe.method.datasets import bundled, load_questions
from symoe.method.routing import Profiles
from symoe.serve import Limits, Mixture
from symoe.serve.protocol import parse
from symoe.store import Store

NAMES = ["SmolLM2-135M-Instruct", "Qwen2.5-Coder-0.5B-Instruct", "gemma-3-270m"]
TASK_MODEL = "Qwen2.5-Coder-0.5B-Instruct"  # keywords and aggregation, as the bundled tiny task


def pool(folder: Path, devices: int) -> Config:
    """Three 2 GB models (the tiny pool's names, the cost model's default rates) on ``devices`` 80 GB devices."""
    text = f"[engine]\nplatform = \"gpu\"\nmax_tokens = 64\n[devices]\ncount = {devices}\nmemory_gb = 80.0\n"
    text += "[tokens]\nexpert_prompt = 350\nexpert_output = 200\naggregate_prompt = 1000\naggregate_output = 200\n"
    for n in NAMES:
        chat = "false" if n.startswith("gemma") else "true"
        text += f'\n[[model]]\nname = "{n}"\nweight_gb = 2.0\nload_s = 5.0\nchat = {chat}\n'
    (folder / f"pool{devices}.toml").write_text(text)
    return Config.from_toml(folder / f"pool{devices}.toml")


def run(devices: int, requests: int, window: int, scale: float, folder: Path) -> str:
    cfg = pool(folder, devices)
    clock = ScaledClock(scale)
    engines = [FakeEngine(d, cfg, clock) for d in range(devices)]
    texts = [q.text for q in load_questions(bundled("mmlu_pro_sample.json"))]
    profiles = Profiles.from_json(bundled("tiny_profiles.json"))
    with Store(folder / f"s{devices}.sqlite") as store:
        mix = Mixture(cfg, profiles, TASK_MODEL, TASK_MODEL, engines, store, window_s=600.0, max_batch=window)
        mix.start()
        t0 = clock.now()
        jobs = []
        for i in range(requests):  # distinct (prompt, seed) pairs: nothing answered from the store
            body = {"model": "m", "seed": i, "messages": [{"role": "user", "content": texts[i % len(texts)]}]}
            jobs.append(mix.submit(parse("chat", json.dumps(body).encode(), "m", Limits())))
        answered = sum(1 for j in jobs if mix.result(j, 600).text)
        seconds = clock.now() - t0
        mix.stop(5.0)
    lanes = mix.setup.lanes
    return (f"{devices} device(s): {lanes.describe()}\n  {answered}/{requests} answered in {mix.windows} windows, "
            f"{len(mix.calls)} engine batches, {lanes.loads} loads; {seconds:.1f} cost-model s "
            f"({seconds / mix.windows:.1f} s per window)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--scale", type=float, default=0.01, help="real seconds per cost-model second")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for devices in (1, 2):
            print(run(devices, a.requests, a.window, a.scale, Path(tmp)), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
