"""``symoe serve``: the mixture behind an OpenAI-compatible API on 127.0.0.1, with the fake engine
(cost-model times on a scaled clock), with a pool of fake OpenAI endpoints, and once with the
tiny real CPU pool. Keyword matching uses the real NumPy all-MiniLM embedder."""

import json
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import httpx
import numpy as np
import openai
import psutil
import pytest

import symoe
from openai_fake_server import FakeOpenAI
from symoe.evaluation.from_store import export_rows
from symoe.execution.launch import stage_engine
from symoe.generation import seed_for
from symoe.generation.fake import FakeEngine, Fault, ScaledClock
from symoe.method.datasets import bundled, load_questions
from symoe.method.matching import Embedder
from symoe.method.routing import Profiles
from symoe.serve import Limits, Mixture, MixtureServer
from symoe.serve.protocol import question_of
from symoe.store import Store

NAMES = ["SmolLM2-135M-Instruct", "Qwen2.5-Coder-0.5B-Instruct", "gemma-3-270m"]
AGG = KW = "Qwen2.5-Coder-0.5B-Instruct"
MODEL = "symoe-mmlu_pro"
POOL = """[engine]
platform = "gpu"
max_tokens = 64
[devices]
count = 1
memory_gb = {memory}
[tokens]
expert_prompt = 350
expert_output = 200
aggregate_prompt = 1000
aggregate_output = 200
"""


def pool_toml(tmp_path, memory=80.0, endpoint=None):
    text = POOL.format(memory=memory)
    for n in NAMES:
        text += f'\n[[model]]\nname = "{n}"\nweight_gb = 2.0\nload_s = 5.0\n'
        text += f'chat = {"false" if n.startswith("gemma") else "true"}\n'
        if endpoint:
            text += f'endpoint = "{endpoint}"\n'
    p = tmp_path / "pool.toml"
    p.write_text(text)
    return p


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


@pytest.fixture(scope="module")
def profiles():
    return Profiles.from_json(bundled("tiny_profiles.json"))


def prompts(n):
    qs = load_questions(bundled("mmlu_pro_sample.json"))
    return [q.text for q in qs[:n]]


@pytest.fixture(scope="module")
def shared(tmp_path_factory, embedder, profiles):
    """One server for the tests that need no engine or window of their own (fake engine, instant;
    body limit 4 KiB, max_tokens 64): started once for the module, not once per test."""
    tmp = tmp_path_factory.mktemp("shared")
    cfg = symoe.Config.from_toml(pool_toml(tmp))
    with Store(tmp / "s.sqlite") as store, serving(cfg, FakeEngine(0, cfg, ScaledClock(0.0)), store, embedder, profiles,
                                                  limits=Limits(max_body_bytes=4096, max_tokens=64)) as (srv, _):
        yield srv


@contextmanager
def serving(cfg, engine, store, embedder, profiles, window_s=0.05, api_key=None, limits=Limits(), together=None, **kw):
    """A server on a free port. ``together``: a window that closes the moment that many requests are in
    (max_batch; its 30 s length is only a guard), so a test waits for no window to run out."""
    if together:
        window_s, kw["max_batch"] = 30.0, together
    mix = Mixture(cfg, profiles, KW, AGG, engine, store, window_s=window_s, embedder=embedder, **kw)
    mix.start()
    srv = MixtureServer(mix, MODEL, "127.0.0.1", 0, limits, api_key)
    srv.serve_in_thread()
    try:
        yield srv, mix
    finally:
        srv.close(5.0)
        engine.close()


def ask_all(url, texts, seeds=None, key="none", details=True):
    """Every prompt from its own thread at once (a barrier), through the openai client."""
    clients = [openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=120) for _ in texts]
    out = [None] * len(texts)
    barrier = threading.Barrier(len(texts))

    def one(i):
        barrier.wait()
        kw = {"seed": seeds[i]} if seeds else {}
        out[i] = clients[i].chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": texts[i]}], extra_body={"symoe": {"details": details}},
            **kw)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert all(o is not None for o in out), "a request got no answer"
    return out


