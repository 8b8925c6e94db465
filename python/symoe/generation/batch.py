"""Batch generation for the pipeline's stages (keywords, profiling, aggregator selection): one
model at a time on device 0: load, generate what the store lacks, unload."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .engine import Clock, Engine, ModelSettings
from .local import LocalEngine
from .requests import Generation, Request

if TYPE_CHECKING:
    from ..planning import Config
    from ..store import Store

# Stages have no plan to derive deadlines from: the cost model's time, times this, plus the margin.
DEADLINE_FACTOR, DEADLINE_MARGIN_S = 4.0, 300.0


def generate_jobs(cfg: Config, jobs: Sequence[tuple[str, Sequence[Request]]], store: Store, run_dir: str | Path,
                  progress: bool = True, label: str = "generations", engine: Engine | None = None) -> dict[str, Generation]:
    """Every request of every (model, requests) job, from the store or generated; each generation
    is committed the moment it finishes."""
    from ..execution.scheduler import _progress

    keys = [r.key for _, reqs in jobs for r in reqs]
    have = store.existing(keys)
    todo = [(m, [r for r in reqs if r.key not in have]) for m, reqs in jobs]
    todo = [(m, reqs) for m, reqs in todo if reqs]
    settings = {m: ModelSettings.of(cfg, m) for m, _ in todo}  # bad paths fail before any engine starts
    eng = engine or LocalEngine.for_config(cfg, 0, Path(run_dir) / "logs")
    now = getattr(eng, "clock", Clock()).now
    bar = _progress(progress, sum(len(r) for _, r in todo), label)

    def stored(g: Generation) -> None:
        store.put(g)
        bar(1)

    try:
        for i, (model, reqs) in enumerate(todo):
            m = cfg.model(model)
            what = f"{label}: model {model}"
            eng.load(settings[model], f"{what} (load)", now() + DEADLINE_FACTOR * m.load_s + DEADLINE_MARGIN_S,
                     keep_spare=i + 1 < len(todo))
            pin, out = cfg.tokens.of(reqs[0].role)
            eng.generate(model, reqs, stored, f"{what} (generate)",
                         now() + DEADLINE_FACTOR * m.run_seconds(len(reqs), pin, out) + DEADLINE_MARGIN_S)
            eng.unload(model, f"{what} (unload)", now() + DEADLINE_MARGIN_S)
    finally:
        eng.close()
        bar(None)
    return store.generations(keys)
