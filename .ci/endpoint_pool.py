"""CI: `symoe run` from an endpoint-only install (symoe[remote]: no vLLM, no torch) on a pool of two
real endpoints: vLLM CPU servers for SmolLM2-135M-Instruct and Qwen2.5-Coder-0.5B-Instruct, started
here from the main venv on 127.0.0.1. Usage: .venv/bin/python .ci/endpoint_pool.py REMOTE_VENV_BIN WORKDIR"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

import symoe
from symoe.method.datasets import bundled
from symoe.generation import ModelSettings
from symoe.generation.local import engine_env
from symoe.generation.vllm_server import free_port, server_command
from symoe.models.fetch import fetch_tiny
from symoe.store import Store

NAMES = ["SmolLM2-135M-Instruct", "Qwen2.5-Coder-0.5B-Instruct"]
START_S, RUN_S = 600, 1200  # bounds on a busy two-core machine


def main(venv_bin: Path, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    cfg = symoe.Config.from_toml(fetch_tiny(NAMES))
    procs, urls = [], {}
    try:
        for i, name in enumerate(NAMES):  # one core each: both start and serve side by side
            port = free_port()
            log = open(work / f"{name}.log", "wb")
            procs.append(subprocess.Popen(server_command(ModelSettings.of(cfg, name), port), stdout=log,
                                          stderr=subprocess.STDOUT, env=engine_env("cpu", i, 2), start_new_session=True))
            urls[name] = f"http://127.0.0.1:{port}"
        end = time.monotonic() + START_S
        for name, proc in zip(NAMES, procs):
            while True:
                if proc.poll() is not None or time.monotonic() > end:
                    sys.exit(f"{name}: server not healthy:\n{(work / f'{name}.log').read_text()[-3000:]}")
                try:
                    if httpx.get(urls[name] + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(1)
        pool = '[engine]\nplatform = "cpu"\nmax_tokens = 24\n[devices]\ncount = 1\nmemory_gb = 8.0\n'
        for name in NAMES:
            pool += f'\n[[model]]\nname = "{name}"\nendpoint = "{urls[name]}/v1"\nmax_concurrency = 8\n'
        (work / "pool.toml").write_text(pool)
        profiles = json.loads(bundled("tiny_profiles.json").read_text())
        profiles["profiles"] = {m: v for m, v in profiles["profiles"].items() if m in NAMES}
        (work / "profiles.json").write_text(json.dumps(profiles))
        cmd = [str(venv_bin / "symoe"), "run", "--config", str(work / "pool.toml"), "--profiles", str(work / "profiles.json"),
               "--limit", "3", "-k", "2", "--out", str(work / "out"), "--store", str(work / "store.sqlite")]
        print(" ".join(cmd), flush=True)
        t0 = time.monotonic()
        r = subprocess.run(cmd, timeout=RUN_S, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        if r.returncode:
            sys.exit(f"symoe run from the endpoint-only install failed with code {r.returncode}")
        with Store(work / "store.sqlite") as st:
            n_exp, n_agg = st.count("expert"), st.count("aggregate")
        if (n_exp, n_agg) != (6, 3):
            sys.exit(f"expected 6 expert and 3 aggregate generations stored, got {n_exp} and {n_agg}")
        print(f"endpoint-only install: symoe run on 2 endpoints, 3 questions, {time.monotonic() - t0:.0f} s, "
              f"{n_exp} expert + {n_agg} aggregate generations stored")
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
