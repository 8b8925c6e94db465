"""The remote engine against a small misbehaving OpenAI-like server on 127.0.0.1 (500, 429 then
200, malformed JSON, hangs, dropped connections): retries where sensible, then a clear error
naming model and URL; nothing that arrived is lost; a rerun resumes; the API key never reaches
the run directory."""

import threading
import time

import pytest

from openai_fake_server import FakeOpenAI
from symoe.generation import EngineError, EngineTimeout, ModelSettings
from symoe.generation.engine import Clock
from symoe.generation.remote import EndpointSettings, RemoteEngine, public_url
from symoe.generation.requests import Request, SamplingParams
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
