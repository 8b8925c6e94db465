"""Run a plan on real engines: every step executed and timed, every generation stored as it
completes, aggregation after its experts, results graded."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import Question
from .engine import Device, WorkerError, engine_env
from .grading import extract_answer, is_correct
from .picture import draw_timeline
from .planning import ROLES, STEP_KINDS, Config, Plan
from .prompts import aggregator_messages, as_completion, expert_messages
from .store import Generation, Store, generation_key


@dataclass(frozen=True)
class Sampling:
    """Paper defaults: temperature 0.7, up to 4096 new tokens."""

    temperature: float = 0.7
    max_tokens: int = 4096
    aggregate_max_tokens: int = 4096
    seed: int = 0


@dataclass
class StepRecord:
    step: int
    device: int
    kind: str
    model: str | None
    start: float
    end: float
    predicted_start: float
    predicted_end: float
    items: int = 0
    tokens: int = 0
    prompt_tokens: int = 0
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class QuestionResult:
    id: str
    experts: list[str]
    expert_answers: list[str | None]
    aggregator: str | None
    final_answer: str | None
    gold: str
    correct: bool
    expert_texts: list[str] = field(default_factory=list)
    final_text: str = ""


@dataclass
class RunReport:
    run_id: str
    steps: list[StepRecord]
    results: list[QuestionResult]
    makespan: float
    predicted_makespan: float
    generated: int
    reused: int

    @property
    def accuracy(self) -> float:
        return float(np.mean([r.correct for r in self.results])) if self.results else 0.0


def _seed(base: int, qid: str, role: str, slot: int) -> int:
    h = hashlib.sha256(f"{base}|{qid}|{role}|{slot}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def make_request(cfg: Config, model: str, messages: list[dict[str, str]], params: dict[str, Any], role: str,
                 slot: int, question: str) -> dict[str, Any]:
    """One generation request with its store key (chat messages, or a completion prompt for base models)."""
    payload = {"messages": messages} if cfg.model(model).chat else {"prompt": as_completion(messages)}
    key = generation_key(model, payload, params, role, slot)
    return {"id": key, "key": key, "model": model, "question": question, "role": role, "slot": slot,
            "params": params, **payload, **params}


def open_device(cfg: Config, d: int, log_dir: Path) -> Device:
    """Device ``d`` of ``cfg``, its workers started with the config's engine environment."""
    eng = dict(cfg.engine)
    env = engine_env(eng.get("platform", "gpu"), d, eng.get("threads"), float(eng.get("kv_cache_gb", 1.0)))
    return Device(d, env, log_dir)


def generate_jobs(cfg: Config, jobs: Sequence[tuple[str, Sequence[dict[str, Any]]]], store: Store, run_dir: str | Path,
                  progress: bool = True, label: str = "generations") -> dict[str, Generation]:
    """One model at a time on device 0: load, generate what the store lacks, unload. For stages
    that run one model over many prompts (keywords, profiling, aggregator selection)."""
    dev = open_device(cfg, 0, Path(run_dir) / "logs")
    keys = [r["key"] for _, reqs in jobs for r in reqs]
    have = store.existing(keys)
    todo = [(m, [r for r in reqs if r["key"] not in have]) for m, reqs in jobs]
    todo = [(m, reqs) for m, reqs in todo if reqs]
    bar = _progress(progress, sum(len(r) for _, r in todo), label)
    try:
        for i, (model, reqs) in enumerate(todo):
            what = f"{label}: model {model}"
            dev.load(model, model_spec(cfg, model), f"{what} (load)", keep_spare=i + 1 < len(todo))
            generate_into(dev.worker(model, what), reqs, store, f"{what} (generate)", lambda: bar(1))
            dev.unload(model, f"{what} (unload)")
    finally:
        dev.close()
        bar(None)
    return store.generations(keys)


def generate_into(worker: Any, reqs: Sequence[dict[str, Any]], store: Store, what: str,
                  on_stored: Any = None) -> dict[str, Any]:
    """Generate ``reqs`` on a worker, committing each generation to the store as it finishes."""
    by_id = {r["id"]: r for r in reqs}

    def on_done(ev: dict[str, Any]) -> None:
        r = by_id[ev["id"]]
        store.put(Generation(r["key"], r["model"], r["question"], r["role"], r["slot"],
                             json.dumps(r["params"], sort_keys=True), ev["text"], ev["prompt_tokens"], ev["tokens"],
                             ev["finish"]))
        if on_stored:
            on_stored()

    wire = [{k: r[k] for k in ("id", "messages", "prompt", "temperature", "max_tokens", "seed") if k in r} for r in reqs]
    return worker.request({"op": "generate", "requests": wire}, what, on_event=on_done)


