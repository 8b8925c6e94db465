import json
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference_routing as ref
import symoe
from symoe import _core


def random_case(rng, M, V, N, max_kw=5, lo=-6, hi=6):
    prof = rng.integers(lo, hi + 1, size=(M, V))
    qs = [list(rng.integers(0, V, size=rng.integers(0, max_kw + 1))) if V else [] for _ in range(N)]
    return prof, qs


def core_route(prof, qs, **kw):
    p = symoe.Profiles([f"m{i}" for i in range(prof.shape[0])], [f"k{j}" for j in range(prof.shape[1])], prof)
    indptr = np.cumsum([0] + [len(q) for q in qs]).astype(np.int64)
    indices = np.array([v for q in qs for v in q], dtype=np.int64)
    return symoe.route(p, (indptr, indices), **kw)


def test_uniform_matches_reference_stream():
    for args in [(0, 0, 0, 0), (1, 2, 0, 1), (2**64 - 1, 123456789, 1, 2), (42, 2**40, 0, 7)]:
        assert _core.uniform(*args) == ref.uniform(*args)


def test_worked_example():
    # c = (2, 2, 1): no shift; gamma = (4, 4, 1)/9. q: S = (3, -2, 1) -> w = (12/9, 0, 1/9).
    p = symoe.Profiles.from_dict({"a": {"x": 3, "y": -1}, "b": {"x": -2, "y": 4}, "c": {"z": 1}})
    a = symoe.route(p, [["z", "x"], []], return_probabilities=True, rare_threshold=0)
    assert a.probabilities[0] == pytest.approx([12 / 13, 0, 1 / 13])
    assert a.probabilities[1] == pytest.approx([1 / 3] * 3)


def test_all_negative_scores_use_shift_fallback():
    # S = (-5, -1): no positive candidate -> w = (S - min + 1) * gamma = (1, 5) * gamma.
    prof = np.array([[-5, 0], [-1, 0]])
    g = ref.gamma(prof.tolist())
    a = core_route(prof, [[0]], return_probabilities=True, rare_threshold=0)
    w = np.array([1 * g[0], 5 * g[1]])
    assert a.probabilities[0] == pytest.approx(w / w.sum())


@pytest.mark.parametrize("replace", [True, False])
@pytest.mark.parametrize("seed", [0, 7, 2**63 + 5])
def test_exact_agreement_with_reference(replace, seed):
    rng = np.random.default_rng(seed % 1000)
    prof, qs = random_case(rng, M=7, V=30, N=400)
    rows, probs = ref.route(prof.tolist(), qs, k=3, seed=seed, replace=replace, rare_threshold=0.05)
    a = core_route(prof, qs, k=3, seed=seed, replace=replace, return_probabilities=True)
    assert np.array_equal(a.probabilities, np.array(probs))  # bit-identical, not approximately
    assert a.experts.tolist() == rows


def test_softmax_variant_matches_reference():
    rng = np.random.default_rng(3)
    prof, qs = random_case(rng, M=5, V=12, N=100)
    _, probs = ref.route(prof.tolist(), qs, rare_threshold=0, softmax_t=0.5)
    a = core_route(prof, qs, weighting="softmax", softmax_temperature=0.5, rare_threshold=0, return_probabilities=True)
    np.testing.assert_allclose(a.probabilities, np.array(probs), rtol=1e-12, atol=1e-15)


def test_sampled_frequencies_match_probabilities():
    # One question repeated 200k times: each slot's empirical frequency within 5 sigma of p.
    prof = np.array([[5, 1, -2], [2, 3, 0], [1, -4, 6], [0, 0, 1]])
    n = 200_000
    qs_indptr = np.arange(0, 2 * n + 1, 2, dtype=np.int64)
    qs_idx = np.tile(np.array([0, 2], dtype=np.int64), n)
    p = symoe.Profiles(["a", "b", "c", "d"], ["x", "y", "z"], prof)
    a = symoe.route(p, (qs_indptr, qs_idx), k=3, rare_threshold=0, return_probabilities=True, seed=11)
    probs = a.probabilities[0]
    for j in range(3):
        freq = np.bincount(a.experts[:, j], minlength=4) / n
        sigma = np.sqrt(probs * (1 - probs) / n)
        assert np.all(np.abs(freq - probs) <= 5 * sigma + 1e-12), (j, freq, probs)
    assert probs[3] > 0 and probs[1] > 0


