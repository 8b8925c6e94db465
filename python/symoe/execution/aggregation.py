"""When aggregations may start: per question, the expert answers the store still lacks.

The last expert answer of a question releases the aggregation steps that wait for it (an event,
counted per question, no polling) and has its aggregation request built ahead, off the lanes (a
bounded number ahead: each holds its experts' texts)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from ..generation import Generation, Request
from ..method.datasets import Question
from ..method.requests import Requests
from ..planning.plan import Plan, Role
from ..store import Store

PREPARE_AHEAD = 16384  # aggregation requests built ahead of their step, at most


class Aggregations:
    """Aggregation readiness and requests of one run (thread-safe under ``lock``)."""

    def __init__(self, plan: Plan, questions: Sequence[Question], store: Store, requests: Requests,
                 lock: threading.Lock, abort: threading.Event):
        self.plan, self.qs, self.store, self.req, self.lock, self.abort = plan, questions, store, requests, lock, abort
        a, k, n = plan.arrays, plan.k, len(questions)
        self.k = k
        self.expert_requests = requests.plan_experts(plan, questions)
        have = store.existing([r.key for r in self.expert_requests])
        self.pending = {r.key for r in self.expert_requests} - have
        self.missing = [sum(r.key not in have for r in self.expert_requests[q * k:(q + 1) * k]) for q in range(n)]
        self.prepared: dict[int, Request] = {}
        self.steps_of: dict[int, list[int]] = {}  # question -> aggregation steps waiting for it
        self.wait: dict[int, int] = {}             # aggregation step -> questions it still waits for
        self.ready: dict[int, threading.Event] = {}
        for st in a.runs(Role.AGGREGATE):
            waiting = [int(q) for q in a.items_of(st) if self.missing[q] > 0]
            self.wait[int(st)] = len(waiting)
            self.ready[int(st)] = ev = threading.Event()
            if not waiting:
                ev.set()
            for q in waiting:
                self.steps_of.setdefault(q, []).append(int(st))
        self.qidx = {q.id: i for i, q in enumerate(questions)}
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="symoe-prepare")

    def needed(self) -> set[tuple[int, int]]:
        """(device, model) pairs with work the store lacks: a model whose every run on a device is
        stored (a resumed run, or the aggregation phase of --skip-agreed) is neither loaded nor
        unloaded there."""
        a, out = self.plan.arrays, set()
        for st in a.runs():
            items = [int(i) for i in a.items_of(st)]
            if a.role_of(st) == Role.EXPERT:
                need = any(self.expert_requests[i].key in self.pending for i in items)
            elif any(self.missing[q] for q in items):
                need = True
            else:  # every expert answer is stored, so the aggregation requests are known now
                reqs = self.requests(items)
                self.prepared.update(zip(items, reqs))
                need = len(self.store.existing([r.key for r in reqs])) < len(reqs)
            if need:
                out.add((int(a.device[st]), int(a.model[st])))
        return out

    def request(self, q: int, expert_texts: Sequence[str]) -> Request:
        """The aggregation request of question ``q`` from its experts' answers."""
        assert self.plan.aggregator is not None
        return self.req.aggregate(self.plan.config.names[self.plan.aggregator[q]], self.qs[q], expert_texts)

    def requests(self, questions: Sequence[int]) -> list[Request]:
        """The aggregation requests of ``questions`` (all experts stored), prepared or built now."""
        with self.lock:
            ready = {q: self.prepared.pop(q) for q in questions if q in self.prepared}
        rest = [q for q in questions if q not in ready]
        k = self.k
        got = self.store.generations(r.key for q in rest for r in self.expert_requests[q * k:(q + 1) * k])
        for q in rest:
            ready[q] = self.request(q, [got[r.key].text for r in self.expert_requests[q * k:(q + 1) * k]])
        return [ready[q] for q in questions]

    def _prepare(self, q: int) -> None:
        if self.abort.is_set():
            return
        r = self.requests([q])[0]
        with self.lock:
            self.prepared[q] = r

    def available(self, gens: Sequence[Generation | Request]) -> None:
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
                if self.missing[q] == 0 and q in self.steps_of:
                    if len(self.prepared) < PREPARE_AHEAD:
                        prepare.append(q)
                    for st in self.steps_of[q]:
                        self.wait[st] -= 1
                        if self.wait[st] == 0:
                            ready.append(self.ready[st])
        for q in prepare:
            self.pool.submit(self._prepare, q)
        for ev in ready:
            ev.set()

    def close(self) -> None:
        """Stop preparing requests ahead."""
        self.pool.shutdown(wait=False, cancel_futures=True)
