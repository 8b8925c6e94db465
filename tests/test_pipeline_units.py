import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import raw_items
from symoe.method.aggregator import synthetic_items
from symoe.method.datasets import Question, load_questions
from symoe.method.keywords import filter_keywords, parse_keywords
from symoe.method.profiling import build_profiles
from symoe.method.routing import Profiles
from symoe.pipeline import Task, check_pool


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
    from symoe.method.matching import Embedder, match_keywords

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
    from symoe.config.pool import Config

    cfg = Config.bundled("paper16")
    p = Profiles.from_dict({"not-in-pool": {"x": 1}})
    t = Task("mmlu_pro", cfg.names[0], cfg.names[1])
    with pytest.raises(ValueError, match="profile for model 'not-in-pool', which is not in the pool"):
        check_pool(p, cfg, t)
    with pytest.raises(ValueError, match="aggregator 'nope' is not in the pool"):
        check_pool(Profiles.from_dict({cfg.names[0]: {"x": 1}}), cfg, Task("t", "nope", cfg.names[0]))


def test_bundled_sample_is_real_test_data():
    from symoe.method.datasets import bundled

    sample = json.loads(bundled("mmlu_pro_sample.json").read_text())
    test = raw_items("MMLU_Pro_test.json")
    for q in sample:
        i = int(q["id"].rsplit("-", 1)[1])
        assert test[i]["question"] == q["question"] and test[i]["gold_answer"] == q["gold_answer"]
    assert len({q["category"] for q in sample}) == 14
    assert len(load_questions(bundled("mmlu_pro_sample.json"), "mmlu_pro")) == len(sample)


def _pool_with_folder(tmp_path, engine_len=8192, model_len=None, positions=4096):
    from symoe.config.pool import Config

    folder = tmp_path / "m"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": positions}))
    m = {"name": "org/math", "path": str(folder), "weight_gb": 1.0, "trust_remote_code": True}
    if model_len is not None:
        m["max_model_len"] = model_len
    return Config.from_dict({"engine": {"max_model_len": engine_len},
                             "model": [m, {"name": "org/r1", "weight_gb": 1.0, "max_tokens": 32768}]})


def test_per_model_engine_settings_and_position_limit(tmp_path):
    from symoe.errors import SymoeError
    from symoe.generation import ModelSettings

    cfg = _pool_with_folder(tmp_path)
    with pytest.raises(SymoeError, match=r"model org/math: max_model_len 8192 \(\[engine\] max_model_len\) exceeds the "
                                         r"4096 positions of .*config.json"):
        ModelSettings.of(cfg, "org/math")
    with pytest.raises(SymoeError, match=r"max_model_len 5000 \(its \[\[model\]\] max_model_len\) exceeds"):
        ModelSettings.of(_pool_with_folder(tmp_path, model_len=5000), "org/math")
    s = ModelSettings.of(_pool_with_folder(tmp_path, model_len=4096), "org/math")
    assert s.max_model_len == 4096 and s.trust_remote_code is True and s.wire()["trust_remote_code"] is True
    r1 = ModelSettings.of(cfg, "org/r1")  # no folder on disk: the engine's own limit applies
    assert r1.max_model_len == 8192 and r1.trust_remote_code is False


def test_bad_per_model_settings_are_named():
    from symoe.config.pool import Config
    from symoe.errors import SymoeError

    for key, v in (("max_tokens", 0), ("max_model_len", -1)):
        with pytest.raises(SymoeError, match=rf"\[\[model\]\] #1: {key} should be greater than 0, got {v}"):
            Config.from_dict({"model": [{"name": "a", "weight_gb": 1.0, key: v}]})
    with pytest.raises(ValueError, match="trust_remote_code"):
        Config.from_dict({"model": [{"name": "a", "weight_gb": 1.0, "trust_remote_code": "yes"}]})


def test_requests_take_each_models_max_tokens(tmp_path):
    from symoe.generation import Sampling
    from symoe.method.requests import Requests

    cfg = _pool_with_folder(tmp_path, model_len=4096)
    build = Requests(cfg, Sampling(max_tokens=4096, aggregate_max_tokens=2048))
    q = Question("q1", "Q (A) x (B) y", "A", "letter")
    assert build.expert("org/r1", q, 0).params.max_tokens == 32768
    assert build.expert("org/math", q, 0).params.max_tokens == 4096
    assert build.aggregate("org/r1", q, ["a", "b"]).params.max_tokens == 32768
    assert build.aggregate("org/math", q, ["a", "b"]).params.max_tokens == 2048


def test_paper16_settings_are_the_papers():
    from symoe.config.pool import Config

    cfg = Config.bundled("paper16")
    r1 = [m for m in cfg.models if "R1-Distill" in m.name]
    assert len(r1) == 2 and all(m.max_tokens == 32768 and m.max_model_len >= 32768 + 4096 for m in r1)
    assert all(m.max_tokens is None for m in cfg.models if m not in r1)  # the [engine] 4096
    assert dict(cfg.engine)["max_tokens"] == 4096
    assert {m.name for m in cfg.models if m.max_model_len == 4096} == {"Qwen/Qwen2.5-Math-7B",
                                                                      "deepseek-ai/deepseek-math-7b-instruct"}
    assert {m.name for m in cfg.models if m.trust_remote_code} == {"THUDM/glm-4-9b-chat",
                                                                  "internlm/internlm3-8b-instruct"}