def test_rare_filter_removes_rare_models_and_keeps_frequent_ones():
    # Model 3 is strong only on a keyword few questions use.
    prof = np.array([[4, 2, 0], [3, 4, 0], [2, 3, 0], [-9, -9, 20]])
    qs = [[0, 1]] * 980 + [[2]] * 20
    off = core_route(prof, qs, rare_threshold=0, seed=1)
    on = core_route(prof, qs, rare_threshold=0.05, seed=1)
    before = off.counts()
    assert 0 < before["m3"] / 3000 < 0.05
    assert on.counts()["m3"] == 0
    assert on.replaced == before["m3"]
    assert on.kept == (True, True, True, False)
    # Unaffected slots are untouched.
    same = off.experts != 3
    assert np.array_equal(on.experts[same], off.experts[same])
    rows, _ = ref.route(prof.tolist(), qs, seed=1, rare_threshold=0.05)
    assert on.experts.tolist() == rows


def test_threshold_zero_disables_filter():
    prof = np.array([[4, 2, 0], [3, 4, 0], [-9, -9, 20]])
    qs = [[0, 1]] * 99 + [[2]]
    assert core_route(prof, qs, rare_threshold=0).counts()["m2"] == 3


@pytest.mark.parametrize("replace", [True, False])
def test_determinism_threads_and_batches(replace):
    rng = np.random.default_rng(9)
    prof, qs = random_case(rng, M=16, V=200, N=30_000, max_kw=4)
    base = core_route(prof, qs, threads=1, seed=123, replace=replace, rare_threshold=0)
    for t in (2, 3, 8):
        assert np.array_equal(core_route(prof, qs, threads=t, seed=123, replace=replace, rare_threshold=0).experts, base.experts)
    # Batches routed separately with their global offset give the same rows.
    parts = [core_route(prof, qs[b:e], threads=2, seed=123, replace=replace, rare_threshold=0, question_offset=b).experts
             for b, e in [(0, 7), (7, 10_000), (10_000, 30_000)]]
    assert np.array_equal(np.vstack(parts), base.experts)
    # With the filter the result is still thread-count independent.
    f1 = core_route(prof, qs, threads=1, seed=5, replace=replace)
    f4 = core_route(prof, qs, threads=4, seed=5, replace=replace)
    assert np.array_equal(f1.experts, f4.experts)


def test_different_seeds_differ():
    rng = np.random.default_rng(1)
    prof, qs = random_case(rng, M=8, V=20, N=500)
    assert not np.array_equal(core_route(prof, qs, seed=1).experts, core_route(prof, qs, seed=2).experts)


@settings(max_examples=150, deadline=None)
@given(
    M=st.integers(1, 6), V=st.integers(0, 6), N=st.integers(0, 25), k=st.integers(1, 7),
    replace=st.booleans(), seed=st.integers(0, 2**64 - 1), threshold=st.sampled_from([0.0, 0.05, 0.3]),
    data=st.data(),
)
def test_property_against_reference(M, V, N, k, replace, seed, threshold, data):
    prof = np.array(data.draw(st.lists(st.lists(st.integers(-5, 5), min_size=V, max_size=V), min_size=M, max_size=M)),
                    dtype=np.int64).reshape(M, V)
    qs = [data.draw(st.lists(st.integers(0, V - 1), max_size=4)) if V else [] for _ in range(N)]
    if not replace and k > M:
        with pytest.raises(ValueError, match="exceeds the pool size"):
            core_route(prof, qs, k=k, replace=False)
        return
    a = core_route(prof, qs, k=k, seed=seed, replace=replace, rare_threshold=threshold, return_probabilities=True)
    assert a.experts.shape == (N, k)
    if N:
        assert np.allclose(a.probabilities.sum(axis=1), 1.0)
        assert (a.probabilities >= 0).all()
    if N and k:
        assert a.experts.min() >= 0 and a.experts.max() < M
    if not replace:
        for row in a.experts:
            assert len(set(row.tolist())) == k
    rows, probs = ref.route(prof.tolist(), qs, k=k, seed=seed, replace=replace, rare_threshold=threshold)
    assert a.experts.tolist() == rows
    if N:
        assert np.array_equal(a.probabilities, np.array(probs))


