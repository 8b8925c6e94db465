"""The remote engine against a small misbehaving OpenAI-like server on 127.0.0.1 (500, 429 then
200, malformed JSON, hangs, dropped connections): retries where sensible, then a clear error
naming model and URL; nothing that arrived is lost; a rerun resumes; the API key never reaches
the run directory."""

import threading
import time
from dataclasses import replace

import numpy as np
import pytest

import symoe
from openai_fake_server import FakeOpenAI
from symoe.execution import RunOptions, run_plan
from symoe.generation import EngineError, EngineTimeout, ModelSettings, Sampling
from symoe.generation.endpoint import EndpointSettings, public_url
from symoe.generation.engine import Clock
from symoe.generation.fake import FakeEngine, ScaledClock
from symoe.generation.remote import RemoteEngine
from symoe.method.datasets import Question
from symoe.records import Request, SamplingParams
from symoe.store import Store

FAST = dict(backoff_s=0.01, backoff_max_s=0.05, health_timeout_s=5.0)


def reqs(n, model="m", chat=True, seed0=100):
    out = []
    for i in range(n):
        p = SamplingParams(0.7, 16, seed0 + i)
        if chat:
            out.append(Request(f"k{i:04d}" + "0" * 8, model, "expert", 0, f"q{i}", p, ({"role": "user", "content": f"Q{i}"},)))
        else:
            out.append(Request(f"k{i:04d}" + "0" * 8, model, "expert", 0, f"q{i}", p, None, f"Q{i}\nA:"))
    return out


def engine(srv, **kw):
    s = EndpointSettings("m", srv.url, **{**FAST, **kw})
    e = RemoteEngine(1, s)
    e.load(ModelSettings("m", "m"), "load m", Clock().now() + 30)
    return e


def collect(e, rs, deadline_s=60.0):
    got = []
    try:
        info = e.generate("m", rs, got.append, "step 1 (run m on device 1)", Clock().now() + deadline_s)
    except EngineError as err:
        return got, None, err
    return got, info, None


def test_retries_500_429_malformed_close_then_answers():
    script = ["500", "429", "malformed", "close", "500"]
    with FakeOpenAI(script=script) as srv:
        e = engine(srv, max_concurrency=2)
        try:
            rs = reqs(6)
            got, info, err = collect(e, rs)
        finally:
            e.close()
    assert err is None
    assert sorted(g.key for g in got) == sorted(r.key for r in rs)
    assert info.generated == 6 and info.tokens == 6 * 7 and info.prompt_tokens == 6 * 11
    assert e.retries == len(script)  # one retry per scripted fault, none more
    # The per-request seed is sent, and each answer belongs to its own request.
    seeds = sorted(b["seed"] for b in srv.requests if b.get("seed") is not None)
    assert set(seeds) == {r.params.seed for r in rs}
    assert all(g.text.startswith(f"seed {r.params.seed}:") for r in rs for g in got if g.key == r.key)
    assert all(b["model"] == "m" and "messages" in b for b in srv.requests)


def test_an_error_event_mid_stream_is_retried_unstreamed():
    # An SSE {"error": ...} event (the openai library raises a bare APIError) after two chunks: the
    # request is tried again unstreamed, as a malformed streamed answer is, not the batch failed.
    from symoe.generation.openai_client import RemoteClient

    seen = []
    with FakeOpenAI(script=["stream_error"]) as srv:
        client = RemoteClient(EndpointSettings("m", srv.url, **FAST))
        try:
            [r] = reqs(1)
            ev = client.request(r, Clock().now() + 30, Clock(), threading.Event(), lambda key, text: seen.append(text))
        finally:
            client.close()
    assert ev["text"] == f"seed {r.params.seed}: the answer is (A)" and ev["tokens"] == 7
    assert seen and seen[-1] != ev["text"]  # the stream's first words arrived before its error
    assert client.retries == 1 and [b.get("stream", False) for b in srv.requests] == [True, False]


