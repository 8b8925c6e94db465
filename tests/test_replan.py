"""Replanning after a lost device (a cluster node), on fake engines: the missing work is planned
anew over the surviving devices and only what the store lacks is generated; without retries the
loss is reported with its device and node. (The same on a real Ray cluster: test_ray_e2e.py.)"""

from collections import Counter

import pytest

import symoe
from symoe.execution import RunOptions
from symoe.execution.replan import missing_questions, replan, run_replanning, stored_work
from symoe.generation import Sampling
from symoe.generation.engine import DeviceLost
from symoe.generation.fake import FakeEngine, ScaledClock
from symoe.method.requests import Requests
from symoe.store import Store
from test_scheduler import AGG, PAPER
from test_scheduler import workload as scheduler_workload

QUIET = RunOptions(progress=False, pictures=False)


def workload(n, devices=3, seed=0):
    """The scheduler tests' skewed workload, planned on ``devices`` paper16 devices."""
    qs, a = scheduler_workload(n, seed)
    return qs, symoe.plan(a, PAPER.with_devices(devices), aggregator=AGG)


class LosingNode(FakeEngine):
    """A fake device whose node is lost after ``after`` generations: every call fails from then on."""

    def __init__(self, *args, after: int, **kw):
        super().__init__(*args, **kw)
        self.after, self.done, self.lost = after, 0, False

    def _gone(self, what, model=""):
        self.lost = True
        raise DeviceLost(f"{what}: node node-x was lost", model, self.device, "node-x", True)

    def load(self, model, what, deadline, keep_spare=True):
        if self.lost:
            self._gone(what, model.name)
        return super().load(model, what, deadline, keep_spare)

    def generate(self, model, requests, on_done, what, deadline):
        if self.lost:
            self._gone(what, model)

        def counted(g):
            if self.done >= self.after:
                self._gone(what, model)
            self.done += 1
            on_done(g)

        return super().generate(model, requests, counted, what, deadline)


def run(p, qs, tmp_path, lose_device, retries, after=20):
    clock = ScaledClock(3.0 / p.makespan)
    made: list[tuple[list[int], list[FakeEngine]]] = []

    def engines_for(plan, devices):
        engines = [LosingNode(i, plan.config, clock, after=after) if d == lose_device and not made
                   else FakeEngine(i, plan.config, clock) for i, d in enumerate(devices)]
        made.append((devices, engines))
        return engines

    with Store(tmp_path / "store.sqlite") as store:
        r = run_replanning(p, qs, store, tmp_path / "run", Sampling(), options=RunOptions(progress=False, pictures=False,
                           retries=retries), engines_for=engines_for, clock=clock)
    return r, made


def test_node_lost_mid_run_is_replanned_over_the_survivors(tmp_path):
    qs, p = workload(300)
    r, made = run(p, qs, tmp_path, lose_device=1, retries=1)
    assert [d for d, _ in made] == [[0, 1, 2], [0, 2]]  # the second plan runs on the survivors only
    assert made[0][1][1].lost
    log = [x for _, engines in made for e in engines for x in e.log]
    counts = Counter(x[0] for x in log)
    with Store(tmp_path / "store.sqlite") as s:
        assert s.count("expert") == len(qs) * p.k and s.count("aggregate") == len(qs)
        stored = set(s.all_keys())
    # Nothing generated twice, except what the lost node finished but never handed back.
    assert all(n == 1 for k, n in counts.items() if k in stored and k not in {x[0] for x in made[0][1][1].log})
    assert r.generated == len(qs) * (p.k + 1) and r.reused == 0 and r.retries >= 1
    assert len(r.results) == len(qs) and all(x.final_text for x in r.results)


def test_node_lost_without_retries_is_reported_and_a_rerun_redoes_only_the_rest(tmp_path):
    qs, p = workload(200)
    with pytest.raises(DeviceLost, match="node node-x was lost") as e:
        run(p, qs, tmp_path, lose_device=2, retries=0)
    assert e.value.device == 2 and e.value.node == "node-x" and e.value.node_lost
    requests = Requests(p.config, Sampling())
    with Store(tmp_path / "store.sqlite") as s:
        kept = {k: s.get(k).text for k in s.all_keys()}
        todo = missing_questions(p, qs, s, requests)
        assert 0 < len(kept) < len(qs) * (p.k + 1) and 0 < len(todo) <= len(qs)
        # replan() over devices 0 and 1: the questions with missing work, nothing else.
        rp = replan(p, qs, s, requests, lost=[2])
    assert rp.devices == [0, 1] and len(rp.plan.config.devices) == 2
    assert rp.question_index == todo and [q.id for q in rp.questions] == list(rp.plan.question_ids)
    assert {int(d) for d in rp.plan.arrays.device} <= {0, 1}
    # The rerun, told that device 2 is gone, generates exactly what the store lacks.
    clock = ScaledClock(3.0 / p.makespan)
    engines: list[FakeEngine] = []

    def engines_for(plan, devices):
        engines.extend(FakeEngine(i, plan.config, clock) for i in range(len(devices)))
        return engines[-len(devices):]

    with Store(tmp_path / "store.sqlite") as s:
        r = run_replanning(p, qs, s, tmp_path / "run2", Sampling(), options=RunOptions(progress=False, pictures=False,
                           retries=1), engines_for=engines_for, lost_now=lambda: {2: "node node-x is not alive"},
                           clock=clock)
        assert stored_work(p, qs, s, requests) == len(qs) * (p.k + 1)
        assert all(s.get(k).text == v for k, v in kept.items())
    generated = [x[0] for e in engines for x in e.log]
    assert len(generated) == len(set(generated)) == len(qs) * (p.k + 1) - len(kept)
    assert not set(generated) & set(kept)
    assert r.generated == len(generated) and r.reused == len(kept)


def test_lost_before_the_run_without_retries_names_the_node(tmp_path):
    qs, p = workload(20)
    with Store(tmp_path / "store.sqlite") as s, pytest.raises(DeviceLost, match="device 1: node b .*--retries") as e:
        run_replanning(p, qs, s, tmp_path / "run", Sampling(), options=QUIET, engines_for=lambda plan, d: [],
                       lost_now=lambda: {1: "node b is not alive"})
    # It names what was planned on the lost device (the models whose work is now without a place).
    a = p.arrays
    planned = sorted({p.config.names[m] for m in a.model[a.device == 1] if m >= 0})
    assert planned and e.value.model == ", ".join(planned) and e.value.device == 1
    assert f"planned there: {', '.join(planned)}" in str(e.value)
    with Store(tmp_path / "store.sqlite") as s, pytest.raises(ValueError, match="every device"):
        replan(p, qs, s, Requests(p.config, Sampling()), lost=[0, 1, 2])


def test_nothing_missing_replans_to_nothing(tmp_path):
    qs, p = workload(30, devices=2)
    r, _ = run(p, qs, tmp_path, lose_device=-1, retries=0)
    assert r.generated == len(qs) * (p.k + 1)
    with Store(tmp_path / "store.sqlite") as s:
        rp = replan(p, qs, s, Requests(p.config, Sampling()), lost=[1])
        assert rp.plan is None and rp.questions == []
        assert len(Requests(p.config, Sampling()).plan_experts(p, qs)) == len(qs) * p.k