def test_without_replacement_fills_beyond_positive_candidates():
    # Only model 0 has positive S; k=3 without replacement fills the rest uniformly.
    prof = np.array([[5], [-1], [-2], [-3]])
    a = core_route(prof, [[0]] * 50, k=3, replace=False, rare_threshold=0)
    assert (a.experts[:, 0] == 0).all()
    assert all(len(set(r)) == 3 for r in a.experts.tolist())


# ---- bad input ----------------------------------------------------------------------------

def test_nan_and_inf_profiles_rejected():
    with pytest.raises(ValueError, match="'m'.*'x'.*NaN"):
        symoe.Profiles.from_dict({"m": {"x": float("nan")}})
    with pytest.raises(ValueError, match="non-finite"):
        symoe.Profiles.from_dict({"m": {"x": float("inf")}})
    with pytest.raises(ValueError, match="NaN or infinite"):
        symoe.Profiles(("a",), ("x",), np.array([[np.inf]]))
    with pytest.raises(ValueError, match="integers"):
        symoe.Profiles(("a",), ("x",), np.array([[0.5]]))
    with pytest.raises(ValueError, match="non-numeric"):
        symoe.Profiles.from_dict({"m": {"x": "3"}})


def test_shape_and_range_errors():
    p = symoe.Profiles(("a", "b"), ("x", "y"), np.array([[1, 2], [3, 4]]))
    with pytest.raises(ValueError, match="shape"):
        symoe.Profiles(("a",), ("x", "y"), np.array([[1, 2], [3, 4]]))
    with pytest.raises(ValueError, match="keyword id 5 out of range"):
        symoe.route(p, (np.array([0, 1]), np.array([5])))
    with pytest.raises(ValueError, match="keyword id -1"):
        symoe.route(p, (np.array([0, 1]), np.array([-1])))
    with pytest.raises(ValueError, match=r"indptr\[-1\]"):
        symoe.route(p, (np.array([0, 3]), np.array([0])))
    with pytest.raises(ValueError, match="non-decreasing"):
        symoe.route(p, (np.array([0, 2, 1, 2]), np.array([0, 1])))
    with pytest.raises(ValueError, match="k must be"):
        symoe.route(p, [["x"]], k=-1)
    with pytest.raises(ValueError, match="exceeds the pool size"):
        symoe.route(p, [["x"]], k=3, replace=False)
    with pytest.raises(ValueError, match="'zzz' is not in the profile vocabulary"):
        symoe.route(p, [["x", "zzz"]])
    assert symoe.route(p, [["x", "zzz"]], on_unknown="drop").experts.shape == (1, 3)
    with pytest.raises(ValueError, match="temperature"):
        symoe.route(p, [["x"]], temperature=float("nan"))
    with pytest.raises(ValueError, match="temperature"):
        symoe.route(p, [["x"]], temperature=0.0)
    with pytest.raises(ValueError, match="weighting"):
        symoe.route(p, [["x"]], weighting="bogus")
    with pytest.raises(ValueError, match="integer array"):
        symoe.route(p, (np.array([0.0, 1.0]), np.array([0])))
    with pytest.raises(ValueError, match="unique"):
        symoe.Profiles(("a", "a"), ("x",), np.array([[1], [2]]))


def test_malformed_json_and_unknown_models(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        symoe.Profiles.from_json(bad)
    with pytest.raises(ValueError, match="cannot read"):
        symoe.Profiles.from_json(tmp_path / "missing.json")
    bad.write_text(json.dumps({"m": [1, 2]}))
    with pytest.raises(ValueError, match="must be a mapping"):
        symoe.Profiles.from_json(bad)
    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps({"symoe": "assignment", "models": ["a"], "k": 1}) + "\n"
                 + json.dumps({"id": "q", "experts": ["b"]}) + "\n")
    with pytest.raises(ValueError, match="unknown model 'b'"):
        symoe.Assignment.load(a)