def test_numpy_embedder_matches_sentence_transformers():
    """Differential test against the reference implementation's recorded output (sentence-transformers
    6.3 on torch; tests/data/minilm_reference.*): the torch-free embedder gives the same vectors for
    82 texts (40 vocabulary keywords, 40 other keywords, 2 phrases), and the same top-1 match for all
    774 test keywords (112 of them not a case or "... basics" variant of a vocabulary keyword)
    against the bundled profiles' 331-keyword vocabulary, whose closest runner-up trails by 0.0018."""
    from symoe.method.datasets import bundled
    from symoe.method.matching import Embedder, match_keywords
    from symoe.method.routing import Profiles

    data = Path(__file__).parent / "data"
    ref = json.loads((data / "minilm_reference.json").read_text())
    with np.load(data / "minilm_reference.npz") as z:
        texts, vectors = [str(t) for t in z["texts"]], z["vectors"]
    e = Embedder()
    assert len(texts) == 82 and np.abs(e.embed(texts) - vectors).max() < 1e-6
    vocab = Profiles.from_json(bundled("tiny_profiles.json")).vocabulary
    got = match_keywords({w: [w] for w in ref["matches"]}, vocab, e)
    assert len(got) == 774 and {w: m[0] for w, m in got.items()} == ref["matches"]
    assert ref["min_margin"] > 1e-3  # far above the vectors' difference: the matches are not a coin toss


def test_one_settings_object_flows_from_the_cli_to_the_pipeline(monkeypatch, tmp_path):
    # symoe run's options become one RunSettings (the preset resolved there, once) that SymbolicMoE
    # hands to run_pipeline whole, with run()'s baseline, skip_agreed and optimize_s in it.
    from click.testing import CliRunner

    import symoe.cli.run
    import symoe.moe
    from symoe.cli import main
    from symoe.pipeline import RunSettings

    seen = []

    def pipeline(questions, cfg, profiles, task, store, out_dir, settings, engines=None, clock=None, predicted=None,
                 launch=None):
        seen.append(settings)
        raise RuntimeError("stop here")

    monkeypatch.setattr(symoe.moe, "run_pipeline", pipeline)
    monkeypatch.setattr(symoe.moe, "provide", lambda *a: None)  # nothing fetched
    monkeypatch.setattr(symoe.moe, "forecast", lambda *a: None)
    monkeypatch.setattr(symoe.cli.run, "forecast_line", lambda p: "forecast")
    r = CliRunner().invoke(main, ["run", "--limit", "2", "--preset", "reference", "-k", "2", "--baseline", "top-k",
                                  "--optimize", "0", "--max-tokens", "7", "--retries", "1",
                                  "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "out")])
    assert "stop here" in r.output, r.output
    [s] = seen
    assert isinstance(s, RunSettings) and s.preset.name == "reference" and s.rare_threshold == 0.0
    assert (s.k, s.baseline, s.skip_agreed, s.optimize_s, s.sampling.max_tokens, s.options.retries) == \
        (2, "top-k", False, 0.0, 7, 1)
    with pytest.raises(ValueError, match="rare_threshold must be finite and at most 1, got nan"):
        RunSettings(rare_threshold=float("nan"))  # refused when made, before any stage or forecast


def test_symbolic_moe_settings_assign_and_run_keeps_them(monkeypatch, tmp_path):
    # moe.k = 5 (the API before RunSettings) rebuilds the settings, checked; run()'s baseline,
    # skip_agreed and optimize_s left out keep the settings' own, given ones replace them for that run.
    import symoe.moe
    from symoe.config.pool import Config
    from symoe.config.presets import preset
    from symoe.execution.settings import RunSettings
    from symoe.method.datasets import bundled

    seen = []
    monkeypatch.setattr(symoe.moe, "run_pipeline", lambda *a: seen.append(a[6]) or SimpleNamespace(report=None))
    monkeypatch.setattr(symoe.moe, "provide", lambda *a: None)
    monkeypatch.setattr(symoe.moe, "observe_or_warn", lambda *a: None)
    pool = Config.load("tiny")
    moe = symoe.moe.SymbolicMoE(pool, bundled("tiny_profiles.json"), bundled("tiny_task.json"), store=tmp_path / "s.sqlite",
                                settings=RunSettings.of(pool, baseline="top-k", skip_agreed=True, optimize_s=0.0))
    moe.k, moe.seed, moe.preset, moe.similarity_floor = 5, 7, "reference", 0.3
    with pytest.raises(ValueError, match="k must be an integer"):
        moe.k = 0
    moe.sampling = replace(moe.sampling, max_tokens=9)
    assert moe.config.model(moe.task.aggregator).expert_output_tokens <= 9  # lengths capped at the new limit
    moe.run([], tmp_path / "out")
    moe.run([], tmp_path / "out", baseline="random", skip_agreed=False, optimize_s=1.0)
    assert [(s.baseline, s.skip_agreed, s.optimize_s) for s in seen] == [("top-k", True, 0.0), ("random", False, 1.0)]
    assert (seen[0].k, seen[0].seed, seen[0].preset, seen[0].similarity_floor, seen[0].sampling.max_tokens) == \
        (5, 7, preset("reference"), 0.3, 9)