def test_completion_endpoint_and_served_name():
    with FakeOpenAI(models=["org/served-id"]) as srv:
        s = EndpointSettings("m", srv.url, served_name="org/served-id", chat=False, **FAST)
        e = RemoteEngine(1, s)
        try:
            e.load(ModelSettings("m", "m", chat=False), "load", Clock().now() + 30)
            got, info, err = collect(e, reqs(3, chat=False))
        finally:
            e.close()
    assert err is None and len(got) == 3 and all(g.finish == "length" for g in got)
    assert all(b["model"] == "org/served-id" and b["prompt"].endswith("A:") for b in srv.requests)


def test_persistent_failure_names_model_and_url_and_keeps_what_arrived(tmp_path):
    # Three answers, then the server fails for good: the error names model and URL; the three
    # that arrived are handed over (stored); a rerun against a healed server does only the rest.
    with FakeOpenAI(script=["ok", "ok", "ok"], default="500") as srv:
        e = engine(srv, max_concurrency=1, max_attempts=3)
        rs = reqs(8)
        with Store(tmp_path / "s.sqlite") as store:
            got = []
            with pytest.raises(EngineError) as ei:
                e.generate("m", rs, lambda g: (store.put(g), got.append(g)), "step 3 (run m on device 1)",
                           Clock().now() + 60)
            e.close()
            msg = str(ei.value)
            assert "model m" in msg and public_url(srv.url) in msg and "3 attempt" in msg and "500" in msg
            assert "step 3" in msg
            assert len(got) == 3 and store.count() == 3
            assert srv.served == 3 and len(srv.requests) == 3 + 3  # no new request after the failure
            srv.default = "ok"  # healed: rerun what the store lacks
            e2 = engine(srv)
            try:
                todo = [r for r in rs if r.key not in store.existing([r.key for r in rs])]
                got2, _, err = collect(e2, todo)
            finally:
                e2.close()
            for g in got2:
                store.put(g)
            assert err is None and len(todo) == 5 and store.count() == 8


def test_not_found_is_not_retried():
    with FakeOpenAI(script=["404"]) as srv:
        e = engine(srv)
        try:
            got, _, err = collect(e, reqs(1))
        finally:
            e.close()
    assert isinstance(err, EngineError) and "404" in str(err) and "model m" in str(err)
    assert len(srv.requests) == 1


def test_hang_is_cut_by_the_request_timeout_then_retried():
    with FakeOpenAI(script=["hang"], hang_s=30) as srv:
        e = engine(srv, request_timeout_s=1.0)
        t0 = time.monotonic()
        try:
            got, _, err = collect(e, reqs(2))
        finally:
            e.close()
    assert err is None and len(got) == 2 and e.retries == 1
    assert time.monotonic() - t0 < 25  # not the 30 s hang


def test_hang_past_the_step_deadline_is_a_timeout_naming_the_endpoint():
    with FakeOpenAI(default="hang", hang_s=30) as srv:
        e = engine(srv, max_attempts=100)
        t0 = time.monotonic()
        try:
            got, _, err = collect(e, reqs(3), deadline_s=2.0)
        finally:
            e.close()
    assert isinstance(err, EngineTimeout) and "model m" in str(err) and public_url(srv.url) in str(err)
    assert got == [] and time.monotonic() - t0 < 20


def test_concurrency_is_bounded_by_max_concurrency():
    with FakeOpenAI(delay_s=0.2) as srv:
        e = engine(srv, max_concurrency=3)
        try:
            got, _, err = collect(e, reqs(12))
        finally:
            e.close()
    assert err is None and len(got) == 12 and srv.peak == 3


def test_on_done_runs_on_the_calling_thread_as_each_arrives():
    with FakeOpenAI(delay_s=0.1) as srv:
        e = engine(srv, max_concurrency=1)
        seen = []
        try:
            e.generate("m", reqs(3), lambda g: seen.append((threading.get_ident(), srv.served)), "run",
                       Clock().now() + 60)
        finally:
            e.close()
    assert {t for t, _ in seen} == {threading.get_ident()}
    assert [n for _, n in seen][0] < 3  # the first one was handed over before the last was served


