"""The core's cost model: per-model tokens per request (issue 12, item 4) and its one formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
from symoe import _core

GB = 1e9
FIGURES = dict(weight_bytes=5 * GB, extra_bytes=1 * GB, load_s=10.0, unload_s=1.0, park_s=-1.0, wake_s=0.0,
               overhead_s=2.0, prefill_tps=1000.0, decode_tps=100.0, stream_tps=10.0)


def row(tokens=(math.nan,) * 4, **kw) -> list[float]:
    f = {**FIGURES, **kw}
    return [f[c] for c in _core.COST_COLUMNS] + list(tokens)


def args(rows, experts, aggregator=None, tokens=(100.0, 50.0, 400.0, 20.0)) -> dict:
    return dict(experts=np.asarray(experts), aggregator=None if aggregator is None else np.asarray(aggregator),
                model_costs=np.asarray(rows, dtype=float), device_memory=np.array([80 * GB]),
                device_overlap=np.array([True]), device_host=np.array([0.0]), tokens=np.asarray(tokens),
                tp_efficiency=0.5)


def run_durations(a: dict) -> list[tuple[int, int, float]]:
    p = _core.make_plan(**a, strategy="symoe", pause_s=0.0, replicate=True)
    t = _core.simulate(p, **a)
    return [(int(p["model"][s]), int(p["role"][s]), t["end"][s] - t["start"][s])
            for s in range(len(p["kind"])) if p["kind"][s] == 1]


def test_formula():
    # 3 requests of 100 prompt and 50 output tokens: 3 * (0.1 + 0.5) = 1.8 s of work, below the
    # 5 s one stream takes for 50 tokens; plus 2 s overhead. tp = 2 at efficiency 0.5: / 1.5.
    r = row((100.0, 50.0, 400.0, 20.0))
    assert _core.run_seconds(r, 0, 3) == pytest.approx(2 + 5)
    assert _core.run_seconds(r, 0, 30) == pytest.approx(2 + 18)
    assert _core.run_seconds(r, 1, 30, 2, 0.5) == pytest.approx(2 + 30 * (0.4 + 0.2) / 1.5)
    assert _core.run_seconds(r, 0, 0) == 0.0


@pytest.mark.parametrize("bad, match", [
    (dict(role=2), "role must be 0"), (dict(n=-1), "n must be >= 0"), (dict(tp=0), "tp must be >= 1"),
    (dict(tp_efficiency=1.5), "tp_efficiency"), (dict(model_cost=row()), "token counts must be finite"),
    (dict(model_cost=row()[:10]), "COST_COLUMNS"),
    (dict(model_cost=row((1, 1, 1, 1), decode_tps=0.0)), "throughputs must be positive"),
])
def test_formula_bad_arguments(bad, match):
    a = dict(model_cost=row((1.0, 1.0, 1.0, 1.0)), role=0, n=1, tp=1, tp_efficiency=0.0) | bad
    with pytest.raises(ValueError, match=match):
        _core.run_seconds(**a)


def test_per_model_tokens_drive_the_plan_and_the_simulation():
    # Model 1 writes 10x the output tokens of the config's figure: its runs take 10x the decode
    # time; model 0 (NaN: the config's figures) is unchanged, and so is a 10-column matrix.
    experts = [[0, 1]] * 40
    long = row((math.nan, 500.0, math.nan, math.nan))
    got = {(m, r): s for m, r, s in run_durations(args([row(), long], experts))}
    assert got[(0, 0)] == pytest.approx(2 + 40 * (0.1 + 0.5))
    assert got[(1, 0)] == pytest.approx(2 + 40 * (0.1 + 5.0))
    legacy = {(m, r): s for m, r, s in run_durations(args([row()[:10], row()[:10]], experts))}
    assert legacy[(1, 0)] == pytest.approx(got[(0, 0)])
    # The bound follows the per-model figures too: the long model's work alone exceeds the old plan.
    assert _core.lower_bound(**args([row(), long], experts)) > 40 * 5.0
    assert _core.lower_bound(**args([row(), row()], experts)) < 40 * 5.0


def test_aggregation_tokens_per_model():
    a = args([row(), row((math.nan, math.nan, 1000.0, 200.0))], [[0]] * 10, [1] * 10)
    got = {(m, r): s for m, r, s in run_durations(a)}
    assert got[(1, 1)] == pytest.approx(2 + 10 * (1.0 + 2.0))


def test_bad_token_columns():
    with pytest.raises(ValueError, match="model 1: token counts must be finite and >= 0"):
        _core.lower_bound(**args([row(), row((1.0, -1.0, 1.0, 1.0))], [[0]]))
    with pytest.raises(ValueError, match=r"M x 10 \(COST_COLUMNS\) or M x 14"):
        _core.lower_bound(**args([row() + [1.0]], [[0]]))
