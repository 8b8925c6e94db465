"""Batch generation for the pipeline's stages (keywords, profiling, aggregator selection): one
model at a time on device 0: load, generate what the store lacks, unload."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..progress import progress_bar
from ..records import Generation, Request
from .engine import BatchInfo, Clock, Engine, EngineError, ModelSettings, OnDone

if TYPE_CHECKING:
    from ..config.pool import Config
    from ..store import Store

# Stages have no plan to derive deadlines from: the cost model's time, times this, plus the margin.
DEADLINE_FACTOR, DEADLINE_MARGIN_S = 4.0, 300.0
CLAIM_POLL_S = 1.0  # how often a run looks for what another run on its store is generating


def generate_once(eng: Engine, model: str, todo: Sequence[Request], store: Store, owner: str, on_done: OnDone,
                  on_reused: Callable[[list[Request]], None], what: str, deadline: float, clock: Clock,
                  stop: threading.Event | None = None) -> BatchInfo:
    """Generate ``todo`` on a resident model, except what another live run on the same store has
    claimed: those are waited for (``on_reused`` once stored), and taken over if that run dies."""
    total = BatchInfo(0.0, 0, 0, 0)
    waiting = list(todo)
    while waiting:
        others = store.claim([r.key for r in waiting], owner)
        # Checked after claiming: a run stores its work before it releases its claims.
        stored = store.existing([r.key for r in waiting])
        if stored:
            on_reused([r for r in waiting if r.key in stored])
        mine = [r for r in waiting if r.key not in others and r.key not in stored]
        if mine:
            total = total.then(eng.generate(model, mine, on_done, what, deadline))
        waiting = [r for r in waiting if r.key in others and r.key not in stored]
        if waiting and not mine:
            if clock.now() > deadline:
                raise EngineError(f"{what}: {len(waiting)} generations that another run claimed did not arrive "
                                  f"by the deadline")
            if stop is None:
                time.sleep(CLAIM_POLL_S)
            elif stop.wait(CLAIM_POLL_S):
                raise EngineError(f"{what}: stopped")
    return total


def generate_jobs(cfg: Config, jobs: Sequence[tuple[str, Sequence[Request]]], store: Store, engine: Engine,
                  progress: bool = True, label: str = "generations") -> dict[str, Generation]:
    """Every request of every (model, requests) job, from the store or generated on ``engine``
    (one for every model of the pool; closed at the end); each generation is committed the moment
    it finishes."""
    keys = [r.key for _, reqs in jobs for r in reqs]
    have = store.existing(keys)
    todo = [(m, [r for r in reqs if r.key not in have]) for m, reqs in jobs]
    todo = [(m, reqs) for m, reqs in todo if reqs]
    try:
        settings = {m: ModelSettings.of(cfg, m) for m, _ in todo}  # bad paths fail before any model loads
    except BaseException:
        engine.close()
        raise
    now = getattr(engine, "clock", Clock()).now
    bar = progress_bar(progress, sum(len(r) for _, r in todo), label)

    def stored(g: Generation) -> None:
        store.put(g)
        bar(1)

    owner = uuid.uuid4().hex[:12]

    try:
        for i, (model, reqs) in enumerate(todo):
            m = cfg.model(model)
            what = f"{label}: model {model}"
            engine.load(settings[model], f"{what} (load)", now() + DEADLINE_FACTOR * m.load_s + DEADLINE_MARGIN_S,
                        keep_spare=i + 1 < len(todo))
            generate_once(engine, model, reqs, store, owner, stored, lambda rs: bar(len(rs)), f"{what} (generate)",
                          now() + DEADLINE_FACTOR * cfg.run_seconds(model, reqs[0].role, len(reqs)) + DEADLINE_MARGIN_S,
                          getattr(engine, "clock", Clock()))
            engine.unload(model, f"{what} (unload)", now() + DEADLINE_MARGIN_S)
    finally:
        engine.close()
        store.release(owner)
        bar(None)
    return store.generations(keys)
