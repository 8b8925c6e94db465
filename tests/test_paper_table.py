"""The paper's GPQA timing table (issue 21 item 4): configs/paper16_gpqa.toml and bench/paper_table.py."""

import itertools
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import symoe
from symoe import Config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import paper_table as pt  # noqa: E402


def test_paper16_gpqa_is_the_replays_figures():
    # The bundled pool and bench/paper_table.py's replay are one set of figures: every model's load and
    # runs of 1 to 198 requests in both roles cost the same in the planner's cost model and the replay.
    cfg = Config.bundled("paper16_gpqa")
    assert cfg.names == pt.POOL
    for m, name in enumerate(pt.POOL):
        assert cfg.model(name).load_s == pytest.approx(pt.CHOSEN.load.seconds(pt.PARAMS_B[m]))
        roles = ("expert", "aggregate") if m in pt.R1 else ("expert",)
        for role in roles:
            for n in (1, 7, 63, 198):
                assert cfg.run_seconds(name, role, n) == pytest.approx(pt.run_s(pt.CHOSEN, m, role, n), rel=1e-3)


def test_paper16_gpqa_reproduces_the_papers_naive_time_and_no_set_its_batched_time():
    # 198 questions, k = 3, one GPU: the paper measured 196.92 s per question naive and 25.76 s batched.
    # With vLLM's queue above max_seqs (review 14 #1) the chosen set is within 15% of the naive time only.
    rows = pt.workload(rare=0.0)
    assert abs(pt.naive(pt.CHOSEN, rows).per_question() / pt.PAPER_NAIVE - 1) <= 0.15
    batched = pt.batched(pt.CHOSEN, rows).per_question()
    assert batched / pt.PAPER_BATCHED - 1 < -0.15
    # The planner's plan of the authors' schedule on the bundled pool is the replay's batched time.
    cfg = Config.bundled("paper16_gpqa").with_devices(1)
    a = symoe.Assignment(cfg.names, np.array(rows))
    ref = symoe.plan(a, cfg, aggregator=pt.POOL[pt.AGGREGATOR], strategy="reference", optimize_s=0)
    assert ref.makespan / len(rows) == pytest.approx(batched, rel=0.02)
    # No set within 15% of both among the ends of --grid's ranges on an A100 (README: why).
    for init, med, r1, agg, top, r1top in itertools.product((10, 30), (300, 700), (2000, 6000), (1000, 4500),
                                                            (False, True), (False, True)):
        f = pt.Figures(pt.GPUS["A100"], pt.Load(init_s=init), pt.Lengths(med, top_at_cap=top),
                       pt.Lengths(r1, cap=32768, top_at_cap=r1top), pt.Lengths(agg, cap=32768, top_at_cap=r1top))
        nv = pt.naive(f, rows).per_question() / pt.PAPER_NAIVE - 1
        bt = pt.batched(f, rows).per_question() / pt.PAPER_BATCHED - 1
        assert max(abs(nv), abs(bt)) > 0.15, (init, med, r1, agg, top, r1top, nv, bt)
    # What would reconcile both (README): cold weights at 0.25 GB/s, not the cited 0.55.
    slow = replace(pt.CHOSEN, load=pt.Load(bandwidth_gbps=0.25))
    assert abs(pt.naive(slow, rows).per_question() / pt.PAPER_NAIVE - 1) <= 0.15
    assert abs(pt.batched(slow, rows).per_question() / pt.PAPER_BATCHED - 1) <= 0.15
