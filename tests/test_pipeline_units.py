import json

import pytest

from conftest import DATA
from symoe.aggregator import synthetic_items
from symoe.datasets import Question, load_questions
from symoe.keywords import filter_keywords, parse_keywords
from symoe.pipeline import Task, check_pool
from symoe.profiling import build_profiles
from symoe.routing import Profiles


def test_parse_keywords_reference_rules():
    assert parse_keywords("Keywords: Algebra, Number Theory., probability") == ["algebra", "number theory", "probability"]
    # Text after the LAST "Keywords:"; no marker: the whole text.
    assert parse_keywords("Keywords: a, b\nActually, Keywords: Virology, Immunology") == ["virology", "immunology"]
    assert parse_keywords("organic chemistry, stoichiometry") == ["organic chemistry", "stoichiometry"]
    assert parse_keywords("Keywords: , ,  ") == []
    assert parse_keywords("") == []
    assert parse_keywords("Keywords: U.S. History") == ["us history"]


def test_filter_keywords_pool_length_and_repeats():
    samples = ["Keywords: algebra, geometry", "Keywords: Algebra, calculus",
               "Keywords: a-very-long-keyword-over-twenty, algebra",
               "Keywords: a-very-long-keyword-over-twenty, geometry", "nonsense"]
    assert filter_keywords(samples) == ["algebra", "geometry"]  # >=2 occurrences, <=20 chars, de-duplicated
    assert filter_keywords(["Keywords: x"] * 1) == []
    assert filter_keywords([]) == []
    # Adversarial model output: repeated marker, trailing junk, unicode.
    weird = ["Keywords: Keywords: Ökonomie, finance!!", "Keywords: ökonomie,   FINANCE!!"]
    assert filter_keywords(weird) == ["ökonomie", "finance!!"]


def test_build_profiles_arithmetic():
    records = [{"model": "a", "question": "q1", "correct": True}, {"model": "a", "question": "q2", "correct": False},
               {"model": "b", "question": "q1", "correct": False}, {"model": "b", "question": "q2", "correct": False}]
    kws = {"q1": ["algebra", "algebra", "logic"], "q2": ["logic"]}
    p = build_profiles(records, kws, ["a", "b"])
    assert p.to_dict() == {"a": {"algebra": 2}, "b": {"algebra": -2, "logic": -2}}
    assert p.matrix[p.models.index("a"), p.vocabulary.index("logic")] == 0  # +1 - 1
    assert p.accuracy == {"a": 0.5, "b": 0.0}
    with pytest.raises(ValueError, match="model 'zz', which is not in the pool"):
        build_profiles([{"model": "zz", "question": "q1", "correct": True}], kws, ["a"])


def test_synthetic_benchmark_one_right_two_wrong():
    qs = [Question("q1", "Q1 (A) x (B) y", "A", "letter"), Question("q2", "Q2 (A) x (B) y", "B", "letter"),
          Question("q3", "Q3 (A) x (B) y", "A", "letter")]
    recs = [{"model": m, "question": "q1", "correct": c, "text": t}
            for m, c, t in [("a", True, "R1"), ("b", False, "W1"), ("c", False, "W2"), ("d", False, "W3")]]
    recs += [{"model": "a", "question": "q2", "correct": False, "text": "only wrong"}]
    items = synthetic_items(qs, recs, seed=3)
    by = {q.id: r for q, r in items}
    assert len(by["q1"]) == 3 and sorted(by["q1"]).count("R1") == 1 and len(set(by["q1"]) & {"W1", "W2", "W3"}) == 2
    assert by["q2"] == ["", "", ""]  # no correct answer, one wrong: blanks, as the authors' code
    lone = recs + [{"model": m, "question": "q3", "correct": c, "text": t} for m, c, t in [("a", True, "R"), ("b", False, "W")]]
    assert sorted({q.id: r for q, r in synthetic_items(qs, lone, seed=3)}["q3"]) == ["", "", "R"]
    assert by["q3"] == ["", "", ""]
    assert synthetic_items(qs, recs, seed=3) == items  # seeded
    orders = {tuple(synthetic_items(qs, recs, seed=s)[0][1]) for s in range(20)}
    assert len(orders) > 1  # shuffled


def test_matching_on_real_embeddings(tmp_path):
    from symoe.matching import Embedder, match_keywords

    e = Embedder(tmp_path / "emb.npz")
    vocab = ["organic chemistry", "microeconomics", "virology", "probability theory"]
    out = match_keywords({"q1": ["chemical reactions", "viruses"], "q2": ["supply and demand", "supply and demand"]},
                         vocab, e)
    assert out == {"q1": ["organic chemistry", "virology"], "q2": ["microeconomics", "microeconomics"]}
    assert (tmp_path / "emb.npz").exists()
    floor = match_keywords({"q": ["viruses", "zzzzqx"]}, vocab, Embedder(tmp_path / "emb.npz"), floor=0.4)
    assert floor == {"q": ["virology"]}
    with pytest.raises(ValueError, match="vocabulary is empty"):
        match_keywords({"q": ["x"]}, [], e)


def test_check_pool_names_problems():
    from symoe.planning import Config

    cfg = Config.bundled("paper16")
    p = Profiles.from_dict({"not-in-pool": {"x": 1}})
    t = Task("mmlu_pro", cfg.names[0], cfg.names[1])
    with pytest.raises(ValueError, match="profile for model 'not-in-pool', which is not in the pool"):
        check_pool(p, cfg, t)
    with pytest.raises(ValueError, match="aggregator 'nope' is not in the pool"):
        check_pool(Profiles.from_dict({cfg.names[0]: {"x": 1}}), cfg, Task("t", "nope", cfg.names[0]))


def test_bundled_sample_is_real_test_data():
    from symoe.pipeline import bundled

    sample = json.loads(bundled("mmlu_pro_sample.json").read_text())
    test = json.loads((DATA / "MMLU_Pro_test.json").read_text())
    for q in sample:
        i = int(q["id"].rsplit("-", 1)[1])
        assert test[i]["question"] == q["question"] and test[i]["gold_answer"] == q["gold_answer"]
    assert len({q["category"] for q in sample}) == 14
    assert len(load_questions(bundled("mmlu_pro_sample.json"), "mmlu_pro")) == len(sample)