def test_unreachable_or_wrong_model_fails_fast_with_a_clear_error():
    with FakeOpenAI(down=True) as srv:
        e = RemoteEngine(1, EndpointSettings("m", srv.url, **FAST))
        with pytest.raises(EngineError) as ei:
            e.prepare()
        e.close()
    assert "model m" in str(ei.value) and public_url(srv.url) in str(ei.value) and "does not answer" in str(ei.value)
    with FakeOpenAI(models=["other"]) as srv:
        e = RemoteEngine(1, EndpointSettings("m", srv.url, **FAST))
        with pytest.raises(EngineError, match="does not serve 'm'.*'other'"):
            e.load(ModelSettings("m", "m"), "load", Clock().now() + 10)
        e.close()


def test_api_key_is_sent_but_never_in_errors(monkeypatch):
    key = "sk-test-NEVER-WRITE-ME-1234567890"
    monkeypatch.setenv("SYMOE_TEST_KEY", key)
    with FakeOpenAI(script=["ok"], default="404") as srv:
        e = engine(srv, api_key_env="SYMOE_TEST_KEY")
        try:
            got, _, err = collect(e, reqs(2))
        finally:
            e.close()
    assert srv.auth and all(a == f"Bearer {key}" for a in srv.auth)
    assert isinstance(err, EngineError) and key not in str(err) and len(got) == 1
    monkeypatch.delenv("SYMOE_TEST_KEY")
    e = RemoteEngine(1, EndpointSettings("m", srv.url, api_key_env="SYMOE_TEST_KEY", **FAST))
    with pytest.raises(EngineError, match="SYMOE_TEST_KEY .*not set"):
        e.prepare()


def test_settings_are_checked():
    with pytest.raises(ValueError, match="max_concurrency"):
        EndpointSettings("m", "http://127.0.0.1:1/v1", max_concurrency=0)
    with pytest.raises(ValueError, match="http"):
        EndpointSettings("m", "127.0.0.1:1/v1")
    assert public_url("http://user:pw@h:8/v1") == "http://h:8/v1"


# --- whole runs: an endpoint beside a local (fake) model, one plan, one store -----------------

def mixed_config(url, key_env=None, aggregator_remote=True):
    remote = {"name": "m", "endpoint": url, "max_concurrency": 4, "decode_tps": 500.0, "stream_tps": 100.0}
    if key_env:
        remote["api_key_env"] = key_env
    local = {"name": "L", "weight_gb": 1.0, "load_s": 0.05, "unload_s": 0.01, "decode_tps": 1e6, "stream_tps": 1e6}
    return symoe.Config.from_dict({"devices": {"count": 1, "memory_gb": 8.0, "overlap_load": False},
                                   "tokens": {"expert_output": 10, "aggregate_output": 10},
                                   "model": [local, remote]})


def questions(n):
    return [Question(f"q{i}", f"Question {i}?\n(A) yes\n(B) no", "A", "letter") for i in range(n)]


def mixed_plan(cfg, qs, aggregator="m"):
    prof = symoe.Profiles(cfg.names, ("any",), np.zeros((len(cfg.names), 1), dtype=np.int64))
    a = symoe.route(prof, [[] for _ in qs], k=2, rare_threshold=0, question_ids=[q.id for q in qs])
    p = symoe.plan(a, cfg, aggregator=aggregator)
    p.question_hashes = tuple(q.text_hash for q in qs)
    return p


def mixed_run(p, qs, tmp_path, run="run", store="store.sqlite", retries=0, **endpoint):
    clock = ScaledClock(1.0)  # real seconds: the remote engine's deadlines and the scheduler's agree
    fake = FakeEngine(0, p.config, clock)
    remote = RemoteEngine(1, replace(EndpointSettings.of(p.config.model("m")), **{**FAST, **endpoint}), clock)
    with Store(tmp_path / store) as st:
        try:
            r = run_plan(p, qs, st, tmp_path / run, Sampling(max_tokens=10, aggregate_max_tokens=10),
                         options=RunOptions(progress=False, pictures=False, retries=retries), engines=[fake, remote],
                         clock=clock)
        except EngineError as e:
            return None, fake, remote, e, st.count("expert"), st.count("aggregate")
        return r, fake, remote, None, st.count("expert"), st.count("aggregate")


