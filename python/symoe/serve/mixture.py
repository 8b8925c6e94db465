"""The live mixture: requests queue up, and one worker thread takes every request that arrived
within a window (``window_s`` after the first one waiting; 0: one request at a time, no
cross-request batching) and runs them together through :func:`.window.run_window`, on the lanes
(:mod:`.lanes`: one per device engine and endpoint engine). Every ``replan_every`` windows, after
a window's answers are sent, the placement is planned again from the demand seen
(:mod:`.placement`). Stopping (SIGTERM) refuses new requests, lets the queue drain within a
deadline, then fails what is left with a 503."""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..config.pool import Config
from ..generation import Engine
from ..method.matching import Embedder
from ..method.routing import Profiles
from ..store import Store
from .lanes import Lanes
from .placement import ServePlanning
from .protocol import Answer, ApiError, ServeRequest
from .residency import expected_frequency
from .results import ServedResults
from .window import Call, Job, Setup, run_window


class Mixture:
    """Answers :class:`ServeRequest` s in windows, batched by model, on the pool's engines:
    ``engine`` one per local device (:func:`~symoe.execution.launch.serve_engines`), or one for
    every model; ``endpoints``: endpoint models' own engines; ``planning``: :class:`.placement.ServePlanning`."""

    def __init__(self, cfg: Config, profiles: Profiles, keyword_model: str, aggregator: str,
                 engine: Engine | Sequence[Engine], store: Store, k: int = 3, window_s: float = 0.1,
                 skip_agreed: bool = False, max_batch: int = 256, embedder: Embedder | None = None,
                 embeddings: Path | None = None, endpoints: Mapping[str, Engine] | None = None,
                 planning: ServePlanning = ServePlanning()):
        for m in profiles.models:
            if m not in cfg.names:
                raise ValueError(f"profiles name model {m!r}, which is not in the pool ({', '.join(cfg.names)})")
        for what, m in (("keyword model", keyword_model), ("aggregator", aggregator)):
            if m not in cfg.names:
                raise ValueError(f"task: {what} {m!r} is not in the pool ({', '.join(cfg.names)})")
        if window_s < 0 or max_batch < 1:
            raise ValueError(f"window must be >= 0 s and max_batch >= 1, got {window_s}, {max_batch}")
        # The embedder loads in start(): the CLI binds its address first, so a port in use is refused at once.
        lanes = Lanes(cfg, engine, endpoints or {}, keyword_model, aggregator, k, expected_frequency(profiles, k),
                      planning)
        self.setup = Setup(cfg, profiles, keyword_model, aggregator, lanes, store, embedder, k, skip_agreed)
        self.embeddings = embeddings  # the embedder's on-disk cache (the vocabulary is embedded once per cache)
        self.window_s, self.max_batch = window_s, max_batch
        self.windows = 0
        self.results = ServedResults(skip_agreed)  # for a run directory (`symoe serve --run-dir`)
        self._queue: deque[Job] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._busy = False
        self._thread = threading.Thread(target=self._loop, name="symoe-serve-mixture", daemon=True)

    def start(self, preload: bool = True) -> list[str]:
        """Plan the placement and load the models it keeps resident (``preload``; else each on
        demand), then take requests; returns the models loaded."""
        s = self.setup
        s.embedder = s.embedder or Embedder(self.embeddings)
        s.embedder.embed(list(s.profiles.vocabulary))  # once, before the first request waits on it
        s.embedder.cache_path = None  # requests' keywords stay in memory: a save per window rewrites the whole file
        loaded = s.lanes.plan(load=preload, strict=True)
        self._thread.start()
        return loaded

    def submit(self, req: ServeRequest) -> Job:
        """Queue ``req``; a streamed one (``req.stream``) gets its text in ``Job.pieces`` as it is written."""
        job = Job(req, pieces=queue.SimpleQueue() if req.stream else None)
        with self._cv:
            if self._stopping:
                raise ApiError(503, "the server is shutting down", "server_error", code="shutting_down")
            self._queue.append(job)
            self._cv.notify_all()
        return job

    @staticmethod
    def result(job: Job, timeout_s: float) -> Answer:
        """Wait for ``job``'s answer; an :class:`ApiError` when it fails or times out."""
        if not job.done.wait(timeout_s):
            raise ApiError(503, f"no answer within {timeout_s:g} s", "server_error", code="timeout")
        if job.error is not None:
            raise job.error
        assert job.answer is not None
        return job.answer

    def answer(self, req: ServeRequest, timeout_s: float) -> Answer:
        """Queue ``req`` and wait for its answer; an :class:`ApiError` when it fails or times out."""
        return self.result(self.submit(req), timeout_s)

    def _take(self) -> list[Job] | None:
        with self._cv:
            while not self._queue:
                if self._stopping:
                    return None
                self._cv.wait()
            if self.window_s > 0:
                until = self._queue[0].arrived + self.window_s
                while not self._stopping and len(self._queue) < self.max_batch:
                    left = until - time.perf_counter()
                    if left <= 0:
                        break
                    self._cv.wait(left)
            n = 1 if self.window_s == 0 else min(self.max_batch, len(self._queue))
            self._busy = True
            return [self._queue.popleft() for _ in range(n)]

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            try:
                run_window(self.setup, self.windows, jobs)
                for j in jobs:
                    if j.answer is not None:
                        self.results.add(j.req, j.answer)
            except Exception as e:  # noqa: BLE001  (a bug must fail its requests, never hang them)
                for j in jobs:
                    if j.answer is None and j.error is None:
                        j.error = ApiError(500, f"internal error: {type(e).__name__}: {e}", "server_error")
            finally:
                self.windows += 1
                for j in jobs:
                    j.finish()
                if self.setup.lanes.replan_due() and not self._stopping:  # between windows, answers sent
                    self.setup.lanes.replan()
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def stop(self, deadline_s: float) -> int:
        """Refuse new requests; finish those queued or running within ``deadline_s``; fail the rest
        (503). Returns how many were failed that way."""
        end = time.perf_counter() + deadline_s
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
            while (self._queue or self._busy) and time.perf_counter() < end:
                self._cv.wait(max(0.0, end - time.perf_counter()))
            left = list(self._queue)
            self._queue.clear()
        for j in left:
            j.error = ApiError(503, "the server shut down before this request ran", "server_error",
                               code="shutting_down")
            j.finish()
        return len(left)

    @property
    def calls(self) -> Sequence[Call]:
        """Every engine batch so far (:class:`.window.Call`)."""
        return self.setup.calls