def test_assignment_roundtrip(tmp_path):
    p = symoe.Profiles.from_dict({"a": {"x": 3}, "b": {"y": 2}})
    a = symoe.route(p, [["x"], ["y"], ["x", "y"]], seed=4, question_ids=["q1", "q2", "q3"], rare_threshold=0)
    a.save(tmp_path / "a.jsonl")
    b = symoe.Assignment.load(tmp_path / "a.jsonl")
    assert b.models == a.models and b.question_ids == ("q1", "q2", "q3") and np.array_equal(a.experts, b.experts)
    assert b.names(0) == ["a", "a", "a"]


def test_profiles_json_roundtrip(tmp_path):
    p = symoe.Profiles.from_dict({"a": {"x": 3, "y": -1}, "b": {"y": 2}}, accuracy={"a": 0.5, "b": 0.25})
    p.save(tmp_path / "p.json")
    q = symoe.Profiles.from_json(tmp_path / "p.json")
    assert q.to_dict() == p.to_dict() and q.accuracy == {"a": 0.5, "b": 0.25}


# ---- memory safety and clear errors at the binding (issue 10) -----------------------------

@pytest.mark.parametrize("kw, match", [
    (dict(k=2**62), r"^k must be an integer in \[1, 65536\], got 4611686018427387904$"),  # was SIGSEGV (N x k overflow)
    (dict(k=2**31), r"^k must be an integer in \[1, 65536\], got 2147483648$"),  # was MemoryError
    (dict(k=2**40), r"^k must be an integer in \[1, 65536\], got 1099511627776$"),
    (dict(question_offset=2**64), r"^question_offset must be an integer in \[0, 18446744073709551615\], "
                                  r"got 18446744073709551616$"),  # was TypeError
    (dict(threads=-1), r"^threads must be >= 0 .*got -1$"),
    (dict(threads=2**31), r"^threads must be an integer in .*got 2147483648$"),
    (dict(seed=2**64), r"seed must be an integer in \[0, 2\*\*64\), got 18446744073709551616"),
])
def test_out_of_range_scalars_name_argument_and_value(kw, match):
    p = symoe.Profiles(("a", "b"), ("x",), np.array([[1], [2]]))
    with pytest.raises(ValueError, match=match):
        symoe.route(p, [["x"]] * 3, **kw)


def test_core_route_arguments_converted_or_value_error():
    prof, indptr, idx = np.array([[1], [2]]), np.array([0, 1]), np.array([0])
    args = dict(profiles=prof, indptr=indptr, indices=idx, k=2, replace=True, temperature=0.5, weighting="reference",
                softmax_temperature=0.5, rare_threshold=0.0, seed=0, question_offset=0, threads=0,
                return_probabilities=True)
    base = _core.route(**args)
    # Lists, narrower dtypes, non-contiguous and NumPy scalars are converted, not rejected.
    same = _core.route(**{**args, "profiles": prof.tolist(), "indptr": indptr.astype(np.uint8),
                          "indices": np.array([0, 0])[::2], "k": np.int8(2), "seed": np.uint64(0), "replace": np.True_})
    assert np.array_equal(same["experts"], base["experts"])
    for name, value, match in [
        ("question_offset", -1, r"question_offset must be an integer in \[0, \d+\], got -1"),
        ("seed", 2**64, "seed .*got 18446744073709551616"),
        ("seed", 1.5, "seed must be an integer .*got 1.5"),
        ("k", 2.0, "k must be an integer .*got 2.0"),
        ("replace", "yes", "replace must be True or False, got 'yes'"),
        ("weighting", 3, "weighting must be one of 'reference', 'softmax'; got 3"),
        ("temperature", "hot", "temperature must be a real number, got 'hot'"),
        ("temperature", float("inf"), "temperature must be a positive finite number, got inf"),
        ("rare_threshold", float("nan"), "rare_threshold must be finite and at most 1, got nan"),
        ("profiles", prof.astype(float), "profiles must be an array of integers, got dtype float64"),
        ("profiles", np.array([[2**63], [1]], dtype=np.uint64), "profiles has value 9223372036854775808 beyond"),
        ("profiles", np.array([1, 2]), r"profiles must be a 2-D .*got shape \(2,\)"),
        ("indptr", np.array(0), r"indptr must be 1-D .*got shape \(\)"),
        ("indices", [[0], [0, 1]], "indices is not an array"),
        ("indices", ["x"], "indices must be an array of integers, got dtype <U1"),
    ]:
        with pytest.raises(ValueError, match=match):
            _core.route(**{**args, name: value})