def test_plan_puts_the_endpoint_on_its_own_device():
    cfg = mixed_config("http://127.0.0.1:9/v1")
    for agg in ("m", "L"):
        p = mixed_plan(cfg, questions(12), agg)
        p.validate()
        assert [d.endpoint for d in p.config.devices] == [None, "m"]
        a = p.arrays
        names = np.array(p.config.names)[a.model]
        assert set(names[a.device == 0]) == {"L"} and set(names[a.device == 1]) == {"m"}
        assert p.lower_bound <= p.makespan + 1e-9
        p2 = symoe.Plan.from_json_text(p.to_json())  # the plan file keeps the virtual device
        assert [d.endpoint for d in p2.config.devices] == [None, "m"] and p2.makespan == pytest.approx(p.makespan)


def test_mixed_run_stores_everything_and_a_rerun_reuses_it(tmp_path):
    qs = questions(10)
    with FakeOpenAI() as srv:
        p = mixed_plan(mixed_config(srv.url), qs)
        r, fake, _, err, n_exp, n_agg = mixed_run(p, qs, tmp_path)
        assert err is None and n_exp == 20 and n_agg == 10 and r.generated == 30
        remote_experts = int(np.sum(p.experts == p.config.index("m")))
        assert 0 < remote_experts < 20 and len(srv.requests) == remote_experts + 10  # and every aggregation
        assert {op for op, m in fake.calls if m == "m"} == set()  # the local engine never saw the endpoint model
        r2, _, _, err2, _, _ = mixed_run(p, qs, tmp_path, run="run2")
        assert err2 is None and r2.generated == 0 and r2.reused == 30 and len(srv.requests) == remote_experts + 10


def test_failing_endpoint_stops_the_run_keeps_what_arrived_and_a_rerun_resumes(tmp_path):
    qs = questions(10)
    with FakeOpenAI(script=["ok"] * 4, default="500") as srv:
        p = mixed_plan(mixed_config(srv.url), qs)
        r, _, _, err, n_exp, n_agg = mixed_run(p, qs, tmp_path)
        assert r is None and "model m" in str(err) and public_url(srv.url) in str(err)
        stored = n_exp + n_agg
        assert srv.served == 4 and stored >= 4  # the local model's answers and the 4 that arrived
        srv.default = "ok"
        r2, _, _, err2, n_exp, n_agg = mixed_run(p, qs, tmp_path, run="run2")
        assert err2 is None and n_exp == 20 and n_agg == 10
        assert r2.reused == stored and r2.generated == 30 - stored


def test_endpoint_down_at_start_fails_before_any_local_model_loads(tmp_path):
    qs = questions(4)
    with FakeOpenAI(down=True) as srv:
        p = mixed_plan(mixed_config(srv.url), qs, aggregator="L")
        r, fake, _, err, n_exp, _ = mixed_run(p, qs, tmp_path)
    assert r is None and "does not answer" in str(err) and "model m" in str(err) and public_url(srv.url) in str(err)
    assert [c for c in fake.calls if c[0] == "load"] == [] and n_exp == 0


def test_api_key_never_reaches_the_run_directory(tmp_path, monkeypatch):
    key = "sk-fake-7f3a9c1e-DO-NOT-STORE-0042"
    monkeypatch.setenv("SYMOE_TEST_API_KEY", key)
    qs = questions(6)
    with FakeOpenAI(script=["echo500"]) as srv:
        cfg = mixed_config(srv.url, key_env="SYMOE_TEST_API_KEY")
        p = mixed_plan(cfg, qs)
        (tmp_path / "run").mkdir()
        p.to_json(tmp_path / "run" / "plan.json")  # the plan file names the variable, never the key
        assert "SYMOE_TEST_API_KEY" in (tmp_path / "run" / "plan.json").read_text()
        r, _, remote, err, n_exp, n_agg = mixed_run(p, qs, tmp_path / "run", run="out", store="store.sqlite")
        assert err is None and n_exp == 12 and n_agg == 6 and remote.retries == 1
        assert srv.auth and all(a == f"Bearer {key}" for a in srv.auth)  # the key is sent ...
        srv.default = "echo500"  # ... and a failure that echoes it does not carry it into the error
        r2, _, _, err2, _, _ = mixed_run(mixed_plan(cfg, questions(7)), questions(7), tmp_path / "run", run="out2")
    assert err2 is not None and key not in str(err2) and "***" in str(err2)
    (tmp_path / "run" / "error.txt").write_text(str(err2))
    files = [f for f in (tmp_path / "run").rglob("*") if f.is_file()]
    assert len(files) >= 4  # plan, store (and its WAL), run log, report
    for f in files:
        assert key.encode() not in f.read_bytes(), f


