"""Run a plan against engines: a scheduler that only schedules.

Each device has a compute lane (generation) and, where the plan overlaps loads with generation,
an I/O lane (load, unload, park, wake); each lane is one thread that runs its steps in plan order
once the steps they depend on are done. The dependencies are the simulator's rules
(``cpp/simulator.cpp``), so a run takes the time the plan predicts when the cost model is right:
- load/wake: after the device's previous I/O step (and its previous generation without overlap);
- unload/park: after the previous I/O step, the model's load and its last generation;
- run: after the previous generation and the model's load; an aggregation also after every expert
  generation of its questions is stored (an event, counted per question, no polling);
- pause: after both lanes; tensor-parallel steps wait for every device they span.

Every generation is committed to the store the moment the engine hands it back; what the store
already holds is never generated again. Shared state (counters, records, readiness) is guarded
by one lock. Every engine call has a deadline: ``deadline_factor`` times its predicted time plus
``deadline_margin_s``. On a fault the run stops: every engine is closed (workers killed), what is
stored stays; with ``retries`` the model is reloaded and only what the store lacks is redone.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..generation import Clock, Engine, EngineError, Generation, ModelSettings, Request
from ..generation.batch import generate_once
from ..method.datasets import Question
from ..method.requests import Requests
from ..planning.plan import Plan, Role, StepKind
from ..progress import progress_bar
from ..store import Store
from .aggregation import Aggregations
from .dependencies import step_graph
from .report import StepRecord


@dataclass(frozen=True)
class RunOptions:
    """How a run treats time and faults (one home for these defaults)."""

    deadline_factor: float = 4.0     # an engine call may take this multiple of its predicted time ...
    deadline_margin_s: float = 300.0  # ... plus this (engine start-up, imports, a busy machine)
    retries: int = 0                 # per step: reload the model and redo what the store lacks
    progress: bool = True
    pictures: bool = True            # timeline PNGs in the run directory

    def __post_init__(self) -> None:
        if not (self.deadline_factor >= 1 and self.deadline_margin_s >= 0):
            raise ValueError("deadline_factor must be >= 1 and deadline_margin_s >= 0")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")


class Scheduler:
    """Runs one plan: lanes per device, dependencies from the simulator's rules, every generation stored."""

    def __init__(self, plan: Plan, questions: Sequence[Question], store: Store, requests: Requests,
                 settings: dict[str, ModelSettings], engines: list[Engine], options: RunOptions, clock: Clock,
                 run_id: str):
        self.plan, self.qs, self.store, self.req, self.settings = plan, questions, store, requests, settings
        self.engines, self.opt, self.clock, self.run_id = engines, options, clock, run_id
        cfg = plan.config
        self.names = cfg.names
        a = plan.arrays
        self.a = a
        self.k = plan.k
        self.lock = threading.Lock()
        self.abort = threading.Event()
        self.failure: BaseException | None = None
        self.records: list[StepRecord] = []
        self.generated = self.reused = self.retried = 0
        self.makespan = self.finish = 0.0
        self.agg = Aggregations(plan, questions, store, requests, self.lock, self.abort)
        self.expert_requests = self.agg.expert_requests
        self.needed = self.agg.needed()
        self.stopped = False
        self.done = [threading.Event() for _ in range(plan.n_steps)]
        self.deps, self.lanes = step_graph(self.plan)
        runs = a.runs()
        total = int(np.sum(a.item_end[runs] - a.item_begin[runs]))
        self.bar = progress_bar(options.progress, total)

    # --- running -------------------------------------------------------------------------------

    def run(self) -> None:
        """Run every step; raises the first fault that is not retried."""
        self.t0 = self.clock.now()
        # Endpoints first: one that does not answer fails the run before any local model loads.
        devs = self.plan.config.devices
        for d, e in sorted(enumerate(self.engines), key=lambda de: devs[de[0]].endpoint is None):
            if np.any((self.a.device == d) & (self.a.kind == StepKind.LOAD)):
                try:
                    e.prepare()
                except EngineError as err:
                    raise EngineError(f"device {d}: {err}") from err
        threads = [threading.Thread(target=self._lane, args=(lane,), daemon=True, name=f"symoe-lane{i}")
                   for i, lane in enumerate(self.lanes)]
        try:
            for th in threads:
                th.start()
            for th in threads:
                while th.is_alive():  # short joins keep the main thread responsive to signals
                    th.join(0.2)
                    if self.abort.is_set():
                        self._stop()
        except BaseException as e:  # KeyboardInterrupt / SystemExit: stop every lane, keep the store
            with self.lock:
                self.failure = self.failure or e
            self._stop()
            for th in threads:
                th.join(10.0)
            raise
        finally:
            self.agg.close()
            self.bar(None)
        # As the plan's prediction: results exist once the last run ends; unloads after it delay none.
        self.finish = self.clock.now() - self.t0
        self.makespan = max((r.end for r in self.records if r.kind == StepKind.RUN), default=0.0)
        if self.failure is not None:
            raise self.failure

    def _stop(self) -> None:
        """Wake every waiting lane and kill every engine: blocked calls fail at once."""
        with self.lock:
            if self.stopped:
                return
            self.stopped = True
        self.abort.set()
        for ev in list(self.done) + list(self.agg.ready.values()):
            ev.set()
        for e in self.engines:
            e.close()

    def _lane(self, steps: list[int]) -> None:
        try:
            for s in steps:
                for x in self.deps[s]:
                    self.done[x].wait()
                if s in self.agg.ready:
                    self.agg.ready[s].wait()
                if self.abort.is_set():
                    return
                self._step_with_retries(s)
                self.done[s].set()
        except BaseException as e:
            with self.lock:
                if self.failure is None and not self.abort.is_set():
                    self.failure = e
            self.abort.set()

    def _what(self, s: int) -> str:
        a = self.a
        kind = a.kind_of(s).label
        model = self.names[a.model[s]] if a.model[s] >= 0 else ""
        d, tp = int(a.device[s]), int(a.tp[s])
        where = f"device {d}" if tp <= 1 else f"devices {d}-{d + tp - 1} (tp {tp})"
        return f"step {s} ({kind} {model} on {where})".replace("  ", " ")

    def _deadline(self, s: int, predicted: float | None = None) -> float:
        t = self.plan.timeline
        if predicted is None:
            predicted = float(t.end[s] - t.start[s]) if t is not None else 0.0
        return self.clock.now() + self.opt.deadline_factor * predicted + self.opt.deadline_margin_s

    def _step_with_retries(self, s: int) -> None:
        attempt = 0
        while True:
            try:
                return self._step(s)
            except EngineError as e:
                if self.abort.is_set() or attempt >= self.opt.retries:
                    raise
                attempt += 1
                with self.lock:
                    self.retried += 1
                if self._recover(s, e):
                    return

    def _recover(self, s: int, err: EngineError) -> bool:
        """After a fault: kill the model's host and, where the step needs it resident, reload it.
        True if that completes the step (an unload, or a wake: a reloaded model is awake)."""
        a = self.a
        kind, d, m = a.kind_of(s), int(a.device[s]), int(a.model[s])
        if m < 0:
            return False
        name, eng = self.names[m], self.engines[d]
        eng.kill(name)
        if kind in (StepKind.RUN, StepKind.PARK, StepKind.WAKE):
            what = f"{self._what(s)}, reload after: {str(err).splitlines()[0]}"
            eng.load(self._settings(s, name), what, self._deadline(s, self.plan.config.model(name).load_s), keep_spare=False)
        if kind in (StepKind.UNLOAD, StepKind.WAKE):
            self.done[s].set()
            return True
        return False

    def _settings(self, s: int, model: str) -> ModelSettings:
        """The model's settings for step ``s``; a tensor-parallel step (tp > 1: the model is sharded
        over devices [device, device + tp), its every step names that group) tells the engine of its
        first device the group, which that engine then hosts the model on. The dependencies keep
        every device of the group from other generations meanwhile."""
        tp, d = int(self.a.tp[s]), int(self.a.device[s])
        return self.settings[model] if tp <= 1 else self.settings[model].on_devices(range(d, d + tp))

    def _step(self, s: int) -> None:
        a, eng = self.a, self.engines[int(self.a.device[s])]
        kind, d = a.kind_of(s), int(a.device[s])
        model = self.names[a.model[s]] if a.model[s] >= 0 else None
        if kind.is_io and (d, int(a.model[s])) not in self.needed:
            return
        what = self._what(s)
        t = self.plan.timeline
        rec = StepRecord(s, d, kind, model, 0.0, 0.0, float(t.start[s]) if t else 0.0, float(t.end[s]) if t else 0.0)
        start = self.clock.now()
        if kind == StepKind.LOAD:
            assert model is not None
            later = np.any((a.device[s + 1:] == d) & (a.kind[s + 1:] == StepKind.LOAD))
            rec.info = eng.load(self._settings(s, model), what, self._deadline(s), keep_spare=bool(later))
        elif kind == StepKind.UNLOAD:
            assert model is not None
            eng.unload(model, what, self._deadline(s))
        elif kind == StepKind.PARK:
            assert model is not None
            eng.park(model, what, self._deadline(s))
        elif kind == StepKind.WAKE:
            assert model is not None
            eng.wake(model, what, self._deadline(s))
        elif kind == StepKind.PAUSE:
            self.abort.wait(self.clock.real(float(a.seconds[s])))
        else:
            assert model is not None
            self._run(s, model, eng, what, rec)
        rec.start, rec.end = start - self.t0, self.clock.now() - self.t0
        with self.lock:
            self.records.append(rec)
        self.store.log_event(self.run_id, s, d, kind.label, model, rec.start, rec.end, (rec.predicted_start, rec.predicted_end),
                             rec.items, rec.tokens, rec.info)

    def aggregate_request(self, q: int, expert_texts: Sequence[str]) -> Request:
        """The aggregation request of question ``q`` from its stored expert answers."""
        return self.agg.request(q, expert_texts)

    def _run(self, s: int, model: str, eng: Engine, what: str, rec: StepRecord) -> None:
        a = self.a
        items = a.items_of(s)
        role = a.role_of(s)
        if role == Role.EXPERT:
            reqs = [self.expert_requests[int(i)] for i in items]
        else:
            reqs = self.agg.requests([int(q) for q in items])
        have = self.store.existing([r.key for r in reqs])
        todo = [r for r in reqs if r.key not in have]
        self._reused([r for r in reqs if r.key in have])
        rec.items = len(reqs)
        rec.info = {"role": role.label, "generated": 0}
        if todo:
            info = generate_once(eng, model, todo, self.store, self.run_id, self._stored, self._reused, what,
                                 self._deadline(s), self.clock, self.abort)
            rec.tokens, rec.prompt_tokens = info.tokens, info.prompt_tokens
            rec.info["generated"] = info.generated

    def _reused(self, reqs: list[Request]) -> None:
        """Found in the store (an earlier run, or another run on this store meanwhile)."""
        self.agg.available(reqs)
        with self.lock:
            self.reused += len(reqs)
        self.bar(len(reqs))

    def _stored(self, g: Generation) -> None:
        """A generation is committed the moment it arrives."""
        self.store.put(g)
        with self.lock:
            self.generated += 1
        self.agg.available([g])
        self.bar(1)
