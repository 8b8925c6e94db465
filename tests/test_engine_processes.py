"""The local engines' process handling without vLLM: fake worker processes and stub handles.
Deadlines on every write and wait, keys kept out of child environments, each device's own
memory share (the Ray engine's counterparts: test_cluster.py)."""

import logging
import os
import subprocess
import sys
import threading
import time

import pytest

from symoe.generation import EngineTimeout, ModelSettings, local, process

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
    monkeypatch.setattr(process, "WORKER", script)
    w = process.Worker(dict(os.environ), tmp_path / "w.log", preimport=False)
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
    w = process.Worker.__new__(process.Worker)
    w.proc, w.log_path = Unkillable(), tmp_path / "device0-worker1.log"
    w._log = open(w.log_path, "ab")
    eng = local.LocalEngine(0, {}, tmp_path)
    eng.resident["m"] = w
    with caplog.at_level(logging.WARNING, logger="symoe"):
        finished, err = in_thread(eng.close)
    assert finished and err is None, "close() waited for ever on a process that does not exit"
    assert str(Unkillable.pid) in caplog.text and "left behind" in caplog.text


def environ_of(pid):
    """The environment a process started with, from /proc/<pid>/environ."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(x.decode().partition("=")[::2] for x in f.read().split(b"\0") if x)


def pool_with_a_key():
    import dataclasses

    import symoe

    cfg = symoe.Config.bundled("tiny")
    m = dataclasses.replace(cfg.models[0], api_key_env="SYMOE_TEST_SECRET_KEY")
    return dataclasses.replace(cfg, models=(m, *cfg.models[1:]))


def test_children_do_not_inherit_the_pools_api_keys(tmp_path, monkeypatch):
    from symoe.generation import vllm_server
    from symoe.generation.served import ServedEngine

    monkeypatch.setenv("SYMOE_TEST_SECRET_KEY", "sk-do-not-leak")
    monkeypatch.setenv("SYMOE_TEST_PLAIN", "kept")
    script = tmp_path / "hung_worker.py"
    script.write_text(HUNG_WORKER)
    monkeypatch.setattr(process, "WORKER", script)
    cfg = pool_with_a_key()
    eng = local.LocalEngine.for_config(cfg, 0, tmp_path)  # a worker process: the warm spare
    try:
        eng.prepare()
        env = environ_of(eng.spare.proc.pid)
    finally:
        eng.close()
    assert "SYMOE_TEST_SECRET_KEY" not in env and env.get("SYMOE_TEST_PLAIN") == "kept"
    # A vLLM server process (its command replaced by a sleeping Python: the environment is the point)
    monkeypatch.setattr(vllm_server, "server_command", lambda model, port: [sys.executable, "-c", "import time; time.sleep(60)"])
    served = ServedEngine.for_config(cfg, 0, tmp_path, {cfg.names[0]})
    srv = vllm_server.Server.start(ModelSettings(cfg.names[0], "unused"), 1, served.env, tmp_path / "server.log")
    try:
        env = environ_of(srv.proc.pid)
    finally:
        srv.stop(0)
    assert "SYMOE_TEST_SECRET_KEY" not in env and env.get("SYMOE_TEST_PLAIN") == "kept"


class RecordingWorker:
    """Stands in for a worker process: keeps what it was sent."""

    def __init__(self):
        self.sent = []

    def wait_ready(self, what, deadline):
        pass

    def request(self, msg, what, deadline, on_event=None):
        self.sent.append(msg)
        return {"ok": True}


def test_each_device_gets_the_memory_share_of_its_own_memory(tmp_path):
    import dataclasses

    import symoe
    from symoe.config.pool import GB
    from symoe.execution.launch import plan_engines

    cfg = symoe.Config.bundled("paper16").with_devices(1, memory_gb=80)
    cfg = dataclasses.replace(cfg, devices=(cfg.devices[0], dataclasses.replace(cfg.devices[0], memory_bytes=40 * GB)))
    m = cfg.models[0]
    engines = plan_engines(cfg, tmp_path)
    shares = []
    for eng in engines:
        w = RecordingWorker()
        eng._new_worker = lambda env=None, w=w: w
        eng.load(ModelSettings.of(cfg, m.name), f"load {m.name}", float("inf"), keep_spare=False)
        shares.append(w.sent[0]["model"]["gpu_memory_utilization"])
    assert shares == pytest.approx([m.resident_bytes / (80 * GB), m.resident_bytes / (40 * GB)])
