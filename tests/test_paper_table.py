"""The paper's GPQA timing table (issue 21 item 4): configs/paper16_gpqa.toml and bench/paper_table.py."""

import sys
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


@pytest.mark.xfail(strict=True, reason="with vLLM's queue above max_seqs (review 14 #1; was: waves) the chosen set predicts "
                   "batched 19.29 s/q (-25%); bench/paper_table.py --grid: no set within the stated ranges is within 15% "
                   "of both (best A100: naive +20.5%, batched -21.7%). The figures and README table need a refit or a reword")
def test_paper16_gpqa_reproduces_the_papers_gpqa_table():
    # 198 questions, k = 3, one GPU: the paper measured 196.92 s per question naive and 25.76 s batched.
    rows = pt.workload(rare=0.0)
    assert abs(pt.naive(pt.CHOSEN, rows).per_question() / pt.PAPER_NAIVE - 1) <= 0.15
    assert abs(pt.batched(pt.CHOSEN, rows).per_question() / pt.PAPER_BATCHED - 1) <= 0.15
    # The planner's plan of the authors' schedule on the bundled pool predicts the batched time too.
    cfg = Config.bundled("paper16_gpqa").with_devices(1)
    a = symoe.Assignment(cfg.names, np.array(rows))
    ref = symoe.plan(a, cfg, aggregator=pt.POOL[pt.AGGREGATOR], strategy="reference", optimize_s=0)
    assert abs(ref.makespan / len(rows) / pt.PAPER_BATCHED - 1) <= 0.15