def test_16_concurrent_requests_fake_engine_one_window_batched_by_expert(tmp_path, embedder, profiles):
    cfg = symoe.Config.from_toml(pool_toml(tmp_path))
    eng = FakeEngine(0, cfg, ScaledClock(0.0))
    texts = prompts(16)
    with Store(tmp_path / "s.sqlite") as store:
        with serving(cfg, eng, store, embedder, profiles, together=16) as (srv, mix):
            out = ask_all(srv.url, texts)
            rows = list(export_rows(store, []))
        final = {(r["question"]): r["text"] for r in rows if r["role"] == "aggregate"}
        assert store.count("keywords") == 16 * 5 and store.count("expert") == 16 * 3 and store.count("aggregate") == 16
    for text, r in zip(texts, out):
        d = r.model_extra["symoe"]
        # The right answer on the right request: the stored aggregation of this very prompt.
        assert d["question"] == question_of(text).id
        assert r.choices[0].message.content == final[d["question"]]
        assert len(d["experts"]) == 3 and d["aggregator"] == AGG and d["model_calls"] == 5 + 3 + 1
        assert r.usage.completion_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # One window; one batch per model and role in it, not one per request.
    assert mix.windows == 1
    gens = [c for c in mix.calls]
    experts = {e["model"] for r in out for e in r.model_extra["symoe"]["experts"]}
    assert len(gens) == 1 + len(experts) + 1
    assert [(c.role, c.requests) for c in gens if c.role != "expert"] == [("keywords", 80), ("aggregate", 16)]
    assert sum(op == "generate" for op, _ in eng.calls) == len(gens)


def test_window_zero_runs_one_pass_per_request(tmp_path, embedder, profiles):
    cfg = symoe.Config.from_toml(pool_toml(tmp_path))
    eng = FakeEngine(0, cfg, ScaledClock(0.0))
    with Store(tmp_path / "s.sqlite") as store, serving(cfg, eng, store, embedder, profiles, window_s=0) as (srv, mix):
        ask_all(srv.url, prompts(4))
    assert mix.windows == 4 and all(c.requests == (5 if c.role == "keywords" else 1) for c in mix.calls
                                    if c.role != "expert")


def test_pool_of_endpoints_16_concurrent_requests(tmp_path, embedder, profiles):
    with FakeOpenAI(models=NAMES) as fake:
        cfg = symoe.Config.from_toml(pool_toml(tmp_path, endpoint=fake.url))
        eng = stage_engine(cfg, tmp_path / "logs")
        texts, seeds = prompts(16), list(range(100, 116))
        with Store(tmp_path / "s.sqlite") as store, serving(cfg, eng, store, embedder, profiles, together=16) as (srv, _):
            out = ask_all(srv.url, texts, seeds)
    for text, seed, r in zip(texts, seeds, out):
        # The fake endpoint echoes the sampling seed, which only this request's aggregation has.
        want = seed_for(seed, question_of(text).id, "aggregate", 0)
        assert r.choices[0].message.content == f"seed {want}: the answer is (A)"
    assert len(fake.requests) == 16 * (5 + 3 + 1)


def test_bad_input_is_a_4xx_and_the_server_keeps_serving(shared):
    base = shared.url
    ok = {"model": MODEL, "messages": [{"role": "user", "content": "What is 2+2?"}]}
    cases = [
        (b"{not json", 400, None), (json.dumps([1, 2]).encode(), 400, None),
        (json.dumps({**ok, "model": "gpt-4"}).encode(), 404, "model"),
        (json.dumps({"model": MODEL}).encode(), 400, "messages"),
        (json.dumps({"model": MODEL, "messages": [{"role": "system", "content": "x"}]}).encode(), 400, "messages"),
        (json.dumps({**ok, "max_tokens": 65}).encode(), 400, "max_tokens"),
        (json.dumps({**ok, "max_tokens": "many"}).encode(), 400, "max_tokens"),
        (json.dumps({**ok, "stream": "yes"}).encode(), 400, "stream"),
        (json.dumps({**ok, "pad": "x" * 5000}).encode(), 413, None),
    ]
    with httpx.Client(timeout=30) as c:
        for body, status, param in cases:
            r = c.post(base + "/chat/completions", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == status, (body[:60], r.text)
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["param"] == param
        assert c.post(base + "/completions", json={"model": MODEL}).status_code == 400
        assert c.post(base + "/nowhere", json=ok).status_code == 404
        assert c.get(base + "/models").json()["data"][0]["id"] == MODEL
        # still serving, both endpoints
        assert c.post(base + "/chat/completions", json=ok).json()["choices"][0]["message"]["content"]
        r = c.post(base + "/completions", json={"model": MODEL, "prompt": "What is 3+4?", "max_tokens": 8})
        assert r.status_code == 200 and r.json()["object"] == "text_completion" and r.json()["choices"][0]["text"]


def test_client_key(shared, monkeypatch):
    monkeypatch.setattr(shared, "api_key", "sk-serve")  # the shared server, with a key for this test only
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=shared.url, api_key="wrong", max_retries=0).models.list()
    assert httpx.get(shared.url + "/models").status_code == 401
    assert ask_all(shared.url, ["What is 1+1?"], key="sk-serve")[0].choices[0].message.content


