"""The measured cost model (issue 21): a run's decode time is its requests' drain over a decode-rate
curve, checked against a plain reference that steps the batch token by token."""

from __future__ import annotations

import math
import tomllib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symoe import _core
from symoe.config.pool import Config
from symoe.method.routing import Assignment
from symoe.planning.plan import simulate
from symoe.planning.planner import plan

NAN = math.nan
CURVE, Q = 8, 16


def row(curve: list[float] = (), expert_q: list[float] = (), aggregate_q: list[float] = (), max_seqs: float = NAN,
        overhead: float = 0.5, prefill: float = 1000.0, prompt: float = 100.0, mean_out: float = 50.0) -> np.ndarray:
    """One model's row with the DRAIN_COLUMNS (NaN-padded lists)."""
    base = [1e9, 0.0, 5.0, 1.0, -1.0, 0.0, overhead, prefill, 60.0, 20.0, prompt, mean_out, prompt, mean_out]
    pad = lambda v, n: [float(x) for x in v] + [NAN] * (n - len(v))  # noqa: E731
    return np.array(base + [max_seqs] + pad(curve, CURVE) + pad(expert_q, Q) + pad(aggregate_q, Q))


def reference(curve: list[float], lengths: list[int], n: float, prompt: float, prefill: float, overhead: float,
              speed: float = 1.0) -> float:
    """n requests (an equal share per length) start together; each token step takes alive / rate(alive)."""
    xs = [2.0**i for i in range(len(curve))]
    rate = lambda b: float(np.interp(b, xs, curve))  # noqa: E731  (flat beyond both ends)
    t, w = 0.0, n / len(lengths)
    for tok in range(1, max(lengths) + 1):
        alive = w * sum(L >= tok for L in lengths)
        t += alive / rate(alive) if alive > 0 else 0.0
    return overhead + (n * prompt / prefill + t) / speed


@st.composite
def curves(draw: st.DrawFn) -> list[float]:
    first = draw(st.floats(1.0, 200.0))
    out = [first]
    for _ in range(draw(st.integers(0, CURVE - 1))):
        out.append(out[-1] * draw(st.floats(1.0, 2.0)))  # nondecreasing, at most doubling
    return out


lengths_st = st.lists(st.integers(0, 300), min_size=1, max_size=Q).map(sorted)


@settings(max_examples=150, deadline=None)
@given(curves(), lengths_st, st.integers(1, 300), st.integers(1, 4), st.booleans())
def test_drain_matches_token_by_token_reference(curve, lengths, n, tp, aggregate):
    r = row(curve, [] if aggregate else lengths, lengths if aggregate else [], prompt=120.0)
    got = _core.run_seconds(r, int(aggregate), n, tp, 0.5)
    want = reference(curve, lengths, n, 120.0, 1000.0, 0.5, 1 + (tp - 1) * 0.5)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(curves(), lengths_st, st.integers(1, 64), st.integers(1, 64), st.sampled_from([NAN, 4.0, 16.0]))
def test_run_time_monotone_and_subadditive(curve, lengths, a, b, cap):
    """More requests never take less time, and two runs never beat one of both (the lower bound's premises)."""
    r = row(curve, lengths, max_seqs=cap)
    t = lambda n: _core.run_seconds(r, 0, n)  # noqa: E731
    assert t(a + b) >= max(t(a), t(b)) - 1e-9
    assert t(a) + t(b) >= t(a + b) - 1e-9


def queue_reference(curve: list[float], lengths: list[int], n: int, cap: int) -> float:
    """n requests (lengths cycled) through an engine that keeps cap in flight and admits the next
    queued request as one finishes; each token step takes alive / rate(alive)."""
    xs = [2.0**i for i in range(len(curve))]
    rate = lambda b: float(np.interp(b, xs, curve))  # noqa: E731
    queue = [lengths[i % len(lengths)] for i in range(n)][::-1]
    alive: list[int] = []
    t = 0.0
    while queue or alive:
        while len(alive) < cap and queue:
            alive += [L for L in [queue.pop()] if L > 0]
        if alive:
            t += len(alive) / rate(len(alive))
            alive = [L - 1 for L in alive if L > 1]
    return t


