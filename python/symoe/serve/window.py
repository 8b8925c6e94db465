"""One window of live requests through the whole method, batched by model: one keyword batch,
then one batch per recruited expert (each on its model's lane, the lanes at once: :mod:`.lanes`),
then one aggregation batch. Each request's keywords, matching, seeded routing and prompts are the
library's own (``keywords``, ``matching``, ``routing``, ``generation.Requests``); every generation
goes to the store, and what the store already holds (the same prompt with the same seed) is
reused, as in batch runs. An engine fault fails only the requests whose generations that call
held (503). The window's expert slots are recorded as demand for the next placement plans."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ..config.pool import Config
from ..evaluation.from_store import agreed_answer
from ..generation import EngineError, Generation, Request, Sampling
from ..generation.batch import DEADLINE_FACTOR, DEADLINE_MARGIN_S
from ..generation.engine import Clock, OnText
from ..method.grading import answer_of, is_correct
from ..method.keywords import filter_keywords
from ..method.matching import Embedder, match_keywords
from ..method.requests import Requests
from ..method.routing import Profiles, route
from ..records import StoredQuestion
from ..store import Store
from .lanes import Lanes
from .protocol import Answer, ApiError, ServeRequest


@dataclass
class Job:
    """A request waiting for its answer (``done`` is set once ``answer`` or ``error`` is). A
    streamed one also gets its answer's text in ``pieces`` as the aggregator writes it, then None."""

    req: ServeRequest
    arrived: float = field(default_factory=time.perf_counter)
    answer: Answer | None = None
    error: ApiError | None = None
    gens: list[Generation] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    pieces: queue.SimpleQueue[str | None] | None = None
    streamed: str = ""  # the text put in pieces so far
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stream_to(self, text: str) -> None:
        """Queue what ``text`` (the answer so far) adds to what is queued; a text that does not
        extend it (a retried request starting over) adds nothing."""
        with self.lock:
            if self.pieces is not None and len(text) > len(self.streamed) and text.startswith(self.streamed):
                self.pieces.put(text[len(self.streamed):])
                self.streamed = text

    def finish(self) -> None:
        """Mark it done (failed with a 503 if it has neither answer nor error) and end its pieces."""
        if self.answer is None and self.error is None:
            self.error = ApiError(503, "the request was not answered", "server_error")
        self.done.set()
        if self.pieces is not None:
            self.pieces.put(None)


@dataclass(frozen=True)
class Call:
    """One engine batch: the window it served, the model, the role and the number of requests."""

    window: int
    model: str
    role: str
    requests: int
    seconds: float


@dataclass
class Setup:
    """What every window uses: pool, profiles, task models, the lanes (engines and residency), store, embedder."""

    cfg: Config
    profiles: Profiles
    keyword_model: str
    aggregator: str
    lanes: Lanes
    store: Store
    embedder: Embedder | None  # None until Mixture.start
    k: int = 3
    skip_agreed: bool = False
    calls: list[Call] = field(default_factory=list)


def _fail(job: Job, e: ApiError) -> None:
    if job.error is None:
        job.error = e


def _batch(s: Setup, window: int, model: str, items: Sequence[tuple[Job, Request]], keep: Sequence[str],
           on_text: OnText | None = None, streamed: Collection[str] = ()) -> dict[str, Generation]:
    """Generate one model's requests of the window (stored ones are reused); a fault fails the
    jobs whose requests did not finish. ``on_text``: the text so far of those in ``streamed``."""
    items = [(j, r) for j, r in items if j.error is None]
    if not items:
        return {}
    got = s.store.generations(dict.fromkeys(r.key for _, r in items))
    todo = list({r.key: r for _, r in items if r.key not in got}.values())
    t = time.perf_counter()
    if todo:
        def done(g: Generation) -> None:
            s.store.put(g)
            got[g.key] = g

        role = todo[0].role
        lane = s.lanes.of(model)
        try:
            lane.ensure(model, keep)
            now = getattr(lane.engine, "clock", Clock()).now
            deadline = now() + DEADLINE_FACTOR * s.cfg.run_seconds(model, role, len(todo)) + DEADLINE_MARGIN_S
            what = f"serve window {window}: {role} on {model}"
            if on_text is not None and streamed:
                lane.engine.generate_streaming(model, todo, done, on_text, streamed, what, deadline)
            else:
                lane.engine.generate(model, todo, done, what, deadline)
        except EngineError as e:
            lane.fault(model)  # the next window that needs it loads it again
            for j, r in items:
                if r.key not in got:
                    _fail(j, ApiError(503, f"engine fault on model {model} ({role}): {e}", "server_error",
                                      code="engine_fault"))
        s.calls.append(Call(window, model, role, len(todo), time.perf_counter() - t))
    for j, r in items:
        if r.key in got:
            j.gens.append(got[r.key])
    return got