def test_engine_fault_fails_only_its_requests_and_the_expert_is_reloaded(tmp_path, embedder, profiles):
    cfg = symoe.Config.from_toml(pool_toml(tmp_path))
    victim = "SmolLM2-135M-Instruct"
    eng = FakeEngine(0, cfg, ScaledClock(0.0), [Fault("die", "generate", victim)])
    texts = prompts(12)
    with Store(tmp_path / "s.sqlite") as store, serving(cfg, eng, store, embedder, profiles, together=12) as (srv, _):
        first = ask_all_raw(srv.url, texts)
        again = ask_all_raw(srv.url, texts)
    failed = [i for i, (code, _) in enumerate(first) if code != 200]
    assert failed and len(failed) < len(texts)
    assert all(first[i][0] == 503 and victim in first[i][1]["error"]["message"] for i in failed)
    assert all(victim not in [e["model"] for e in body["symoe"]["experts"]] for code, body in first if code == 200)
    # The next window reloads the expert and answers every request.
    assert all(code == 200 for code, _ in again)
    assert any(victim in [e["model"] for e in body["symoe"]["experts"]] for _, body in again)
    assert [m for op, m in eng.calls if op == "load"].count(victim) == 2


def ask_all_raw(url, texts, timeout=60, **extra):
    out = [None] * len(texts)

    def one(i):
        body = {"model": MODEL, "messages": [{"role": "user", "content": texts[i]}], "symoe": {"details": True}, **extra}
        r = httpx.post(url + "/chat/completions", timeout=timeout, json=body)
        out[i] = (r.status_code, r.json())

    ts = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout + 60)
    assert all(o is not None for o in out), "a request got no answer"
    return out