@settings(max_examples=100, deadline=None)
@given(curves(), st.lists(st.integers(1, 300), min_size=1, max_size=Q).map(sorted), st.sampled_from([1, 2, 4, 8, 16]),
       st.integers(1, 12))
def test_queue_beyond_max_seqs_matches_token_by_token_queue(curve, lengths, cap, times):
    """Above max_seqs the engine keeps max_seqs in flight (a queue, not waves). The formula drains the
    last max_seqs as a fresh batch; the real last ones are partly done: they differ by at most the
    tail, max length x step(max_seqs) either way, however many requests queue (waves grow with n)."""
    n = len(lengths) * times  # every length equally often, as the quantiles say (none empty: each holds a slot)
    r = row(curve, lengths, max_seqs=float(cap), overhead=0.0, prompt=0.0)
    rate = float(np.interp(cap, [2.0**i for i in range(len(curve))], curve))
    tail = max(lengths) * min(n, cap) / rate
    assert abs(_core.run_seconds(r, 0, n) - queue_reference(curve, lengths, n, cap)) <= tail + 1e-9


def test_queue_not_waves():
    """Short answers free their slots for queued ones: 12 requests at 4 in flight take far less than
    3 drains of 4 (waves), as the token-by-token queue shows."""
    curve, lengths = [10, 20, 40], [10, 20, 30, 300]
    r = row(curve, lengths, max_seqs=4.0, overhead=0.0, prompt=0.0)
    assert _core.run_seconds(r, 0, 4) == pytest.approx(reference(curve, lengths, 4, 0.0, 1.0, 0.0))
    want = queue_reference(curve, lengths, 48, 4)
    assert _core.run_seconds(r, 0, 48) == pytest.approx(want, rel=0.1)
    assert _core.run_seconds(r, 0, 48) < 0.8 * 12 * _core.run_seconds(r, 0, 4)


def test_tail_set_by_longest_answers():
    """Same mean length, a longer tail: the drain form is slower, the scalar formula cannot tell them apart."""
    even, tail = [50] * 16, [25] * 15 + [425]
    assert np.mean(even) == np.mean(tail)
    t_even, t_tail = (_core.run_seconds(row([20, 40, 80, 160], q), 0, 16) for q in (even, tail))
    assert t_tail > 2 * t_even


def test_no_curve_rate_from_stream_and_decode():
    """Quantiles without a curve: rate(b) = min(b * stream_tps, decode_tps)."""
    r = row([], [30] * 4, overhead=0.0, prompt=0.0)  # stream 20, decode 60
    assert _core.run_seconds(r, 0, 1) == pytest.approx(30 / 20)
    assert _core.run_seconds(r, 0, 8) == pytest.approx(30 * 8 / 60)


def test_scalar_rows_unchanged():
    """Without curve or quantiles (all NaN) the old formula holds, as in a 14-column row."""
    r = row()
    for n in (1, 3, 40):
        assert _core.run_seconds(r, 0, n) == _core.run_seconds(r[:14], 0, n)


@pytest.mark.parametrize("curve, lengths, match", [
    ([10, 25], [], "must lie in"),            # more than twice as fast with twice the sequences
    ([10, 8], [], "must lie in"),             # slower with more sequences
    ([10], [5, 3], "ascending"),
    ([10, NAN, 12], [], "NaN padding"),
])
def test_bad_drain_figures(curve, lengths, match):
    with pytest.raises(ValueError, match=match):
        _core.run_seconds(row(curve, lengths), 0, 4)


TOML = """
[engine]
platform = "cpu"
[devices]
count = 2
memory_gb = 8.0
overlap_load = false
[defaults]
start_s = 3.0
load_bandwidth_gbps = 0.5
init_s = 2.0
decode_curve = [20.0, 38.0, 70.0, 120.0]
max_seqs = 8
[[model]]
name = "a"
weight_gb = 1.0
expert_output_quantiles = [10, 20, 30, 40, 60, 80, 120, 256]
aggregate_output_quantiles = [40, 80]
[[model]]
name = "b"
weight_gb = 0.5
"""


