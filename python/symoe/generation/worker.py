"""Engine worker: one process hosting at most one vLLM engine, driven over a JSON-lines pipe.

Started by :mod:`symoe.generation.local` as a plain script (not ``-m``), so nothing heavier than
the standard library is imported before it arms its die-with-parent signal. The parent sets the
environment (device visibility, thread binding, preloads) before this process starts, so vLLM
sees it at import. Protocol lines go to the original stdout; everything vLLM prints goes to
stderr (the parent's worker log).

vLLM is driven only through its public offline API: ``vllm.EngineArgs``, ``vllm.LLMEngine``
(``from_engine_args``, ``add_request``, ``step``, ``sleep``, ``wake_up``, ``get_tokenizer``) and
``vllm.SamplingParams``; ``step()`` returns each request the moment it finishes, which is what
lets the parent store it at once.

Requests: ``{"op": "load", "model": {...}}``, ``{"op": "generate", "requests": [...]}``,
``{"op": "park"}``, ``{"op": "wake"}``. Replies: one ``{"ok": true, ...}`` or
``{"ok": false, "error": ...}`` per request; ``generate`` first streams one
``{"event": "done", ...}`` line per finished request, and, for the ids its ``"stream"`` list
names, ``{"event": "text", "id", "delta"}`` lines as their text grows (serving's streamed answers).
"""

import ctypes
import os
import signal
import sys


def _die_with_parent() -> None:
    """SIGKILL when the parent dies (PR_SET_PDEATHSIG), then check it has not died already."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)
    except OSError:
        pass
    parent = int(os.environ.get("SYMOE_PARENT_PID", "0"))
    if parent and os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


if __name__ == "__main__":  # imported (the Ray engine's actors reuse VllmEngine): no process setup
    _die_with_parent()
    # Run as a script, this file's folder heads sys.path, and its neighbours (requests.py, ...)
    # would shadow the libraries vLLM imports.
    if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]

import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402


def _watch_parent(parent: int) -> None:
    # Belt and braces: PR_SET_PDEATHSIG follows the parent *thread* that started us.
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


class VllmEngine:
    def __init__(self) -> None:
        self.engine: Any = None
        self.chat = True

    def load(self, spec: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        from vllm import EngineArgs, LLMEngine

        t1 = time.perf_counter()
        args: dict[str, Any] = dict(model=spec["path"], dtype=spec["dtype"], seed=0, max_model_len=int(spec["max_model_len"]),
                                    enforce_eager=bool(spec["enforce_eager"]),
                                    trust_remote_code=bool(spec.get("trust_remote_code", False)))
        if spec.get("gpu_memory_utilization") is not None:
            args["gpu_memory_utilization"] = float(spec["gpu_memory_utilization"])
        if spec.get("sleep"):
            args["enable_sleep_mode"] = True
        if int(spec.get("tensor_parallel_size", 1)) > 1:  # sharded over the GPUs this process sees
            args["tensor_parallel_size"] = int(spec["tensor_parallel_size"])
        if spec.get("platform") == "cpu":
            # vLLM CPU: chunked prefill with per-request seeds fails ("CPU Generator does not use offset").
            args["enable_chunked_prefill"] = False
        self.engine = LLMEngine.from_engine_args(EngineArgs(**args))
        self.chat = bool(spec.get("chat", True))
        return {"import_s": t1 - t0, "load_s": time.perf_counter() - t1}

    def generate(self, requests: list[dict[str, Any]], emit: Callable[[dict[str, Any]], None],
                 stream: frozenset[str] = frozenset()) -> dict[str, Any]:
        from vllm import SamplingParams

        tok = self.engine.get_tokenizer()
        t0 = time.perf_counter()
        for r in requests:
            if self.chat and r.get("messages") is not None:
                prompt = tok.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True)
            else:
                prompt = r["prompt"]
            sp = SamplingParams(temperature=float(r["temperature"]), max_tokens=int(r["max_tokens"]), seed=int(r["seed"]),
                                ignore_eos=bool(r.get("ignore_eos", False)))  # calibration: a fixed number of tokens
            self.engine.add_request(str(r["id"]), prompt, sp)
        first = None
        sent: dict[str, int] = {}  # streamed ids: characters of their text sent so far
        while self.engine.has_unfinished_requests():
            for o in self.engine.step():
                if first is None and o.outputs and o.outputs[0].token_ids:
                    first = time.perf_counter() - t0
                if o.request_id in stream and o.outputs and not o.finished:  # the text so far (cumulative)
                    n = sent.get(o.request_id, 0)
                    if len(o.outputs[0].text) > n:
                        emit({"event": "text", "id": o.request_id, "delta": o.outputs[0].text[n:]})
                        sent[o.request_id] = len(o.outputs[0].text)
                if o.finished:
                    c = o.outputs[0]
                    emit({"event": "done", "id": o.request_id, "text": c.text, "tokens": len(c.token_ids),
                          "prompt_tokens": len(o.prompt_token_ids or []), "finish": str(c.finish_reason)})
        return {"seconds": time.perf_counter() - t0, "first_token_s": first}

    def park(self) -> dict[str, Any]:
        self.engine.sleep(level=1)
        return {}

    def wake(self) -> dict[str, Any]:
        self.engine.wake_up()
        return {}


def main() -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # vLLM's prints go to the log, not the protocol
    sys.stdout = sys.stderr
    parent = int(os.environ.get("SYMOE_PARENT_PID", "0"))
    if parent:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()

    def emit(msg: dict[str, Any]) -> None:
        proto.write(json.dumps(msg) + "\n")
        proto.flush()

    engine = VllmEngine()
    if os.environ.get("SYMOE_WORKER_PREIMPORT") == "1":
        # A warm spare pays the import before it is needed: the engine classes, not only the package
        # (``import vllm`` is lazy; LLMEngine's modules took another 5-12 s at the load on 2 cores).
        from vllm import EngineArgs, LLMEngine  # noqa: F401
    emit({"ok": True, "ready": True, "pid": os.getpid()})
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        op = req.get("op")
        try:
            if op == "load":
                info = engine.load(req["model"])
            elif op == "generate":
                info = engine.generate(req["requests"], emit, frozenset(req.get("stream", ())))
            elif op in ("park", "wake"):
                info = getattr(engine, op)()
            else:
                raise ValueError(f"unknown op {op!r}")
            emit({"ok": True, **info})
        except Exception as e:  # reported to the parent, which names model, device and step
            traceback.print_exc()
            emit({"ok": False, "error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    main()