class Prompts:
    """Requests (prompt, sampling parameters, store key) for expert slots and aggregations."""

    def __init__(self, plan: Plan, questions: Sequence[Question], sampling: Sampling):
        self.plan, self.qs, self.s = plan, questions, sampling
        self.cfg = plan.config
        self._experts: dict[int, dict[str, Any]] = {}  # polled while aggregation waits, and by grading

    def expert(self, item: int) -> dict[str, Any]:
        item = int(item)
        if item not in self._experts:
            q, slot = divmod(item, self.plan.k)
            self._experts[item] = expert_request(self.cfg, self.cfg.names[self.plan.experts[q, slot]], self.qs[q], slot,
                                                 self.s)
        return self._experts[item]

    def expert_keys(self, q: int) -> list[str]:
        return [self.expert(q * self.plan.k + j)["key"] for j in range(self.plan.k)]

    def aggregate(self, q: int, expert_texts: list[str]) -> dict[str, Any]:
        qu = self.qs[q]
        params = {"temperature": self.s.temperature, "max_tokens": self.s.aggregate_max_tokens,
                  "seed": _seed(self.s.seed, qu.id, "aggregate", 0)}
        return make_request(self.cfg, self.cfg.names[self.plan.aggregator[q]],
                            aggregator_messages(qu.text, qu.kind, expert_texts), params, "aggregate", 0, qu.id)


def expert_request(cfg: Config, model: str, qu: Question, slot: int, s: Sampling) -> dict[str, Any]:
    """The expert's chain-of-thought request; profiling uses the same one (slot 0)."""
    params = {"temperature": s.temperature, "max_tokens": s.max_tokens, "seed": _seed(s.seed, qu.id, "expert", slot)}
    return make_request(cfg, model, expert_messages(qu.text, qu.kind), params, "expert", slot, qu.id)


def model_spec(cfg: Config, name: str) -> dict[str, Any]:
    m = cfg.model(name)
    eng = dict(cfg.engine)
    platform = eng.get("platform", "gpu")
    spec: dict[str, Any] = {"name": m.name, "path": m.path or m.name, "chat": m.chat,
                            "dtype": eng.get("dtype", "float32" if platform == "cpu" else "auto"),
                            "max_model_len": int(eng.get("max_model_len", 4096)),
                            "enforce_eager": bool(eng.get("enforce_eager", platform == "cpu")),
                            "sleep": m.park_s >= 0 and platform != "cpu"}
    if platform == "cpu":
        spec["chunked_prefill"] = False
        if m.path and not Path(m.path).exists():
            raise ValueError(f"model {name}: path {m.path} does not exist (run `symoe models fetch tiny`?)")
    else:
        spec["gpu_memory_utilization"] = min(0.95, m.resident_bytes / cfg.devices[0].memory_bytes)
    return spec


def check_plan_matches(plan: Plan, questions: Sequence[Question], experts_by_name: Sequence[Sequence[str]] | None) -> None:
    if len(questions) != len(plan.experts):
        raise ValueError(f"plan is for {len(plan.experts)} questions, {len(questions)} were given")
    if plan.question_ids and tuple(plan.question_ids) != tuple(q.id for q in questions):
        raise ValueError("plan does not match the questions: question ids differ")
    if experts_by_name is not None:
        names = plan.config.names
        planned = [[names[m] for m in row] for row in plan.experts]
        if [list(r) for r in experts_by_name] != planned:
            raise ValueError("plan does not match the assignment: the experts per question differ")


