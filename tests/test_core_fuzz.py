"""Fuzzing every entry point of the C++ core: whatever is passed, only ValueError may come out.

Arguments start from a valid call and are replaced by hostile values (any dtype from bool and
int8 to uint64 and floats, Python lists, 0-d and non-contiguous arrays, huge, negative, NaN and
infinite values) or mutated one element at a time; plans are valid plans with single fields
changed. A crash, a sanitizer report (.ci/run runs this file under ASan + UBSan) or any other
exception fails the test. Example budgets are fixed and derandomized.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import symoe
from symoe import Config, Device, ModelSpec, Tokens, _core
from symoe.config.pool import GB

FUZZ = settings(max_examples=1000, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DTYPES = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
          np.float16, np.float32, np.float64]
EDGE_INTS = [0, 1, -1, 2, 3, 7, 2**8, 2**16, 2**31 - 1, 2**31, -(2**31) - 1, 2**32, 2**40, 2**53 + 1, 2**62,
             2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, 2**100, -(2**100)]
INT64_EDGES = [v for v in EDGE_INTS if -(2**63) <= v < 2**63]
EDGE_FLOATS = [0.0, -0.0, 0.5, 1.0, -1.0, 1e-300, 1e30, -1e30, 1e308, float("nan"), float("inf"), float("-inf")]

numbers = st.one_of(st.sampled_from(EDGE_INTS), st.sampled_from(EDGE_FLOATS), st.integers(-5, 10), st.booleans(),
                    st.floats(allow_nan=True, allow_infinity=True))
scalars = st.one_of(numbers, st.none(), st.text(max_size=3), st.just([]), st.just({}), st.just(()),
                    st.builds(lambda d, v: np.array(v).astype(d)[()], st.sampled_from(DTYPES), st.integers(-3, 3)))
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
plain_arrays = st.one_of(hnp.arrays(st.sampled_from(DTYPES), shapes),
                         st.sampled_from([np.empty((2**40, 0), np.int64), np.empty((0, 2**40)), np.empty((1, 2**40, 0))]))


@st.composite
def views(draw, a):
    """The same values as another dtype, layout or container."""
    a = np.asarray(a)
    if a.dtype == object:  # values beyond every fixed-width dtype
        return draw(st.sampled_from([a, a.tolist()]))
    how = draw(st.sampled_from(["same", "list", "dtype", "strided", "fortran", "swapped", "readonly", "0-d"]))
    if how == "list":
        return a.tolist()
    if how == "dtype":
        with np.errstate(all="ignore"):
            return a.astype(draw(st.sampled_from(DTYPES)))
    if how == "strided" and a.ndim:
        return np.repeat(a, 2, axis=-1)[..., ::2]
    if how == "fortran":
        return np.asfortranarray(a)
    if how == "swapped":
        return a.astype(a.dtype.newbyteorder())
    if how == "readonly":
        b = a.copy()
        b.flags.writeable = False
        return b
    if how == "0-d":
        return np.asarray(a.ravel()[0] if a.size else 0)
    return a


@st.composite
def mutated(draw, a):
    """One element replaced by a hostile number (the array widens or becomes a list as needed)."""
    a = np.asarray(a)
    if a.size == 0:
        return draw(views(a))
    flat = a.ravel().tolist()
    flat[draw(st.integers(0, len(flat) - 1))] = draw(st.one_of(numbers, st.integers(-3, 8)))
    out = np.array(flat, dtype=object).reshape(a.shape).tolist()
    return out if draw(st.booleans()) else draw(views(np.asarray(out)))


def hostile(draw, valid):
    """A replacement for one valid argument."""
    return draw(st.one_of(mutated(valid), views(valid), plain_arrays, scalars) if isinstance(valid, np.ndarray)
                else st.one_of(scalars, plain_arrays))


def call(fn, *args, **kwargs):
    """Only ValueError may come out; anything else (or a crash) fails the test."""
    try:
        return fn(*args, **kwargs)
    except ValueError:
        return None


# ---- route and uniform ----------------------------------------------------------------------

ROUTE_ARGS = dict(profiles=np.array([[3, -1, 0, 2], [-2, 4, 1, 0], [0, 0, 5, -1]]),
                  indptr=np.array([0, 2, 2, 5, 6]), indices=np.array([0, 1, 3, 2, 2, 1]),
                  k=3, replace=True, temperature=0.5, weighting="reference", softmax_temperature=0.5,
                  rare_threshold=0.05, seed=7, question_offset=0, threads=2, return_probabilities=True)


def test_valid_calls_succeed():
    r = _core.route(**ROUTE_ARGS)
    assert r["experts"].shape == (4, 3)
    p = PLANS[0]
    assert _core.simulate({"devices": len(p.config.devices), **p.arrays.as_dict()}, **plan_args(p))["makespan"] > 0
    assert 0 <= _core.uniform(1, 2, 0, 3) < 1


@FUZZ
@given(names=st.lists(st.sampled_from(sorted(ROUTE_ARGS)), min_size=1, max_size=3, unique=True), data=st.data())
def test_route_fuzz(names, data):
    args = dict(ROUTE_ARGS)
    for n in names:
        args[n] = hostile(data.draw, args[n])
    r = call(_core.route, **args)
    if r is not None:
        M = len(r["gamma"])
        assert r["experts"].ndim == 2 and ((r["experts"] >= 0) & (r["experts"] < M)).all()


@FUZZ
@given(data=st.data())
def test_route_fuzz_shapes_and_values(data):
    # Structurally plausible inputs: random CSR over random profiles, extreme scores and k.
    M, V, N = data.draw(st.sampled_from([1, 2, 3, 5, 0])), data.draw(st.integers(0, 5)), data.draw(st.integers(0, 6))
    prof = data.draw(hnp.arrays(np.int64, (M, V), elements=st.one_of(st.integers(-6, 6), st.sampled_from(INT64_EDGES))))
    lens = data.draw(st.lists(st.integers(0, 3), min_size=N, max_size=N))
    indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    kw = st.integers(0, V - 1) if V and data.draw(st.integers(0, 4)) else st.integers(-1, V)  # mostly in range
    indices = np.array(data.draw(st.lists(kw, min_size=int(indptr[-1]), max_size=int(indptr[-1]))), dtype=np.int64)
    args = dict(ROUTE_ARGS, profiles=prof, indptr=indptr, indices=indices,
                k=data.draw(st.one_of(st.integers(0, 6), st.sampled_from([65536, 65537, 2**31, 2**62]))),
                replace=data.draw(st.booleans()), weighting=data.draw(st.sampled_from(["reference", "softmax"])),
                temperature=data.draw(st.sampled_from([0.5, 1e-3, 3.0, 1e300])),
                rare_threshold=data.draw(st.sampled_from([0.0, 0.3, -1.0, 1.0])),
                seed=data.draw(st.integers(0, 2**64 - 1)), question_offset=data.draw(st.integers(0, 2**64 - 1)),
                threads=data.draw(st.sampled_from([0, 1, 3, 2**31 - 1])))
    call(_core.route, **args)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(args=st.lists(st.one_of(scalars, plain_arrays), min_size=4, max_size=4))
def test_uniform_fuzz(args):
    u = call(_core.uniform, *args)
    assert u is None or 0 <= u < 1


# ---- make_plan, lower_bound, simulate ---------------------------------------------------------

def _config(devices, sleep):
    models = tuple(ModelSpec(name=f"m{i}", weight_bytes=s * GB, extra_bytes=1 * GB, load_s=5 + s, unload_s=0.5,
                             park_s=0.2 if sleep else -1.0, wake_s=0.2 if sleep else 0.0, overhead_s=0.5,
                             prefill_tps=20000, decode_tps=1000, stream_tps=50)
                   for i, s in enumerate([5, 6, 7]))
    return Config(models, tuple(Device(20 * GB, d % 2 == 0, 40 * GB if sleep else 0.0) for d in range(devices)),
                  Tokens(100, 200, 500, 200))


def _plans():
    experts = np.array([[0, 1, 2], [2, 2, 0], [1, 0, 0], [2, 1, 1]])
    out = []
    for strategy, devices, sleep, agg in [("reference", 2, False, "m1"), ("symoe", 3, False, ["m0", None, "m2", "m0"]),
                                          ("naive", 2, True, "m2"), ("symoe", 1, True, None)]:
        cfg = _config(devices, sleep)
        out.append(symoe.plan(symoe.Assignment(cfg.names, experts), cfg, aggregator=agg, strategy=strategy))
    return out


PLANS = _plans()
PLAN_FIELDS = ("devices", "kind", "role", "device", "model", "tp", "item_begin", "item_end", "seconds", "items")


def plan_args(p):
    return dict(experts=p.experts, aggregator=p.aggregator, **p.config.core_args())


@FUZZ
@given(which=st.integers(0, len(PLANS) - 1), fn=st.sampled_from(["make_plan", "lower_bound", "simulate"]),
       names=st.lists(st.sampled_from(["experts", "aggregator", "model_costs", "device_memory", "device_overlap",
                                       "device_host", "tokens", "tp_efficiency", "strategy", "pause_s", "replicate"]),
                      min_size=1, max_size=2, unique=True),
       data=st.data())
def test_planning_inputs_fuzz(which, fn, names, data):
    p = PLANS[which]
    args = plan_args(p)
    if fn == "make_plan":
        args.update(strategy=p.strategy, pause_s=10.0, replicate=True)
    for n in names:
        if n in args:
            args[n] = hostile(data.draw, args[n]) if args[n] is not None else data.draw(st.one_of(scalars, plain_arrays))
    if fn == "simulate":
        r = call(_core.simulate, {"devices": len(p.config.devices), **p.arrays.as_dict()}, **args)
    else:
        r = call(getattr(_core, fn), **args)
    if fn == "make_plan" and r is not None:  # whatever the planner makes must simulate
        call(_core.simulate, r, **{k: v for k, v in args.items() if k not in ("strategy", "pause_s", "replicate")})


@FUZZ
@given(which=st.integers(0, len(PLANS) - 1), field=st.sampled_from(PLAN_FIELDS), data=st.data())
def test_simulate_mutated_plans_fuzz(which, field, data):
    p = PLANS[which]
    plan = {"devices": len(p.config.devices), **{k: v.copy() for k, v in p.arrays.as_dict().items()}}
    how = data.draw(st.sampled_from(["one", "one", "one", "hostile", "drop"]))
    if how == "drop":
        del plan[field]
    elif how == "hostile" or field == "devices":
        plan[field] = hostile(data.draw, plan[field] if field != "devices" else np.asarray(plan[field]))
    else:  # one element to a small plausible value or an extreme one, in the field's dtype if it fits
        a = plan[field]
        if a.size:
            i = data.draw(st.integers(0, a.size - 1))
            v = data.draw(st.one_of(st.integers(-2, 8), st.sampled_from(EDGE_INTS), st.sampled_from(EDGE_FLOATS)))
            b = a.astype(np.float64 if field == "seconds" else object)
            b[i] = v
            plan[field] = b if field == "seconds" else data.draw(views(np.asarray(b.tolist())))
    r = call(_core.simulate, plan, **plan_args(p))
    if r is not None:
        assert len(r["start"]) == len(r["end"]) and np.isfinite(r["makespan"])


@pytest.mark.parametrize("which", range(len(PLANS)))
def test_every_single_field_change_of_a_plan(which):
    # Exhaustive over steps for the values most likely to index out of bounds.
    p = PLANS[which]
    D = len(p.config.devices)
    for field in ("kind", "role", "device", "model", "tp", "item_begin", "item_end"):
        for s in range(p.n_steps):
            for v in (-1, 0, D, D + 1, len(p.arrays.items) + 1, 2**31 - 1):
                arrays = {k: a.astype(np.int64) if a.dtype.kind != "f" else a for k, a in p.arrays.as_dict().items()}
                arrays[field][s] = v
                call(_core.simulate, {"devices": D, **arrays}, **plan_args(p))


# ---- run_seconds --------------------------------------------------------------------------------

RUN_SECONDS_ARGS = dict(model_cost=PLANS[0].config._cost_row(0), role=1, n=5, tp=2, tp_efficiency=0.5)


@FUZZ
@given(names=st.lists(st.sampled_from(sorted(RUN_SECONDS_ARGS)), min_size=1, max_size=2, unique=True), data=st.data())
def test_run_seconds_fuzz(names, data):
    args = dict(RUN_SECONDS_ARGS)
    for n in names:
        args[n] = hostile(data.draw, args[n])
    r = call(_core.run_seconds, **args)
    assert r is None or (np.isfinite(r) and r >= 0), (args, r)


def test_run_seconds_that_overflow_are_refused():
    # Finite figures, a huge n: the prediction was inf; the fuzz above rarely draws both at once.
    row = RUN_SECONDS_ARGS["model_cost"].copy()
    row[list(_core.COST_COLUMNS).index("prefill_tps")] = 1e-300
    with pytest.raises(ValueError, match="predicted seconds of 4611686018427387904 requests overflow"):
        _core.run_seconds(**dict(RUN_SECONDS_ARGS, model_cost=row, n=2**62))


@pytest.mark.parametrize("value", [7, 2, -1, 255])
def test_flag_arrays_take_only_booleans_or_zero_and_one(value):
    # A cast would read any non-zero integer as true: an overlap of 7 is a typo, not a yes.
    p = PLANS[0]
    args = plan_args(p)
    overlap = np.array([1, value] if value != 255 else [value, 0], dtype=np.int64 if value != 255 else np.uint8)
    args["device_overlap"] = overlap
    with pytest.raises(ValueError, match=f"device_overlap must hold booleans \\(or 0/1\\), got {value} at flat index "):
        _core.lower_bound(**args)
    args["device_overlap"] = np.array([1, 0])  # 0/1 integers still read as booleans
    assert _core.lower_bound(**args) == _core.lower_bound(**plan_args(p))
