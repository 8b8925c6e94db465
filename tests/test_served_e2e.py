"""Real vLLM CPU OpenAI-compatible servers on 127.0.0.1 with SmolLM2-135M-Instruct: a server
symoe starts as the engine of one pool entry (load -> generate -> unload), and an already-running
server used as a remote expert beside a local model in one plan and one store. Few tests: each
server start costs about a minute on two cores."""

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

import symoe
from conftest import data_file
from symoe.execution import RunOptions, run_plan
from symoe.generation import EngineError, ModelSettings, Sampling, SamplingParams
from symoe.generation.engine import Clock
from symoe.generation.process import engine_env
from symoe.generation.served import ServedEngine
from symoe.generation.vllm_server import free_port, server_command
from symoe.method.datasets import load_questions
from symoe.models.fetch import fetch_tiny
from symoe.records import Request
from symoe.store import Store

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
        assert httpx.get(f"http://127.0.0.1:{info['port']}/health", timeout=10).status_code == 200
        # Listening on 127.0.0.1 only: every listening socket of the server and its children is bound there.
        server = psutil.Process(info["pid"])
        listening = [c.laddr for proc in [server, *server.children(recursive=True)]
                     for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert ("127.0.0.1", info["port"]) in [(a.ip, a.port) for a in listening]
        assert all(a.ip == "127.0.0.1" for a in listening), listening
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


def test_mixed_pool_in_process_served_and_remote_in_one_plan(smol_config, running_server, tmp_path):
    """One plan, one store: SmolLM2 in-process, as a server symoe starts, and behind an endpoint
    started outside symoe; the run completes and every generation is stored."""
    base = fetch_tiny([SMOL]).read_text()
    path = smol_config.model(SMOL).path
    extra = (f'\n[[model]]\nname = "smol-served"\npath = "{path}"\nweight_gb = 0.54\nload_s = 40.0\nserve = "vllm"\n'
             f'\n[[model]]\nname = "smol-remote"\nendpoint = "{running_server}"\nserved_name = "{SMOL}"\n'
             f'max_concurrency = 4\ndecode_tps = 60.0\n')
    (tmp_path / "pool.toml").write_text(base + extra)
    cfg = symoe.Config.from_toml(tmp_path / "pool.toml")
    qs = load_questions(data_file("MMLU_Pro_test.json"), limit=3)
    prof = symoe.Profiles(cfg.names, ("any",), np.zeros((len(cfg.names), 1), dtype=np.int64))
    a = symoe.route(prof, [[] for _ in qs], k=3, rare_threshold=0, question_ids=[q.id for q in qs])
    p = symoe.plan(a, cfg, aggregator="smol-remote")
    p.question_hashes = tuple(q.text_hash for q in qs)
    assert [d.endpoint for d in p.config.devices] == [None, "smol-remote"]
    used = {cfg.names[m] for m in np.unique(p.experts)}
    with Store(tmp_path / "store.sqlite") as store:
        r = run_plan(p, qs, store, tmp_path / "run", Sampling(max_tokens=16, aggregate_max_tokens=16),
                     options=RunOptions(progress=False, pictures=False))
        assert store.count("expert") == 9 and store.count("aggregate") == 3
        by_model = {store.get(k).model for k in store.all_keys()}
    assert used == set(cfg.names)  # all three ways of hosting a model take part (routing is seeded)
    assert r.generated == 12 and by_model == used
    assert list((tmp_path / "run" / "logs").glob("device0-smol-served-server*.log"))  # the server's log is kept
    kinds = {(s.kind.label, s.model) for s in r.steps}
    assert {("load", m) for m in used} <= kinds and ("unload", "smol-served") in kinds