def test_cli_listens_on_loopback_only_and_drains_on_sigterm(tmp_path, embedder, profiles):
    pool = pool_toml(tmp_path)
    embedder.embed(list(profiles.vocabulary))  # the server finds the vocabulary in its store folder's cache
    np.savez(tmp_path / "embeddings.npz", **embedder.cache)
    cmd = [sys.executable, "-m", "symoe.cli", "serve", "--config", str(pool), "--port", "0", "--fake", "0.02",
           "--window-ms", "50", "--store", str(tmp_path / "s.sqlite"), "--run-dir", str(tmp_path / "run")]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stderr.readline()
        m = re.search(r"at (http://[\d.]+:(\d+)/v1)", line)
        assert m, line + p.stderr.read()
        url, port = m.group(1), int(m.group(2))
        listening = [c for c in psutil.Process(p.pid).net_connections("inet") if c.status == psutil.CONN_LISTEN]
        assert [c.laddr.port for c in listening] == [port] and all(c.laddr.ip == "127.0.0.1" for c in listening)
        got = []
        gold = {"details": True, "gold": "A", "category": "test"}
        t = threading.Thread(target=lambda: got.extend(ask_all_raw(url, prompts(3), symoe=gold)))
        t.start()
        time.sleep(0.3)  # in flight (the fake engine's times at 0.02 real s per second take seconds)
        p.send_signal(signal.SIGTERM)
        t.join(120)
        assert p.wait(60) == 0
    finally:
        if p.poll() is None:
            p.kill()
    assert [code for code, _ in got] == [200, 200, 200]
    with Store(tmp_path / "s.sqlite") as store:
        assert store.count("aggregate") == 3
    # Served answers are in the store as batch runs leave them: `symoe export` lists them, and
    # --run-dir left a run directory `symoe report` reads (the requests gave gold answers).
    from click.testing import CliRunner

    from symoe.cli import main
    out = CliRunner().invoke(main, ["export", "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "x.jsonl")])
    assert out.exit_code == 0, out.output
    rows = [json.loads(ln) for ln in (tmp_path / "x.jsonl").read_text().splitlines()]
    assert sorted(r["question"] for r in rows if r["role"] == "aggregate") == sorted(
        question_of(t).id for t in prompts(3))
    out = CliRunner().invoke(main, ["report", str(tmp_path / "run"), "--json"])
    assert out.exit_code == 0, out.output
    (rep,) = json.loads(out.output)
    right = [b["symoe"]["correct"] for _, b in got]
    assert rep["questions"] == 3 and rep["accuracy"] == sum(right) / 3 and rep["by_category"] == {"test": sum(right) / 3}
    assert rep["calls_per_question"] == 5 + 3 + 1


def test_tiny_real_cpu_pool(tmp_path, embedder):
    # Real vLLM on CPU: SmolLM2 is keyword model, every expert and the aggregator (one load). Minutes on 2 cores.
    from symoe.models.fetch import fetch_tiny
    smol = "SmolLM2-135M-Instruct"
    cfg = symoe.Config.from_toml(fetch_tiny([smol]))
    prof = Profiles.from_dict({smol: Profiles.from_json(bundled("tiny_profiles.json")).to_dict()[smol]})
    eng = stage_engine(cfg, tmp_path / "logs")
    # One server start for every check; the 16 requests close their window together (max_batch), a
    # single request after them waits out a short window.
    mix = Mixture(cfg, prof, smol, smol, eng, Store(tmp_path / "s.sqlite"), window_s=0.5, max_batch=16,
                  embedder=embedder)
    mix.start()
    srv = MixtureServer(mix, MODEL, "127.0.0.1", 0, Limits(max_tokens=16))
    srv.serve_in_thread()
    try:
        assert srv.server_address[0] == "127.0.0.1"
        texts = prompts(16)
        out = ask_all_raw(srv.url, texts, timeout=1200, max_tokens=16)
        assert all(code == 200 and body["choices"][0]["message"]["content"] for code, body in out)
        assert [b["symoe"]["question"] for _, b in out] == [question_of(t).id for t in texts]
        assert httpx.post(srv.url + "/chat/completions", content=b"{").status_code == 400
        # Still serving: streamed from the worker as vLLM writes it, and the same text unstreamed (same seed).
        c = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0, timeout=600)
        msgs = [{"role": "user", "content": "What is 2+2?"}]
        chunks = list(c.chat.completions.create(model=MODEL, messages=msgs, seed=1, max_tokens=16, stream=True))
        whole = c.chat.completions.create(model=MODEL, messages=msgs, seed=1, max_tokens=16)
        pieces = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
        assert len(pieces) > 1 and "".join(pieces) == whole.choices[0].message.content
    finally:
        srv.close(30)
        eng.close()
        mix.setup.store.close()


def test_residency_keeps_what_fits_and_swaps_the_least_recently_used(tmp_path, embedder, profiles):
    # Room for two of the three models, and every window needs all three (keywords on one, the
    # aggregator another, experts the third among them): the keyword model and aggregator load at
    # start; the expert is loaded on demand, unloading the least recently used.
    cfg = symoe.Config.from_toml(pool_toml(tmp_path))
    two = 2 * cfg.model(NAMES[0]).resident_bytes / 1e9 + 0.01
    cfg = symoe.Config.from_toml(pool_toml(tmp_path, memory=two))
    eng = FakeEngine(0, cfg, ScaledClock(0.0))
    with Store(tmp_path / "s.sqlite") as store:
        mix = Mixture(cfg, profiles, KW, NAMES[2], eng, store, window_s=30.0, max_batch=12, embedder=embedder)
        loaded = mix.start()
        srv = MixtureServer(mix, MODEL, "127.0.0.1", 0)
        srv.serve_in_thread()
        try:
            out = ask_all_raw(srv.url, prompts(12))
        finally:
            srv.close(5.0)
            eng.close()
    assert loaded == [KW, NAMES[2]]
    assert all(code == 200 for code, _ in out)
    assert NAMES[0] in {e["model"] for _, b in out for e in b["symoe"]["experts"]}
    assert mix.setup.lanes.evictions >= 1 and eng.peak_bytes <= cfg.devices[0].memory_bytes
    loads = [m for op, m in eng.calls if op == "load"]
    assert loads[:2] == [KW, NAMES[2]] and NAMES[0] in loads


def test_skip_agreed_answers_without_the_aggregator(tmp_path, embedder, profiles):
    # The fake endpoint's every answer is (A): the experts agree, so no aggregation is asked for.
    with FakeOpenAI(models=NAMES) as fake:
        cfg = symoe.Config.from_toml(pool_toml(tmp_path, endpoint=fake.url))
        eng = stage_engine(cfg, tmp_path / "logs")
        with Store(tmp_path / "s.sqlite") as store, \
                serving(cfg, eng, store, embedder, profiles, together=4, skip_agreed=True) as (srv, _):
            out = ask_all_raw(srv.url, prompts(4))
    assert len(fake.requests) == 4 * (5 + 3)
    for _, body in out:
        d = body["symoe"]
        assert d["aggregation_skipped"] and d["aggregator"] is None and d["answer"] == "A" and d["model_calls"] == 8
        assert body["usage"]["prompt_tokens"] == 8 * 11 and body["usage"]["completion_tokens"] == 8 * 7


def test_stream_gives_the_same_answer_as_server_sent_events(shared):
    c = openai.OpenAI(base_url=shared.url, api_key="none", max_retries=0)
    msgs = [{"role": "user", "content": prompts(1)[0]}]
    whole = c.chat.completions.create(model=MODEL, messages=msgs, seed=5)
    chunks = list(c.chat.completions.create(model=MODEL, messages=msgs, seed=5, stream=True,
                                            stream_options={"include_usage": True}))
    text = c.completions.create(model=MODEL, prompt=prompts(1)[0], seed=5, stream=True)
    streamed_text = "".join(ch.choices[0].text for ch in text if ch.choices)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == whole.choices[0].message.content
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == whole.choices[0].finish_reason
    assert streamed_text == whole.choices[0].message.content  # the same question and seed: the stored answer


def test_served_answers_are_graded_from_the_store(shared, tmp_path):
    # The request's gold answer (extension field) is kept with its prompt in the store: `symoe export`
    # grades served answers with no questions file, and the response says whether it was right.
    from click.testing import CliRunner

    from symoe.cli import main
    from symoe.method.grading import answer_of, is_correct

    qs = load_questions(bundled("mmlu_pro_sample.json"))[20:23]
    bodies = [ask_all_raw(shared.url, [q.text], symoe={"details": True, "gold": q.gold, "category": q.category})[0][1]
              for q in qs]
    plain = ask_all_raw(shared.url, ["What is 6*7?"])[0][1]  # no gold: answered, not graded
    out = CliRunner().invoke(main, ["export", "--store", str(shared.mixture.setup.store.path), "--out",
                                    str(tmp_path / "x.jsonl")])
    assert out.exit_code == 0, out.output
    rows = {r["question"]: r for r in map(json.loads, (tmp_path / "x.jsonl").read_text().splitlines())
            if r["role"] == "aggregate"}
    for q, body in zip(qs, bodies):
        sq = question_of(q.text)
        row, d = rows[sq.id], body["symoe"]
        want = is_correct(answer_of(body["choices"][0]["message"]["content"], sq), q.gold, sq.kind)
        assert row["answer"] == d["answer"] and row["correct"] is want and d["correct"] is want
    row = rows[plain["symoe"]["question"]]
    assert row["answer"] == plain["symoe"]["answer"] and row["correct"] is None and plain["symoe"]["correct"] is None
    kept = {q.id: q for q in shared.mixture.setup.store.questions()}
    assert all((kept[question_of(q.text).id].gold, kept[question_of(q.text).id].category) == (q.gold, q.category)
               for q in qs)


class StreamingFake(FakeEngine):
    """A test double of a streaming engine over the fake: a streamed request's text grows word by
    word before it is done; after its first word the generation waits for ``hold`` (set by the test)."""

    def __init__(self, *a, hold=None, **kw):
        super().__init__(*a, **kw)
        self.hold, self.streamed_keys = hold, []

    def generate_streaming(self, model, requests, on_done, on_text, streamed, what, deadline):
        def done(g):
            if g.key in streamed:
                self.streamed_keys.append(g.key)
                words = g.text.split(" ")
                for n in range(1, len(words)):
                    on_text(g.key, " ".join(words[:n]) + " ")
                    if n == 1 and self.hold is not None:
                        assert self.hold.wait(30), "the client never saw the first words"
            on_done(g)

        return self.generate(model, requests, done, what, deadline)


def test_stream_sends_the_aggregators_text_as_it_is_written(tmp_path, embedder, profiles):
    cfg = symoe.Config.from_toml(pool_toml(tmp_path))
    hold = threading.Event()
    eng = StreamingFake(0, cfg, ScaledClock(0.0), hold=hold)
    q = prompts(2)
    with Store(tmp_path / "s.sqlite") as store, serving(cfg, eng, store, embedder, profiles) as (srv, _):
        c = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0, timeout=60)
        msgs = [{"role": "user", "content": q[0]}]
        stream = iter(c.chat.completions.create(model=MODEL, messages=msgs, seed=7, stream=True,
                                                stream_options={"include_usage": True}))
        first = next(stream)
        # The first words are here while the aggregator is still held mid-answer: streamed, not sent at the end.
        assert first.choices[0].delta.content and first.choices[0].delta.role == "assistant" and not hold.is_set()
        hold.set()
        chunks = [first, *stream]
        whole = c.chat.completions.create(model=MODEL, messages=msgs, seed=7)  # the same seed: the stored answer
        text = "".join(ch.choices[0].text for ch in c.completions.create(model=MODEL, prompt=q[1], seed=3, stream=True)
                       if ch.choices)
        plain = c.completions.create(model=MODEL, prompt=q[1], seed=3)
    pieces = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert len(pieces) > 3 and "".join(pieces) == whole.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens and not chunks[-1].choices
    assert text == plain.choices[0].text and len(eng.streamed_keys) == 2  # one aggregation streamed per request


