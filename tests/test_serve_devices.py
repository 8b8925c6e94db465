"""``symoe serve`` on a pool of two devices with the fake engine: models placed on both by the
core's planner, a window's batches on the two engines at once, each answer on its own request;
the observed demand changes which experts stay resident; a fault on one device fails only the
requests whose batches it held."""

import threading
import time

import pytest

import symoe
from openai_fake_server import FakeOpenAI
from symoe.evaluation.from_store import export_rows
from symoe.execution.launch import Launch, serve_engines
from symoe.generation.fake import FakeEngine, Fault, ScaledClock
from symoe.method.matching import Embedder
from symoe.method.routing import Profiles
from symoe.serve import Mixture, MixtureServer
from symoe.serve.placement import ServePlanning
from symoe.serve.protocol import question_of
from symoe.store import Store
from test_serve import AGG, KW, NAMES, ask_all_raw, pool_toml, prompts

SMOL, QWEN, GEMMA = NAMES
TOPICS = ["algebra", "physics", "law", "biology", "economics"]  # the fake engine's keywords (fake_text)
ARTS = ["poetry", "painting", "sculpture", "opera", "ballet", "pottery", "calligraphy", "theatre", "cinema",
        "jazz", "symphony", "sonnet", "mosaic", "fresco", "etching", "origami", "tapestry", "quilting", "mime",
        "puppetry"]


def pool(tmp_path, devices=2, memory_gb=80.0):
    text = f"""[engine]
platform = "gpu"
max_tokens = 64
[devices]
count = {devices}
memory_gb = {memory_gb}
[tokens]
expert_prompt = 350
expert_output = 200
aggregate_prompt = 1000
aggregate_output = 200
"""
    for n in NAMES:
        text += f'\n[[model]]\nname = "{n}"\nweight_gb = 2.0\nload_s = 5.0\nchat = {"false" if n == GEMMA else "true"}\n'
    (tmp_path / "pool.toml").write_text(text)
    return symoe.Config.from_toml(tmp_path / "pool.toml")


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


@pytest.fixture(scope="module")
def profiles():
    from symoe.method.datasets import bundled
    return Profiles.from_json(bundled("tiny_profiles.json"))


class Meeting(FakeEngine):
    """A test double of a device's engine: its first expert batch waits until the other device's
    first expert batch has started too (a window that ran them one after the other never meets)."""

    def __init__(self, *a, meet, **kw):
        super().__init__(*a, **kw)
        self.meet, self.met = meet, False

    def generate(self, model, requests, on_done, what, deadline):
        if not self.met and requests[0].role == "expert":
            self.met = True
            self.meet.wait()  # BrokenBarrierError after its timeout: the window fails, so does the test
        return super().generate(model, requests, on_done, what, deadline)


def serve(mix):
    mix.start()
    srv = MixtureServer(mix, "symoe-mmlu_pro", "127.0.0.1", 0)
    srv.serve_in_thread()
    return srv


def test_two_devices_both_used_at_once_each_answer_on_its_own_request(tmp_path, embedder, profiles):
    cfg = pool(tmp_path)
    clock, meet = ScaledClock(0.0), threading.Barrier(2, timeout=30)
    engines = [Meeting(d, cfg, clock, meet=meet) for d in range(2)]
    texts = prompts(16)
    with Store(tmp_path / "s.sqlite") as store:
        mix = Mixture(cfg, profiles, KW, AGG, engines, store, window_s=30.0, max_batch=16, embedder=embedder)
        srv = serve(mix)
        try:
            out = ask_all_raw(srv.url, texts)
        finally:
            srv.close(5.0)
        final = {r["question"]: r["text"] for r in export_rows(store, []) if r["role"] == "aggregate"}
    home = mix.setup.lanes.placement.home
    assert sorted(home) == sorted(NAMES) and set(home.values()) == {0, 1}  # the core placed models on both
    assert all(code == 200 for code, _ in out), out
    for d, eng in enumerate(engines):
        ran = {m for op, m in eng.calls if op == "generate"}
        assert ran and all(home[m] == d for m in ran)  # each engine ran its own models, and both ran
        assert eng.peak_bytes <= cfg.devices[d].memory_bytes
    assert all(e.met for e in engines)  # the two devices' expert batches met: they ran at once
    assert meet.n_waiting == 0 and not meet.broken
    for text, (_, body) in zip(texts, out):
        d = body["symoe"]
        assert d["question"] == question_of(text).id  # the answer to this very prompt
        assert body["choices"][0]["message"]["content"] == final[d["question"]]
    assert mix.windows == 1 and len(mix.calls) == 1 + len({e["model"] for _, b in out for e in b["symoe"]["experts"]}) + 1


def skewed_profiles():
    """Gemma knows the arts (most of the vocabulary: the prior favours it); SmolLM knows the fake
    engine's keyword topics (every request goes to it)."""
    return Profiles.from_dict({GEMMA: {w: 5 for w in ARTS} | {t: -5 for t in TOPICS},
                               SMOL: {t: 5 for t in TOPICS} | {w: -5 for w in ARTS}})


