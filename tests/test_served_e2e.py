"""Real vLLM CPU OpenAI-compatible servers on 127.0.0.1 with SmolLM2-135M-Instruct: a server
symoe starts as the engine of one pool entry (load -> generate -> unload), and an already-running
server used as a remote expert beside a local model in one plan and one store. Few tests: each
server start costs about a minute on two cores."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

import symoe
from conftest import DATA
from symoe.datasets import load_questions
from symoe.generation import EngineError, ModelSettings, Sampling, SamplingParams
from symoe.generation.engine import Clock
from symoe.generation.local import engine_env
from symoe.generation.requests import Request
from symoe.generation.served import ServedEngine, free_port, server_command
from symoe.models import fetch_tiny

SMOL = "SmolLM2-135M-Instruct"
START_S = 600  # a server start on a busy two-core machine, at most


@pytest.fixture(scope="module")
def smol_config():
    return symoe.Config.from_toml(fetch_tiny([SMOL]))


def chat_requests(n, seed0=7):
    return [Request(f"served-{i:03d}", SMOL, "expert", 0, f"q{i}", SamplingParams(0.7, 16, seed0 + i),
                    ({"role": "user", "content": f"What is {i} plus {i}?"},)) for i in range(n)]


def group_alive(pid):
    try:
        os.killpg(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_symoe_started_server_load_generate_unload(smol_config, tmp_path):
    ms = ModelSettings.of(smol_config, SMOL)
    eng = ServedEngine.for_config(smol_config, 0, tmp_path / "logs", {SMOL})
    clock = Clock()
    try:
        info = eng.load(ms, "step 0 (load)", clock.now() + START_S)
        assert eng.alive(SMOL)
        log = Path(info["log"])
        assert log.parent == tmp_path / "logs" and "--host 127.0.0.1" in log.read_text().splitlines()[0]
        # Listening on 127.0.0.1 only: the health endpoint answers there.
        assert httpx.get(f"http://127.0.0.1:{info['port']}/health", timeout=10).status_code == 200
        rs = chat_requests(4)
        got = []
        b = eng.generate(SMOL, rs, got.append, "step 1 (run)", clock.now() + 300)
        assert sorted(g.key for g in got) == sorted(r.key for r in rs)
        assert b.generated == 4 and b.tokens > 0 and all(g.text.strip() and g.tokens > 0 for g in got)
        # The per-request seed is honoured: the same request gives the same text again.
        again = []
        eng.generate(SMOL, rs[:2], again.append, "step 2 (run)", clock.now() + 300)
        first = {g.key: g.text for g in got}
        assert all(first[g.key] == g.text for g in again)
        pid = info["pid"]
        eng.unload(SMOL, "step 3 (unload)", clock.now() + 60)
        assert not eng.alive(SMOL)
        end = time.monotonic() + 30
        while group_alive(pid) and time.monotonic() < end:
            time.sleep(0.2)
        assert not group_alive(pid)  # the server and its engine-core process are gone
        with pytest.raises(EngineError, match="no running server"):
            eng.generate(SMOL, rs, got.append, "after unload", clock.now() + 10)
    finally:
        eng.close()


def test_server_that_dies_at_start_quotes_its_log(smol_config, tmp_path):
    bad = ModelSettings(SMOL, str(tmp_path / "no-such-model"), platform="cpu", dtype="float32", max_model_len=512,
                        enforce_eager=True)
    eng = ServedEngine.for_config(smol_config, 0, tmp_path / "logs", {SMOL})
    try:
        with pytest.raises(EngineError) as ei:
            eng.load(bad, "step 0 (load)", Clock().now() + START_S)
    finally:
        eng.close()
    msg = str(ei.value)
    assert "exited with code" in msg and "server log" in msg and str(tmp_path / "logs") in msg


@pytest.fixture(scope="module")
def running_server(smol_config, tmp_path_factory):
    """A vLLM server started outside symoe (as a user would), for the remote-expert test."""
    ms = ModelSettings.of(smol_config, SMOL)
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    cmd = server_command(ms, port)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=engine_env("cpu", 0, 1), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        end = time.monotonic() + START_S
        while time.monotonic() < end:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"server not healthy in {START_S} s:\n{log.read_text()[-3000:]}")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