def test_stream_through_a_pool_of_endpoints(tmp_path, embedder, profiles):
    # The aggregator's endpoint is asked with stream=true, and its words come through as they arrive.
    with FakeOpenAI(models=NAMES) as fake:
        cfg = symoe.Config.from_toml(pool_toml(tmp_path, endpoint=fake.url))
        eng = stage_engine(cfg, tmp_path / "logs")
        with Store(tmp_path / "s.sqlite") as store, serving(cfg, eng, store, embedder, profiles) as (srv, _):
            c = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0, timeout=60)
            msgs = [{"role": "user", "content": prompts(1)[0]}]
            chunks = list(c.chat.completions.create(model=MODEL, messages=msgs, seed=9, stream=True))
            whole = c.chat.completions.create(model=MODEL, messages=msgs, seed=9)
    pieces = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert len(pieces) > 3 and "".join(pieces) == whole.choices[0].message.content
    assert [r.get("stream", False) for r in fake.requests] == [False] * (5 + 3) + [True]


def test_a_client_that_stops_sending_is_dropped_and_others_are_served(shared, monkeypatch):
    import socket

    from symoe.serve import http as serve_http
    monkeypatch.setattr(serve_http.Handler, "timeout", 1.0)  # read by each new connection
    srv = shared
    port = srv.server_address[1]
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"model\"")
    assert ask_all_raw(srv.url, ["What is 5+5?"])[0][0] == 200  # served meanwhile
    s.settimeout(30)
    assert s.recv(4096) == b""  # closed by the server after its socket timeout, no answer
    s.close()
    big = socket.create_connection(("127.0.0.1", port))  # a body far over the limit: 413, then closed
    big.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n")
    big.settimeout(30)
    assert big.recv(4096).startswith(b"HTTP/1.1 413")
    big.close()


def test_cli_refuses_a_port_in_use_and_an_unset_key_variable(tmp_path, monkeypatch):
    # In-process (click's runner): the refusals come before any model, embedder or signal handler.
    import socket

    from click.testing import CliRunner

    from symoe.cli import main

    pool = pool_toml(tmp_path)
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    base = ["serve", "--config", str(pool), "--fake", "0", "--store", str(tmp_path / "s.sqlite")]
    try:
        out = CliRunner().invoke(main, base + ["--port", str(held.getsockname()[1])])
    finally:
        held.close()
    # A one-line error, no traceback: click exited (SystemExit), no exception escaped it.
    assert isinstance(out.exception, SystemExit) and out.exit_code == 1 and "in use" in out.output, out.output
    monkeypatch.delenv("SYMOE_TEST_UNSET_KEY", raising=False)
    out = CliRunner().invoke(main, base + ["--api-key-env", "SYMOE_TEST_UNSET_KEY"])
    assert out.exit_code == 2 and "SYMOE_TEST_UNSET_KEY" in out.output
