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
import uuid
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..datasets import Question
from ..generation import Clock, Engine, EngineError, Generation, ModelSettings, Request, Requests, Sampling
from ..generation.batch import generate_once
from ..generation.local import LocalEngine
from ..generation.remote import EndpointSettings, RemoteEngine
from ..generation.served import ServedEngine
from ..planning import ROLES, STEP_KINDS, Plan, Role, StepKind
from ..progress import progress_bar
from ..store import Store
from .report import RunReport, StepRecord, grade_run, write_report


PREPARE_AHEAD = 16384  # aggregation requests built ahead of their step, at most


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


def check_plan_matches(plan: Plan, questions: Sequence[Question], experts_by_name: Sequence[Sequence[str]] | None) -> None:
    """Refuse a plan made for other questions or another assignment."""
    if len(questions) != len(plan.experts):
        raise ValueError(f"plan is for {len(plan.experts)} questions, {len(questions)} were given")
    if plan.question_ids and tuple(plan.question_ids) != tuple(q.id for q in questions):
        raise ValueError("plan does not match the questions: question ids differ")
    for q, h in zip(questions, plan.question_hashes):  # same ids, other texts: answers to the wrong questions
        if q.text_hash != h:
            raise ValueError(f"plan does not match the questions: question {q.id!r} has a different text "
                             f"from the one planned")
    if experts_by_name is not None:
        names = plan.config.names
        planned = [[names[m] for m in row] for row in plan.experts]
        if [list(r) for r in experts_by_name] != planned:
            raise ValueError("plan does not match the assignment: the experts per question differ")


def local_engines(plan: Plan, run_dir: Path) -> list[Engine]:
    """One engine per device: in-process workers, with a vLLM server per ``serve = "vllm"`` model,
    and a remote engine per endpoint model's virtual device."""
    cfg, logs = plan.config, run_dir / "logs"
    served = {m.name for m in cfg.models if m.serve == "vllm"}
    out: list[Engine] = []
    for d, dev in enumerate(cfg.devices):
        if dev.endpoint is not None:
            out.append(RemoteEngine(d, EndpointSettings.of(cfg.model(dev.endpoint))))
        elif served:
            out.append(ServedEngine.for_config(cfg, d, logs, served, LocalEngine.for_config(cfg, d, logs)))
        else:
            out.append(LocalEngine.for_config(cfg, d, logs))
    return out