def test_observed_demand_makes_a_frequent_expert_resident_after_replanning(tmp_path, embedder):
    # Each device holds one model. The prior (gemma knows most of the vocabulary) gives gemma a device of its
    # own, SmolLM shares Qwen's (keywords, aggregation: resident), so a window asking SmolLM swaps twice there.
    # Every request asks SmolLM: the re-plan after the third window gives SmolLM gemma's place.
    one = pool(tmp_path).model(SMOL).resident_bytes / 1e9 + 0.01
    cfg = pool(tmp_path, memory_gb=one)
    clock = ScaledClock(0.0)
    engines = [FakeEngine(d, cfg, clock) for d in range(2)]

    def loads():
        return sum(op == "load" for e in engines for op, _ in e.calls)

    with Store(tmp_path / "s.sqlite") as store:
        mix = Mixture(cfg, skewed_profiles(), QWEN, QWEN, engines, store, k=1, window_s=30.0, max_batch=6,
                      embedder=embedder, planning=ServePlanning(replan_every=3, prior_slots=8))
        srv = serve(mix)
        lanes = mix.setup.lanes
        try:
            before = lanes.placement
            assert before.home[SMOL] == before.home[QWEN] != before.home[GEMMA]
            assert before.resident == {before.home[GEMMA]: (GEMMA,), before.home[QWEN]: (QWEN,)}
            per_window = []
            for w in range(4):
                end = time.monotonic() + 30
                while w == 3 and lanes.placement is before and time.monotonic() < end:  # the re-plan, between windows
                    time.sleep(0.01)
                n = loads()
                out = ask_all_raw(srv.url, prompts(24)[6 * w:6 * w + 6])
                assert all(code == 200 and [e["model"] for e in b["symoe"]["experts"]] == [SMOL] for code, b in out)
                per_window.append(loads() - n)
        finally:
            srv.close(5.0)
    after = lanes.placement
    assert lanes.replans == 1 and lanes.swaps == 1 and lanes.demand.observed == {SMOL: 24}
    assert after.shares[SMOL] > after.shares[GEMMA] and before.shares[SMOL] < before.shares[GEMMA]
    assert after.home[SMOL] != after.home[QWEN] and after.resident[after.home[SMOL]] == (SMOL,)  # kept resident now
    assert lanes.of(SMOL).planned == {SMOL} and SMOL in lanes.of(SMOL).resident
    # Before the re-plan SmolLM and Qwen took turns on one device (loads every window); after it, none.
    assert per_window[0] >= 2 and per_window[3] == 0


def test_a_fault_on_one_device_fails_only_its_requests(tmp_path, embedder, profiles):
    cfg = pool(tmp_path)
    probe = Mixture(cfg, profiles, KW, AGG, [FakeEngine(d, cfg, ScaledClock(0.0)) for d in range(2)],
                    Store(tmp_path / "p.sqlite"), embedder=embedder)
    probe.setup.lanes.plan(load=False)
    home = probe.setup.lanes.placement.home
    probe.setup.store.close()
    victim = next(m for m in (SMOL, GEMMA) if home[m] != home[KW])  # an expert on the other device than Qwen's
    clock = ScaledClock(0.0)
    engines = [FakeEngine(d, cfg, clock, [Fault("die", "generate", victim)] if d == home[victim] else [])
               for d in range(2)]
    texts = prompts(12)
    with Store(tmp_path / "s.sqlite") as store:
        mix = Mixture(cfg, profiles, KW, AGG, engines, store, window_s=30.0, max_batch=12, embedder=embedder)
        srv = serve(mix)
        try:
            first = ask_all_raw(srv.url, texts)
            again = ask_all_raw(srv.url, texts)
        finally:
            srv.close(5.0)
    assert mix.setup.lanes.placement.home == home
    failed = [i for i, (code, _) in enumerate(first) if code != 200]
    assert failed and len(failed) < len(texts)
    assert all(first[i][0] == 503 and victim in first[i][1]["error"]["message"] for i in failed)
    assert all(victim not in [e["model"] for e in b["symoe"]["experts"]] for code, b in first if code == 200)
    other = engines[1 - home[victim]]
    assert victim not in {m for _, m in other.calls} and not other.dead  # the other device went on
    assert all(code == 200 for code, _ in again)  # the next window reloads the expert on its device
    assert [m for op, m in engines[home[victim]].calls if op == "load"].count(victim) == 2


def test_serve_engines_one_per_device_and_each_endpoint_its_own(tmp_path, embedder, profiles):
    fake = serve_engines(pool(tmp_path), tmp_path / "logs", Launch(fake=ScaledClock(0.0)))
    assert [e.device for e in fake.devices] == [0, 1] and fake.endpoints == {}
    with FakeOpenAI(models=NAMES) as server:
        cfg = symoe.Config.from_toml(pool_toml(tmp_path, endpoint=server.url))
        engines = serve_engines(cfg, tmp_path / "logs")
        assert sorted(engines.endpoints) == sorted(NAMES) and len({id(e) for e in engines.endpoints.values()}) == 3
        with Store(tmp_path / "s.sqlite") as store:
            mix = Mixture(cfg, profiles, KW, AGG, engines.devices, store, window_s=30.0, max_batch=4, embedder=embedder,
                          endpoints=engines.endpoints)
            srv = serve(mix)
            try:
                out = ask_all_raw(srv.url, prompts(4))
            finally:
                srv.close(5.0)
    assert all(code == 200 for code, _ in out) and len(server.requests) == 4 * (5 + 3 + 1)
    lanes = mix.setup.lanes
    assert {m: lanes.of(m).engine for m in NAMES} == engines.endpoints  # each endpoint model on its own engine