def test_pool_file_measured_form():
    cfg = Config.from_dict(tomllib.loads(TOML))
    assert cfg.load_seconds("a") == pytest.approx(3.0 + 1.0 / 0.5 + 2.0)
    assert not cfg.linear_costs
    a = cfg.model("a")
    want = reference([20, 38, 70, 120], [10, 20, 30, 40, 60, 80, 120, 256], 6, 300.0, a.prefill_tps, a.overhead_s)
    assert cfg.run_seconds("a", "expert", 6) == pytest.approx(want)
    # A run at 48 new tokens: every length capped (seeded sampling: the first 48 tokens are the same).
    capped = cfg.with_max_tokens(48)
    want48 = reference([20, 38, 70, 120], [10, 20, 30, 40, 48, 48, 48, 48], 6, 300.0, a.prefill_tps, a.overhead_s)
    assert capped.run_seconds("a", "expert", 6) == pytest.approx(want48)
    assert capped.model_tokens("b").expert_output == 48
    assert cfg.run_seconds("a", "keywords", 6, max_tokens=48) == pytest.approx(want48)  # one run's own cap
    again = Config.from_dict(tomllib.loads(cfg.to_toml()))
    assert again.run_seconds("a", "aggregate", 5) == pytest.approx(cfg.run_seconds("a", "aggregate", 5))


def test_plans_on_measured_form_are_bounded():
    """The planner plans with the drain form; its lower bound stays below the simulated makespan."""
    cfg = Config.from_dict(tomllib.loads(TOML))
    rng = np.random.default_rng(0)
    for _ in range(5):
        N = int(rng.integers(3, 30))
        experts = rng.integers(0, 2, size=(N, 2))
        p = plan(Assignment(("a", "b"), experts), cfg, aggregator="a")
        assert p.lower_bound <= simulate(p).makespan + 1e-9


def test_max_seqs_alone_switches_the_drain_form_on():
    """max_seqs without curve or quantiles: the drain over rate(b) = min(b * stream, decode) with the
    mean length, queued above max_seqs; the polish's linear form no longer describes it."""
    r = row([], [], max_seqs=2.0, overhead=0.0, prompt=0.0)  # stream 20, decode 60, mean 50
    assert _core.run_seconds(r, 0, 2) == pytest.approx(50 * 2 / 40)
    assert _core.run_seconds(r, 0, 6) == pytest.approx(4 * 50 / 40 + 50 * 2 / 40)
    cfg = Config.from_dict(tomllib.loads(TOML.replace('decode_curve = [20.0, 38.0, 70.0, 120.0]\n', '')
                                        .replace('expert_output_quantiles = [10, 20, 30, 40, 60, 80, 120, 256]\n', '')
                                        .replace('aggregate_output_quantiles = [40, 80]\n', '')))
    assert not cfg.linear_costs


@pytest.mark.parametrize("line, match", [
    ("decode_curve = [10.0, 25.0]", r"pool.toml \[\[model\]\] #1 \(a\) decode_curve: point 1 \(25.0 tokens/s"),
    ("decode_curve = [10.0, 8.0]", r"#1 \(a\) decode_curve: point 1"),
    ("aggregate_output_quantiles = [40, 20]", r"pool.toml \[\[model\]\] #1.*aggregate_output_quantiles.*ascending"),
])
def test_bad_measured_figures_refused_at_load(tmp_path, line, match):
    """A bad curve or quantiles is refused when the pool loads, naming file, [[model]] and field (review 14 #3)."""
    text = TOML.replace('aggregate_output_quantiles = [40, 80]', line)
    (tmp_path / "pool.toml").write_text(text)
    with pytest.raises(ValueError, match=match):
        Config.from_toml(tmp_path / "pool.toml")