def run_plan(plan: Plan, questions: Sequence[Question], store: Store, run_dir: str | Path,
             sampling: Sampling = Sampling(), assignment: Sequence[Sequence[str]] | None = None,
             options: RunOptions = RunOptions(), engines: Sequence[Engine] | None = None, clock: Clock | None = None,
             run_id: str | None = None) -> RunReport:
    """Execute every step of ``plan``; generations already in ``store`` are reused, not redone.
    ``engines`` (one per device) default to local vLLM workers."""
    check_plan_matches(plan, questions, assignment)
    dup = len({q.id for q in questions}) != len(questions)
    if dup:
        raise ValueError("questions: duplicate question ids (each question needs its own id)")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = plan.config
    if engines is None and cfg.cluster is not None:  # a Ray cluster's devices; a lost node's work replanned
        from ..cluster import run_on_config

        return run_on_config(plan, questions, store, run_dir, sampling, assignment, options, run_id)
    settings = {cfg.names[m]: ModelSettings.of(cfg, cfg.names[m]) for m in np.unique(plan.arrays["model"]) if m >= 0}
    if engines is None:
        engines = local_engines(plan, run_dir)
    elif len(engines) != len(cfg.devices):
        raise ValueError(f"{len(engines)} engines for a plan on {len(cfg.devices)} devices")
    s = Scheduler(plan, questions, store, Requests(cfg, sampling), settings, list(engines), options,
                  clock or Clock(), run_id or uuid.uuid4().hex[:12])
    try:
        s.run()
    finally:
        for e in engines:
            e.close()
        store.release(s.run_id)
    report = RunReport(s.run_id, sorted(s.records, key=lambda r: (r.start, r.step)),
                       grade_run(plan, questions, s.expert_requests, s.aggregate_request, store), s.makespan,
                       plan.makespan, s.generated, s.reused, s.retried, finish=s.finish)
    write_report(report, plan, run_dir, options.pictures)
    return report


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
        n = len(questions)
        self.expert_requests: list[Request] = [
            requests.expert(cfg.names[plan.experts[q, j]], questions[q], j) for q in range(n) for j in range(self.k)]
        self.lock = threading.Lock()
        self.abort = threading.Event()
        self.failure: BaseException | None = None
        self.records: list[StepRecord] = []
        self.generated = self.reused = self.retried = 0
        self.makespan = self.finish = 0.0
        # Aggregation readiness: expert generations still missing per question, and per
        # aggregation step the questions still waiting.
        have = store.existing([r.key for r in self.expert_requests])
        self.pending = {r.key for r in self.expert_requests} - have
        self.missing = [sum(r.key not in have for r in self.expert_requests[q * self.k:(q + 1) * self.k])
                        for q in range(n)]
        # Models whose every run on a device is already in the store (a resumed run, or the
        # aggregation phase of --skip-agreed) are neither loaded nor unloaded there.
        self.needed: set[tuple[int, int]] = set()
        self.prepared: dict[int, Request] = {}
        for st in np.flatnonzero(a["kind"] == StepKind.RUN):
            items = [int(i) for i in a["items"][a["item_begin"][st]:a["item_end"][st]]]
            if a["role"][st] == Role.EXPERT:
                need = any(self.expert_requests[i].key not in have for i in items)
            elif any(self.missing[q] for q in items):
                need = True
            else:  # every expert answer is stored, so the aggregation requests are known now
                reqs = self._aggregations(items)
                self.prepared.update(zip(items, reqs))
                need = len(store.existing([r.key for r in reqs])) < len(reqs)
            if need:
                self.needed.add((int(a["device"][st]), int(a["model"][st])))
        self.agg_steps_of: dict[int, list[int]] = {}
        self.agg_wait: dict[int, int] = {}
        self.agg_ready: dict[int, threading.Event] = {}
        for st in np.flatnonzero((a["kind"] == StepKind.RUN) & (a["role"] == Role.AGGREGATE)):
            waiting = [int(q) for q in a["items"][a["item_begin"][st]:a["item_end"][st]] if self.missing[q] > 0]
            self.agg_wait[int(st)] = len(waiting)
            self.agg_ready[int(st)] = ev = threading.Event()
            if not waiting:
                ev.set()
            for q in waiting:
                self.agg_steps_of.setdefault(q, []).append(int(st))
        self.qidx = {q.id: i for i, q in enumerate(questions)}
        self.stopped = False
        # Aggregation requests are built as their questions' experts complete, off the lanes (a
        # bounded number ahead: each holds its experts' texts).
        self.prepare_pool = ThreadPoolExecutor(1, thread_name_prefix="symoe-prepare")
        self.done = [threading.Event() for _ in range(plan.n_steps)]
        self.deps, self.lanes = self._graph()
        runs = a["kind"] == StepKind.RUN
        total = int(np.sum(a["item_end"][runs] - a["item_begin"][runs]))
        self.bar = progress_bar(options.progress, total)

    def _graph(self) -> tuple[list[list[int]], list[list[int]]]:
        """Per step the steps it waits for, and per lane its steps in order (the simulator's rules)."""
        a, devs = self.a, self.plan.config.devices
        D = len(devs)
        last_io: list[int | None] = [None] * D
        last_comp: list[int | None] = [None] * D
        ready: dict[tuple[int, int], int] = {}
        last_run: dict[tuple[int, int], int] = {}
        deps: list[list[int]] = []
        lanes: list[list[int]] = [[] for _ in range(2 * D)]  # lane 2d: compute, 2d+1: I/O
        for s in range(self.plan.n_steps):
            kind, d, m = STEP_KINDS[a["kind"][s]], int(a["device"][s]), int(a["model"][s])
            span = range(d, d + max(1, int(a["tp"][s])))
            overlap = devs[d].overlap_load
            dep: set[int | None] = set()
            if kind in ("load", "wake"):
                dep |= {last_io[e] for e in span} | (set() if overlap else {last_comp[e] for e in span})
            elif kind in ("unload", "park"):
                dep |= {last_io[e] for e in span} | {last_run.get((d, m)), ready.get((d, m))}
                dep |= set() if overlap else {last_comp[e] for e in span}
            elif kind == "run":
                dep |= {last_comp[e] for e in span} | {ready.get((d, m))}
                dep |= set() if overlap else {last_io[e] for e in span}
            else:  # pause
                dep |= {last_io[e] for e in span} | {last_comp[e] for e in span}
            io_step = kind in ("load", "wake", "unload", "park") and overlap
            lanes[2 * d + io_step].append(s)
            for e in span:
                if kind != "run" or not overlap:
                    last_io[e] = s
                if io_step is False:
                    last_comp[e] = s
                if kind in ("load", "wake"):
                    ready[(e, m)] = s
                if kind == "run":
                    last_run[(e, m)] = s
            deps.append(sorted(x for x in dep if x is not None))
        return deps, [lane for lane in lanes if lane]

    # --- running -------------------------------------------------------------------------------

    def run(self) -> None:
        """Run every step; raises the first fault that is not retried."""
        self.t0 = self.clock.now()
        # Endpoints first: one that does not answer fails the run before any local model loads.
        devs = self.plan.config.devices
        for d, e in sorted(enumerate(self.engines), key=lambda de: devs[de[0]].endpoint is None):
            if np.any((self.a["device"] == d) & (self.a["kind"] == StepKind.LOAD)):
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
            self.prepare_pool.shutdown(wait=False, cancel_futures=True)
            self.bar(None)
        # As the plan's prediction: results exist once the last run ends; unloads after it delay none.
        self.finish = self.clock.now() - self.t0
        self.makespan = max((r.end for r in self.records if r.kind == "run"), default=0.0)
        if self.failure is not None:
            raise self.failure

    def _stop(self) -> None:
        """Wake every waiting lane and kill every engine: blocked calls fail at once."""
        with self.lock:
            if self.stopped:
                return
            self.stopped = True
        self.abort.set()
        for ev in list(self.done) + list(self.agg_ready.values()):
            ev.set()
        for e in self.engines:
            e.close()

    def _lane(self, steps: list[int]) -> None:
        try:
            for s in steps:
                for x in self.deps[s]:
                    self.done[x].wait()
                if s in self.agg_ready:
                    self.agg_ready[s].wait()
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
        kind = STEP_KINDS[a["kind"][s]]
        model = self.names[a["model"][s]] if a["model"][s] >= 0 else ""
        return f"step {s} ({kind} {model} on device {int(a['device'][s])})".replace("  ", " ")

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
        kind, d, m = STEP_KINDS[a["kind"][s]], int(a["device"][s]), int(a["model"][s])
        if m < 0:
            return False
        name, eng = self.names[m], self.engines[d]
        eng.kill(name)
        if kind in ("run", "park", "wake"):
            what = f"{self._what(s)}, reload after: {str(err).splitlines()[0]}"
            eng.load(self.settings[name], what, self._deadline(s, self.plan.config.model(name).load_s), keep_spare=False)
        if kind in ("unload", "wake"):
            self.done[s].set()
            return True
        return False

    def _step(self, s: int) -> None:
        a, eng = self.a, self.engines[int(self.a["device"][s])]
        kind, d = STEP_KINDS[a["kind"][s]], int(a["device"][s])
        model = self.names[a["model"][s]] if a["model"][s] >= 0 else None
        if kind in ("load", "unload", "park", "wake") and (d, int(a["model"][s])) not in self.needed:
            return
        what = self._what(s)
        t = self.plan.timeline
        rec = StepRecord(s, d, kind, model, 0.0, 0.0, float(t.start[s]) if t else 0.0, float(t.end[s]) if t else 0.0)
        start = self.clock.now()
        if kind == "load":
            assert model is not None
            later = np.any((a["device"][s + 1:] == d) & (a["kind"][s + 1:] == StepKind.LOAD))
            rec.info = eng.load(self.settings[model], what, self._deadline(s), keep_spare=bool(later))
        elif kind == "unload":
            assert model is not None
            eng.unload(model, what, self._deadline(s))
        elif kind == "park":
            assert model is not None
            eng.park(model, what, self._deadline(s))
        elif kind == "wake":
            assert model is not None
            eng.wake(model, what, self._deadline(s))
        elif kind == "pause":
            self.abort.wait(self.clock.real(float(a["seconds"][s])))
        else:
            assert model is not None
            self._run(s, model, eng, what, rec)
        rec.start, rec.end = start - self.t0, self.clock.now() - self.t0
        with self.lock:
            self.records.append(rec)
        self.store.log_event(self.run_id, s, d, kind, model, rec.start, rec.end, (rec.predicted_start, rec.predicted_end),
                             rec.items, rec.tokens, rec.info)

    def aggregate_request(self, q: int, expert_texts: Sequence[str]) -> Request:
        """The aggregation request of question ``q`` from its stored expert answers."""
        assert self.plan.aggregator is not None
        return self.req.aggregate(self.names[self.plan.aggregator[q]], self.qs[q], expert_texts)

    def _aggregations(self, questions: Sequence[int]) -> list[Request]:
        """The aggregation requests of ``questions`` (all experts stored), prepared or built now."""
        with self.lock:
            ready = {q: self.prepared.pop(q) for q in questions if q in self.prepared}
        rest = [q for q in questions if q not in ready]
        got = self.store.generations(r.key for q in rest for r in self.expert_requests[q * self.k:(q + 1) * self.k])
        for q in rest:
            ready[q] = self.aggregate_request(q, [got[r.key].text for r in self.expert_requests[q * self.k:(q + 1) * self.k]])
        return [ready[q] for q in questions]

    def _prepare(self, q: int) -> None:
        if self.abort.is_set():
            return
        r = self._aggregations([q])[0]
        with self.lock:
            self.prepared[q] = r

    def _run(self, s: int, model: str, eng: Engine, what: str, rec: StepRecord) -> None:
        a = self.a
        items = a["items"][a["item_begin"][s]:a["item_end"][s]]
        role = ROLES[a["role"][s]]
        if role == "expert":
            reqs = [self.expert_requests[int(i)] for i in items]
        else:
            reqs = self._aggregations([int(q) for q in items])
        have = self.store.existing([r.key for r in reqs])
        todo = [r for r in reqs if r.key not in have]
        self._reused([r for r in reqs if r.key in have])
        rec.items = len(reqs)
        rec.info = {"role": role, "generated": 0}
        if todo:
            info = generate_once(eng, model, todo, self.store, self.run_id, self._stored, self._reused, what,
                                 self._deadline(s), self.clock, self.abort)
            rec.tokens, rec.prompt_tokens = info.tokens, info.prompt_tokens
            rec.info["generated"] = info.generated

    def _reused(self, reqs: list[Request]) -> None:
        """Found in the store (an earlier run, or another run on this store meanwhile)."""
        self._available(reqs)
        with self.lock:
            self.reused += len(reqs)
        self.bar(len(reqs))

    def _stored(self, g: Generation) -> None:
        """A generation is committed the moment it arrives."""
        self.store.put(g)
        with self.lock:
            self.generated += 1
        self._available([g])
        self.bar(1)

    def _available(self, gens: Sequence[Generation | Request]) -> None:
        """Generations now in the store (ours, or another run's); only expert answers count: the
        last one of a question releases its aggregations and has its aggregation prepared ahead."""
        ready: list[threading.Event] = []
        prepare: list[int] = []
        with self.lock:
            for g in gens:
                if g.key not in self.pending:
                    continue
                self.pending.discard(g.key)
                q = self.qidx[g.question]
                self.missing[q] -= 1
                if self.missing[q] == 0 and q in self.agg_steps_of:
                    if len(self.prepared) < PREPARE_AHEAD:
                        prepare.append(q)
                    for st in self.agg_steps_of[q]:
                        self.agg_wait[st] -= 1
                        if self.agg_wait[st] == 0:
                            ready.append(self.agg_ready[st])
        for q in prepare:
            self.prepare_pool.submit(self._prepare, q)
        for ev in ready:
            ev.set()