def run_window(s: Setup, window: int, jobs: Sequence[Job]) -> None:
    """Answer ``jobs`` (sets each job's ``answer`` or ``error``)."""
    t0 = time.perf_counter()
    for j in jobs:
        j.timings["queued_s"] = t0 - j.arrived
        q = j.req.question  # its text beside its generations: `symoe export` grades served answers from the store
        s.store.put_question(StoredQuestion(q.id, q.text, q.kind, q.gold, q.category))
    build = {id(j): Requests(s.cfg, Sampling.for_pool(s.cfg, j.req.max_tokens, j.req.seed)) for j in jobs}
    # 1. keywords: one batch on the keyword model for the whole window
    kw_reqs = {id(j): build[id(j)].keywords(s.keyword_model, j.req.question) for j in jobs}
    got = _batch(s, window, s.keyword_model, [(j, r) for j in jobs for r in kw_reqs[id(j)]], ())
    live = [j for j in jobs if j.error is None]
    kws = {str(id(j)): filter_keywords([got[r.key].text for r in kw_reqs[id(j)]]) for j in live}
    assert s.embedder is not None, "Mixture.start loads the embedder"
    matched = match_keywords(kws, s.profiles.vocabulary, s.embedder)
    t1 = time.perf_counter()
    # 2. seeded routing per request, then one batch per recruited expert
    experts: dict[int, list[Request]] = {}
    for j in live:
        a = route(s.profiles, [matched[str(id(j))]], k=s.k, seed=j.req.seed, rare_threshold=0)
        experts[id(j)] = [build[id(j)].expert(m, j.req.question, slot) for slot, m in enumerate(a.names(0))]
    by_model: dict[str, list[tuple[Job, Request]]] = {}
    for j in live:
        for r in experts[id(j)]:
            by_model.setdefault(r.model, []).append((j, r))
    # each expert's batch on its lane: lanes (devices, endpoints) at once, one lane's batches in turn

    def expert_batch(m: str) -> None:
        got.update(_batch(s, window, m, by_model[m], ()))

    s.lanes.run({m: partial(expert_batch, m) for m in by_model})
    t2 = time.perf_counter()
    # 3. aggregation batch, skipped where the experts agree (--skip-agreed)
    final: dict[int, Generation] = {}
    answers: dict[int, list[str | None]] = {}
    agg_items: list[tuple[Job, Request]] = []
    for j in live:
        if j.error is not None:
            continue
        texts = [got[r.key].text for r in experts[id(j)]]
        answers[id(j)] = [answer_of(t, j.req.question) for t in texts]
        if s.skip_agreed and agreed_answer(answers[id(j)]) is not None:
            final[id(j)] = got[experts[id(j)][0].key]
        else:
            agg_items.append((j, build[id(j)].aggregate(s.aggregator, j.req.question, texts)))
    listeners: dict[str, list[Job]] = {}  # streamed requests by their aggregation's key
    for j, r in agg_items:
        if j.pieces is not None:
            listeners.setdefault(r.key, []).append(j)

    def on_text(key: str, text: str) -> None:
        for j in listeners.get(key, ()):
            j.stream_to(text)

    got_agg = _batch(s, window, s.aggregator, agg_items, (), on_text, frozenset(listeners))
    for j, r in agg_items:
        if r.key in got_agg:
            final[id(j)] = got_agg[r.key]
    t3 = time.perf_counter()
    for j in live:
        if j.error is not None or id(j) not in final:
            continue
        g = final[id(j)]
        j.timings.update(keywords_s=t1 - t0, experts_s=t2 - t1, aggregate_s=t3 - t2, total_s=t3 - j.arrived)
        details: dict[str, Any] = {
            "question": j.req.question.id, "kind": j.req.question.kind, "seed": j.req.seed,
            "keywords": kws[str(id(j))], "matched": matched[str(id(j))],
            "experts": [{"model": r.model, "slot": r.slot, "answer": a, "tokens": got[r.key].tokens,
                         "seconds": got[r.key].seconds} for r, a in zip(experts[id(j)], answers[id(j)])],
            "aggregator": None if g.role == "expert" else s.aggregator, "aggregation_skipped": g.role == "expert",
            "answer": answer_of(g.text, j.req.question), "window": {"id": window, "requests": len(jobs)},
            "correct": is_correct(answer_of(g.text, j.req.question), j.req.question.gold, j.req.question.kind)
            if j.req.question.gold else None,
            "model_calls": len(j.gens), "timings": dict(j.timings)}
        j.stream_to(g.text)  # the rest, or all of it (an engine that does not stream, a stored or skipped aggregation)
        j.answer = Answer(g.text, g.finish if g.finish in ("stop", "length") else "stop",
                          sum(x.prompt_tokens for x in j.gens), sum(x.tokens for x in j.gens), len(j.gens), details)
    s.lanes.observe({m: len(v) for m, v in by_model.items()}, len(live))  # the demand the next plans weigh
