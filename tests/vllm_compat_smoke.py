"""Standalone vLLM compatibility smoke check for the engine worker (not a pytest test).

Starts python/symoe/generation/worker.py under a given venv's Python, with the environment the
project uses on CPU, loads a model, generates a chat request and a plain-prompt request, and does
it again in a fresh worker to check the texts are identical (per-request seeds).

    python3 tests/vllm_compat_smoke.py --venv /path/to/venv --model /root/.cache/symoe/models/SmolLM2-135M-Instruct

Exit 0 when both runs load, generate two "done" events each with non-empty text, and agree.
Needs only the standard library; vLLM's log (worker stderr) is written to --log.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(os.path.dirname(HERE), "python", "symoe", "generation", "worker.py")

REQUESTS = [
    {"id": "a", "messages": [{"role": "user", "content": "What is 2+2?"}], "temperature": 0.7, "max_tokens": 16, "seed": 1},
    {"id": "b", "prompt": "The sky is", "temperature": 0.7, "max_tokens": 16, "seed": 2},
]


def worker_env(venv: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_OMP_THREADS_BIND=env.get("VLLM_CPU_OMP_THREADS_BIND", "0-1"),
               VLLM_CPU_KVCACHE_SPACE="1", CUDA_VISIBLE_DEVICES="", TOKENIZERS_PARALLELISM="false")
    iomp = os.path.join(venv, "lib", "libiomp5.so")
    if os.path.exists(iomp):
        env["LD_PRELOAD"] = iomp
    env.pop("SYMOE_PARENT_PID", None)
    return env


def run_once(venv: str, model: str, log) -> dict[str, str]:
    py = os.path.join(venv, "bin", "python")
    p = subprocess.Popen([py, WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                         env=worker_env(venv), bufsize=1)

    def send(msg):
        p.stdin.write(json.dumps(msg) + "\n")
        p.stdin.flush()

    def recv():
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited (rc={p.poll()}); see the log")
        print("  <-", line.strip()[:300], flush=True)
        return json.loads(line)

    try:
        hello = recv()
        assert hello.get("ok") and hello.get("ready"), hello
        send({"op": "load", "model": {"name": "smol", "path": model, "chat": True, "platform": "cpu", "dtype": "float32",
                                      "max_model_len": 2048, "enforce_eager": True, "sleep": False,
                                      "gpu_memory_utilization": None}})
        r = recv()
        if not r.get("ok"):
            raise RuntimeError(f"load failed: {r.get('error')}")
        send({"op": "generate", "requests": REQUESTS})
        texts = {}
        while True:
            r = recv()
            if r.get("event") == "done":
                texts[r["id"]] = r["text"]
                assert r["tokens"] > 0 and r["prompt_tokens"] > 0, r
                continue
            if not r.get("ok"):
                raise RuntimeError(f"generate failed: {r.get('error')}")
            break
        assert set(texts) == {"a", "b"}, texts
        assert all(t.strip() for t in texts.values()), texts
        return texts
    finally:
        try:
            p.stdin.close()
            p.wait(timeout=60)
        except Exception:
            p.kill()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--venv", required=True)
    ap.add_argument("--model", default="/root/.cache/symoe/models/SmolLM2-135M-Instruct")
    ap.add_argument("--log", default="vllm_compat_smoke.log")
    a = ap.parse_args()
    venv = os.path.abspath(a.venv)
    ver = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                          "import importlib.metadata as m; "
                          "print(m.version('vllm-cpu'), m.version('torch'), m.version('transformers'))"],
                         capture_output=True, text=True).stdout.strip()
    print(f"vllm-cpu / torch / transformers: {ver}", flush=True)
    runs = []
    with open(a.log, "w") as log:
        for i in range(2):
            t0 = time.time()
            print(f"run {i + 1} (fresh worker)", flush=True)
            try:
                runs.append(run_once(venv, a.model, log))
            except Exception as e:
                print(f"FAIL: {type(e).__name__}: {e}", flush=True)
                return 1
            print(f"  texts: {runs[-1]}  ({time.time() - t0:.0f}s)", flush=True)
    if runs[0] != runs[1]:
        print(f"FAIL: not deterministic: {runs[0]} != {runs[1]}")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