def test_pipeline_stages_send_an_endpoint_model_to_its_server(tmp_path):
    # Keywords, profiling and aggregator selection go through generate_jobs: the endpoint model's
    # requests reach its server; nothing is loaded in-process for it.
    from symoe.execution.launch import stage_engine
    from symoe.generation.batch import generate_jobs
    from symoe.method.requests import Requests

    with FakeOpenAI() as srv:
        cfg = mixed_config(srv.url)
        reqs = [Requests(cfg, Sampling(max_tokens=10)).expert("m", q, 0) for q in questions(5)]
        with Store(tmp_path / "s.sqlite") as store:
            got = generate_jobs(cfg, [("m", reqs)], store, stage_engine(cfg, tmp_path / "run" / "logs"), progress=False)
    assert len(got) == 5 and len(srv.requests) == 5
    assert not list((tmp_path / "run").rglob("*worker*.log"))  # no in-process worker was started


def test_symoe_run_on_a_pool_of_endpoints_keeps_the_key_out_of_the_run_dir(tmp_path):
    # The whole CLI pipeline (keywords, matching, routing, planning, execution) with every model
    # behind the test server; the tiny pool's names, so the bundled profiles apply.
    import os
    import subprocess
    import sys

    key = "sk-cli-fake-SECRET-5150"
    names = ["SmolLM2-135M-Instruct", "Qwen2.5-Coder-0.5B-Instruct", "gemma-3-270m"]
    with FakeOpenAI(models=names) as srv:
        pool = '[engine]\nplatform = "cpu"\nmax_tokens = 32\n[devices]\ncount = 1\nmemory_gb = 8.0\n'
        for n in names:
            pool += (f'\n[[model]]\nname = "{n}"\nendpoint = "{srv.url}"\napi_key_env = "SYMOE_CLI_KEY"\n'
                     f'chat = {"false" if n.startswith("gemma") else "true"}\n')
        (tmp_path / "pool.toml").write_text(pool)
        out = subprocess.run([sys.executable, "-m", "symoe.cli", "run", "--config", str(tmp_path / "pool.toml"),
                              "--limit", "4", "--out", str(tmp_path / "out"), "--store", str(tmp_path / "out" / "s.sqlite")],
                             env=dict(os.environ, SYMOE_CLI_KEY=key), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert all(a == f"Bearer {key}" for a in srv.auth) and len(srv.requests) >= 4 * 3 + 4
    with Store(tmp_path / "out" / "s.sqlite") as st:
        assert st.count("expert") == 12 and st.count("aggregate") == 4
    files = [f for f in (tmp_path / "out").rglob("*") if f.is_file()]
    assert any(f.name == "results.jsonl" for f in files)
    assert key not in out.stdout + out.stderr
    for f in files:
        assert key.encode() not in f.read_bytes(), f


def test_run_retries_recover_from_an_endpoint_outage(tmp_path):
    # Two 500s in a row exhaust one request's two attempts; with --retries 1 the scheduler checks
    # the endpoint again and redoes only what the store lacks.
    qs = questions(6)
    with FakeOpenAI(script=["500"] * 2) as srv:
        p = mixed_plan(mixed_config(srv.url), qs)
        r, _, remote, err, n_exp, n_agg = mixed_run(p, qs, tmp_path, retries=1, max_attempts=2, max_concurrency=1)
    assert err is None and n_exp == 12 and n_agg == 6
    assert r.retries == 1 and r.generated == 18 and srv.served == len(srv.requests) - 2