@pytest.mark.parametrize("score, shown", [(1e30, r"1e\+30"), (-2.0**40, r"-1099511627776\.0"), (2**63, "9223372036854775808")])
def test_huge_profile_scores_quote_the_real_value(score, shown):
    # 1e30 was reported as the wrapped int64 -9223372036854775808.
    with pytest.raises(ValueError, match=rf"model 'm'.*keyword 'x' is {shown}, out of range"):
        symoe.Profiles.from_dict({"m": {"x": float(score)}}) if isinstance(score, float) else \
            symoe.Profiles(("m",), ("x",), np.array([[score]], dtype=np.uint64))


def test_extreme_scores_match_reference():
    # |S| just below 2^31: the shifted score S - min S + 1 overflowed int32 (UBSan: signed overflow).
    for prof, qs in [([[0, 1], [-(2**31 - 1), 0]], [[0], [1], []]), ([[-1], [-(2**30)]], [[0]]),
                     ([[2**39, -(2**39)], [-(2**39), 3]], [[0], [1], [0, 1], []])]:
        _, probs = ref.route(prof, qs, rare_threshold=0)
        a = core_route(np.array(prof), qs, rare_threshold=0, return_probabilities=True)
        assert np.array_equal(a.probabilities, np.array(probs))


def _threads_started(fn):
    """OS threads started while ``fn`` runs: Linux hands out thread ids in sequence, so the ids of a
    thread started before and one started after bound them (other processes only add to it)."""
    def new_tid():
        t = threading.Thread(target=lambda: None)
        t.start()
        t.join()
        return t.native_id

    for _ in range(3):  # the ids wrap around at pid_max: measure again
        before = new_tid()
        out = fn()
        after = new_tid()
        if after > before:
            return after - before - 1, out
    # Only reached when the kernel's thread ids wrapped around pid_max in three measurements in a row
    # (other processes starting ~4M threads meanwhile): nothing can be measured then, so say so.
    pytest.skip("thread ids wrapped around three times")


@pytest.mark.skipif(sys.platform != "linux", reason="sequential thread ids are Linux's")
def test_huge_thread_count_is_capped_by_the_work():
    # threads=2**31-1 asks for more threads than exist; the core starts at most one per 4096
    # questions in each parallel pass (sampling, the rare-expert filter's passes), not one per question.
    p = symoe.Profiles(("a", "b"), ("x",), np.array([[1], [2]]))
    passes, noise = 3, 200  # noise: threads other processes start meanwhile (uncapped would be ~3 x N)
    for n in (5, 3 * 4096 + 1):
        chunks = -(-n // 4096)
        started, a = _threads_started(lambda n=n: symoe.route(p, [["x"]] * n, threads=2**31 - 1))
        assert started <= passes * (chunks if chunks > 1 else 0) + noise, (n, started)
        if chunks > 1:
            assert started >= chunks, started  # the measure sees the core's threads
        assert np.array_equal(a.experts, symoe.route(p, [["x"]] * n, threads=1).experts)


def test_temperature_too_small_for_the_profiles_is_refused_with_the_range_that_works():
    # Competence sums 10, 2, 3: 10^(1/T) overflows a double below T ~ 0.0033, gamma turned NaN and
    # every question was routed uniformly (half its slots to the weak model b) without a word.
    p = symoe.Profiles(("a", "b", "c"), ("x", "y"), np.array([[9, 1], [1, 1], [0, 3]]))
    with pytest.raises(ValueError, match=r"^temperature 0\.003 is too small for these profiles: .* overflow or "
                                         r"underflow a double; use a temperature >= 0\.00326$"):
        symoe.route(p, [["x"]] * 50, k=1, temperature=0.003)
    a = symoe.route(p, [["x"]] * 50, k=1, temperature=0.00326, return_probabilities=True)  # the bound quoted works
    assert np.isfinite(a.probabilities).all() and a.counts() == {"a": 50, "b": 0, "c": 0}
    assert symoe.route(p, [["x"]] * 5, k=1, temperature=1e300).k == 1  # large T: uniform competence, by design
