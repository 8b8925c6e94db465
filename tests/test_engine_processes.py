"""The engines' process handling without vLLM or Ray: fake worker processes and stub handles.
Deadlines on every write and wait, keys kept out of child environments, each device's own
memory share, DeviceLost naming what was planned, and leaks on shutdown reported."""

import logging
import os
import subprocess
import threading
import time

import pytest

from symoe.generation import EngineError, EngineTimeout
from symoe.generation import local

# A worker that says it is ready and then never reads its pipe (hung, e.g. in a driver call).
HUNG_WORKER = "import json, time; print(json.dumps({'ok': True, 'ready': True}), flush=True); time.sleep(600)"


def in_thread(fn, guard_s=60.0):
    """Run ``fn`` on a thread; returns (finished, its exception). ``guard_s`` only bounds a test
    whose code would block for good (it is no timing claim)."""
    out = []

    def call():
        try:
            fn()
            out.append(None)
        except BaseException as e:  # noqa: BLE001
            out.append(e)

    th = threading.Thread(target=call, daemon=True)
    th.start()
    th.join(guard_s)
    return (not th.is_alive()), (out[0] if out else None)


def test_hung_worker_with_a_batch_of_megabytes_hits_its_deadline(tmp_path, monkeypatch):
    script = tmp_path / "hung_worker.py"
    script.write_text(HUNG_WORKER)
    monkeypatch.setattr(local, "WORKER", script)
    w = local.Worker(dict(os.environ), tmp_path / "w.log", preimport=False)
    batch = {"op": "generate", "requests": [{"id": str(i), "prompt": "x" * 1000} for i in range(4000)]}  # ~4 MB
    try:
        finished, err = in_thread(lambda: w.request(batch, "generate (test)", time.monotonic() + 2.0))
        assert finished, "the request's write blocked past its deadline (the pipe is full, the worker never reads)"
        assert isinstance(err, EngineTimeout) and "did not read its request" in str(err), err
        assert w.proc.poll() is not None  # the hung worker was killed
    finally:
        if w.proc.poll() is None:
            w.proc.kill()


class Unkillable:
    """A process stuck in the kernel: SIGKILL does not end it, and a plain wait never returns."""

    pid = 999_999_999

    def poll(self):
        return None

    def kill(self):
        pass

    def wait(self, timeout=None):
        if timeout is None:
            threading.Event().wait()
        raise subprocess.TimeoutExpired("worker", timeout)


def test_kill_and_close_of_a_worker_that_does_not_die_return_and_say_so(tmp_path, caplog):
    w = local.Worker.__new__(local.Worker)
    w.proc, w.log_path = Unkillable(), tmp_path / "device0-worker1.log"
    w._log = open(w.log_path, "ab")
    eng = local.LocalEngine(0, {}, tmp_path)
    eng.resident["m"] = w
    with caplog.at_level(logging.WARNING, logger="symoe"):
        finished, err = in_thread(eng.close)
    assert finished and err is None, "close() waited for ever on a process that does not exit"
    assert str(Unkillable.pid) in caplog.text and "left behind" in caplog.text