def run_plan(plan: Plan, questions: Sequence[Question], store: Store, run_dir: str | Path,
             sampling: Sampling = Sampling(), assignment: Sequence[Sequence[str]] | None = None,
             progress: bool = True, run_id: str | None = None) -> RunReport:
    """Execute every step of ``plan``; generations already in ``store`` are reused, not redone."""
    check_plan_matches(plan, questions, assignment)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = plan.config
    for name in {cfg.names[m] for m in np.unique(plan.arrays["model"]) if m >= 0}:
        model_spec(cfg, name)  # bad paths fail before any engine starts
    run_id = run_id or uuid.uuid4().hex[:12]
    prompts = Prompts(plan, questions, sampling)
    D = len(cfg.devices)
    devices = [open_device(cfg, d, run_dir / "logs") for d in range(D)]
    a = plan.arrays
    per_device = [np.flatnonzero(a["device"] == d) for d in range(D)]
    loads_left = [int(np.sum(a["kind"][idx] == 0)) for idx in per_device]
    t = plan.timeline
    records: list[StepRecord] = []
    done = threading.Condition()
    counters = Counter()
    errors: list[BaseException] = []
    bar = _progress(progress, int(np.sum(a["item_end"][a["kind"] == 1] - a["item_begin"][a["kind"] == 1])))
    t0 = time.perf_counter()

    def expert_texts(q: int) -> list[str] | None:
        keys = prompts.expert_keys(q)
        got = store.generations(keys)
        return [got[k].text for k in keys] if len(got) == len(keys) else None

    # Devices that may load while generating run their loads on an I/O thread, as planned; any
    # later step of the same model waits for its load.
    io = [ThreadPoolExecutor(1) if cfg.devices[d].overlap_load else None for d in range(D)]
    loading: dict[tuple[int, str], Future] = {}

    def finish(rec: StepRecord, start: float) -> None:
        rec.start, rec.end = start - t0, time.perf_counter() - t0
        records.append(rec)
        store.log_event(run_id, rec.step, rec.device, rec.kind, rec.model, rec.start, rec.end,
                        (rec.predicted_start, rec.predicted_end), rec.items, rec.tokens, rec.info)

    def run_step(d: int, s: int) -> None:
        kind, model = STEP_KINDS[a["kind"][s]], (cfg.names[a["model"][s]] if a["model"][s] >= 0 else None)
        what = f"step {s} ({kind} {model or ''} on device {d})"
        rec = StepRecord(s, d, kind, model, 0, 0, float(t.start[s]), float(t.end[s]))
        if model is not None and (d, model) in loading:
            loading.pop((d, model)).result()  # re-raises a failed load
        start = time.perf_counter()
        dev = devices[d]
        if kind == "load":
            loads_left[d] -= 1
            keep = loads_left[d] > 0

            def do_load() -> None:
                t_load = time.perf_counter()
                rec.info = dev.load(model, model_spec(cfg, model), what, keep_spare=keep)
                finish(rec, t_load)

            if io[d] is not None:
                loading[(d, model)] = io[d].submit(do_load)
            else:
                do_load()
            return
        elif kind == "unload":
            dev.unload(model, what)
        elif kind in ("park", "wake"):
            dev.worker(model, what).request({"op": kind}, what)
        elif kind == "pause":
            time.sleep(float(a["seconds"][s]))
        elif kind == "run":
            items = a["items"][a["item_begin"][s]:a["item_end"][s]]
            role = ROLES[a["role"][s]]
            if role == "expert":
                reqs = [prompts.expert(i) for i in items]
            else:
                reqs = []
                for q in items:
                    with done:
                        while (texts := expert_texts(int(q))) is None:
                            if errors:
                                raise WorkerError(f"{what}: aborted, another device failed")
                            done.wait(timeout=1.0)
                    reqs.append(prompts.aggregate(int(q), texts))
            start = time.perf_counter()  # waiting for other devices is not this step's work
            have = store.existing([r["key"] for r in reqs])
            todo = [r for r in reqs if r["key"] not in have]
            counters["reused"] += len(reqs) - len(todo)
            bar(len(reqs) - len(todo))

            def stored() -> None:
                counters["generated"] += 1
                bar(1)
                with done:
                    done.notify_all()

            rec.items = len(reqs)
            if todo:
                info = generate_into(dev.worker(model, what), todo, store, what, stored)
                rec.tokens, rec.prompt_tokens = int(info["tokens"]), int(info["prompt_tokens"])
                rec.info = {"role": role, "generated": len(todo), "first_token_s": info.get("first_token_s")}
            else:
                rec.info = {"role": role, "generated": 0}
        finish(rec, start)

    def drive(d: int) -> None:
        try:
            if len(per_device[d]) and loads_left[d]:
                devices[d].prepare_spare()
            for s in per_device[d]:
                if errors:
                    return
                run_step(d, int(s))
            for key in [k for k in loading if k[0] == d]:
                loading.pop(key).result()
        except BaseException as e:  # reported by the main thread with model and step
            errors.append(e)
            with done:
                done.notify_all()

    threads = [threading.Thread(target=drive, args=(d,), daemon=True) for d in range(D)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        for pool in io:
            if pool is not None:
                pool.shutdown(wait=True)
        for dev in devices:
            dev.close()
        bar(None)
    if errors:
        raise errors[0]
    makespan = time.perf_counter() - t0
    results = grade(plan, questions, prompts, store)
    records.sort(key=lambda r: (r.start, r.step))
    report = RunReport(run_id, records, results, makespan, plan.makespan, counters["generated"], counters["reused"])
    write_report(report, plan, run_dir)
    return report


def grade(plan: Plan, questions: Sequence[Question], prompts: Prompts, store: Store) -> list[QuestionResult]:
    names = plan.config.names
    out = []
    for q, qu in enumerate(questions):
        keys = prompts.expert_keys(q)
        got = store.generations(keys)
        texts = [got[k].text for k in keys if k in got]
        answers = [extract_answer(x, qu.kind) for x in texts]
        agg = None
        final_text = ""
        if plan.aggregator is not None and plan.aggregator[q] >= 0 and len(texts) == plan.k:
            agg = names[plan.aggregator[q]]
            g = store.get(prompts.aggregate(q, texts)["key"])
            final_text = g.text if g else ""
            final = extract_answer(final_text, qu.kind)
        else:
            final = majority(answers)
        out.append(QuestionResult(qu.id, [names[m] for m in plan.experts[q]], answers, agg, final, qu.gold,
                                  is_correct(final, qu.gold, qu.kind), texts, final_text))
    return out


def majority(answers: Sequence[str | None]) -> str | None:
    """Most frequent extracted answer; ties go to the earliest slot."""
    valid = [x for x in answers if x is not None]
    if not valid:
        return None
    c = Counter(valid)
    best = max(c.values())
    return next(x for x in valid if c[x] == best)


def write_report(report: RunReport, plan: Plan, run_dir: Path) -> None:
    with open(run_dir / "run_log.jsonl", "w") as f:
        for r in report.steps:
            f.write(json.dumps(asdict(r)) + "\n")
    with open(run_dir / "results.jsonl", "w") as f:
        for r in report.results:
            f.write(json.dumps(asdict(r)) + "\n")
    names = list(plan.config.names)
    idx = {n: i for i, n in enumerate(names)}
    dev = np.array([r.device for r in report.steps])
    mod = np.array([idx[r.model] if r.model else -1 for r in report.steps])
    kinds = [r.kind for r in report.steps]
    draw_timeline(run_dir / "timeline_measured.png", names, dev, mod, kinds, np.array([r.start for r in report.steps]),
                  np.array([r.end for r in report.steps]), f"{plan.strategy}: measured {report.makespan:,.1f} s")
    draw_timeline(run_dir / "timeline_predicted.png", names, dev, mod, kinds,
                  np.array([r.predicted_start for r in report.steps]), np.array([r.predicted_end for r in report.steps]),
                  f"{plan.strategy}: predicted {plan.makespan:,.1f} s (cost model)")


def calibrate(cfg: Config, report: RunReport) -> Config:
    """Cost-model figures from a measured run, for the next plan: per model the median load time
    and prefill/decode throughputs fitted by least squares to its generate steps
    (``seconds - overhead = prompt_tokens / prefill_tps + tokens / decode_tps``), and the observed
    tokens per request by role."""
    loads: dict[str, list[float]] = {}
    runs: dict[str, list[StepRecord]] = {}
    for r in report.steps:
        if r.kind == "load" and r.model:
            loads.setdefault(r.model, []).append(r.end - r.start)
        if r.kind == "run" and r.model and r.info.get("generated"):
            runs.setdefault(r.model, []).append(r)
    models = []
    for m in cfg.models:
        upd: dict[str, Any] = {}
        if m.name in loads:
            upd["load_s"] = float(np.median(loads[m.name]))
        rs = runs.get(m.name, [])
        if rs and all(r.info["generated"] == 1 for r in rs):
            # Only single requests (a naive run): they measure one stream, not a saturated batch.
            t = sum(max(r.end - r.start - m.overhead_s, 1e-3) for r in rs)
            upd["stream_tps"] = sum(r.tokens for r in rs) / t
        elif rs:
            A = np.array([[r.prompt_tokens, r.tokens] for r in rs], dtype=float)
            y = np.array([max(r.end - r.start - m.overhead_s, 1e-3) for r in rs])
            x = np.linalg.lstsq(A, y, rcond=None)[0] if len(rs) >= 2 and np.linalg.matrix_rank(A) == 2 else None
            if x is not None and (x > 0).all():
                upd["prefill_tps"], upd["decode_tps"] = 1.0 / x[0], 1.0 / x[1]
            elif A[:, 1].sum() > 0:  # one run: keep the configured prefill rate, fit decode
                upd["decode_tps"] = A[:, 1].sum() / max(y.sum() - A[:, 0].sum() / m.prefill_tps, 1e-3)
        models.append(replace(m, **upd))
    tokens = cfg.tokens
    for role in ("expert", "aggregate"):
        rs = [r for r in report.steps if r.kind == "run" and r.info.get("role") == role and r.info.get("generated")]
        n = sum(r.info["generated"] for r in rs)
        if n:
            tokens = replace(tokens, **{f"{role}_prompt": sum(r.prompt_tokens for r in rs) / n,
                                        f"{role}_output": sum(r.tokens for r in rs) / n})
    return replace(cfg, models=tuple(models), tokens=tokens)


def _progress(enabled: bool, total: int, label: str = "generations"):
    if not enabled:
        return lambda n: None
    try:
        from tqdm import tqdm
    except ImportError:
        return lambda n: None
    bar = tqdm(total=total, desc=label, unit="gen", leave=True)
    lock = threading.Lock()

    def update(n: int | None) -> None:
        with lock:
            if n is None:
                bar.close()
            else:
                bar.update(n)
    return update
