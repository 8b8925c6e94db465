"""Evaluation (issue 11 section 4): --skip-agreed, the self-moa and oracle baselines, export,
re-grading from the store and `symoe report`; all on the fake engine or a pre-filled store."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import symoe.pipeline
from symoe.cli import main
from symoe.config.pool import Config
from symoe.errors import SymoeError
from symoe.evaluation.comparison import bootstrap_ci, load_runs
from symoe.evaluation.from_store import agreed_answer, export_rows, regrade
from symoe.execution import RunOptions
from symoe.generation import Generation, Sampling
from symoe.generation.fake import FakeEngine, ScaledClock
from symoe.method.datasets import Question
from symoe.method.requests import Requests
from symoe.method.routing import Profiles
from symoe.pipeline import RunSettings, Task, run_pipeline
from symoe.planning.plan import Plan, StepKind
from symoe.store import Store

QUIET = RunOptions(progress=False, pictures=False)
SAMPLING = Sampling(max_tokens=64, aggregate_max_tokens=64, seed=1)
OPTIONS = "\n".join(f"({c}) option {c}" for c in "ABCDEFGHIJ")


def pool() -> Config:
    # Hub ids on a GPU platform: no folder is checked, and the fake engine loads nothing.
    return Config.from_dict({"devices": {"memory_gb": 80.0},
                             "model": [{"name": f"org/{m}", "weight_gb": 1.0} for m in ("a", "b", "c")]})


PROFILES = Profiles.from_dict({"org/a": {"algebra": 2}, "org/b": {"law": 3}, "org/c": {"law": 1}},
                              accuracy={"org/a": 0.5, "org/b": 0.7, "org/c": 0.2})
TASK = Task("t", "org/c", "org/a")


def questions(n=6):
    return [Question(f"q{i}", f"Question {i}?\n{OPTIONS}", "A", "letter", f"cat{i % 2}") for i in range(n)]


def answer(letter):
    return f"Step by step... The answer is ({letter})"


def prefill(store, cfg, qs, experts, letters):
    """Store expert answers: ``letters[q][slot]`` for the models ``experts[slot]``."""
    build = Requests(cfg, SAMPLING)
    for q, qu in enumerate(qs):
        for j, m in enumerate(experts):
            r = build.expert(m, qu, j)
            store.put(Generation.of(r, answer(letters[q][j]), 10, 7, "stop", 0.0))


def fake(log):
    clock = ScaledClock(0)

    def engines(cfg):
        es = [FakeEngine(d, cfg, clock) for d in range(len(cfg.devices))]
        log.extend(es)
        return es
    return engines, clock


def pipeline(tmp_path, store, qs, out, **kw):
    log = []
    engines, clock = fake(log)
    res = run_pipeline(qs, pool(), PROFILES, TASK, store, tmp_path / out,
                       RunSettings.of(pool(), sampling=SAMPLING, options=QUIET, **kw), engines=engines, clock=clock)
    calls = [x for e in log for x in e.log]
    loads = [s for s in res.report.steps if s.kind == StepKind.LOAD]
    return res, calls, loads, json.loads((tmp_path / out / "summary.json").read_text())


def test_agreed_answer():
    assert agreed_answer(["A", "A", "A"]) == "A"
    assert agreed_answer(["A", "B", "A"]) is None
    assert agreed_answer([None, None, None]) is None  # nothing extracted is no agreement
    assert agreed_answer([]) is None


def test_skip_agreed_plans_aggregation_only_where_experts_disagree(tmp_path):
    qs = questions(6)
    letters = ["AAA", "CCC", "BBB", "ABA", "CBA", "ACC"]  # q0-q2 agree (q1, q2 on a wrong answer)
    top = ["org/b", "org/a", "org/c"]                       # top-k by profile accuracy
    with Store(tmp_path / "s.sqlite") as store:
        prefill(store, pool(), qs, top, letters)
        _, calls, loads, summary = pipeline(tmp_path, store, qs, "skip", baseline="top-k", skip_agreed=True)
        # Experts were all stored: nothing generated for them, no expert model loaded; only the
        # aggregator, for the three questions that disagree.
        assert sorted((c[1], c[2]) for c in calls) == [("aggregate", "q3"), ("aggregate", "q4"), ("aggregate", "q5")]
        assert [s.model for s in loads] == ["org/c"]
        plan = Plan.from_json(tmp_path / "skip" / "plan.json")
        c = pool().index("org/c")
        assert plan.aggregator.tolist() == [-1, -1, -1, c, c, c]
        assert summary["aggregations_skipped"] == 3 and summary["aggregations"] == 3
        assert summary["model_calls"] == 6 * 3 + 3
        rows = [json.loads(x) for x in (tmp_path / "skip" / "results.jsonl").read_text().splitlines()]
        assert [r["final_answer"] for r in rows[:3]] == ["A", "C", "B"]  # the agreed answer is final
        assert [r["correct"] for r in rows[:3]] == [True, False, False]
        assert [r["aggregation_skipped"] for r in rows] == [True] * 3 + [False] * 3
        assert all(r["aggregator"] is None for r in rows[:3]) and all(r["aggregator"] == "org/c" for r in rows[3:])

        # The same run without skipping, on the same store: every question aggregated, the three
        # aggregations of the first run reused.
        _, calls2, _, summary2 = pipeline(tmp_path, store, qs, "all", baseline="top-k")
        assert sorted(c[2] for c in calls2) == ["q0", "q1", "q2"]
        assert summary2["aggregations_skipped"] == 0 and summary2["aggregations"] == 6
        assert summary2["model_calls"] == 6 * 4
        assert summary2["reused"] == 6 * 3 + 3 and summary2["generated"] == 3


def test_skip_agreed_generates_experts_first_and_each_once(tmp_path):
    qs = questions(8)
    with Store(tmp_path / "s.sqlite") as store:
        res, calls, _, summary = pipeline(tmp_path, store, qs, "skip", baseline="random", skip_agreed=True)
    experts = [c for c in calls if c[1] == "expert"]
    aggs = [c for c in calls if c[1] == "aggregate"]
    assert len(experts) == 8 * 3 and len({c[0] for c in calls}) == len(calls)  # nothing generated twice
    assert max(c[4] for c in experts) <= min((c[3] for c in aggs), default=np.inf)  # experts first
    agreed = [agreed_answer(r.expert_answers) is not None for r in res.report.results]
    assert summary["aggregations_skipped"] == sum(agreed)
    assert sorted(c[2] for c in aggs) == sorted(q.id for q, a in zip(qs, agreed) if not a)
    assert summary["skip_agreed"] is True and summary["generated"] == len(calls)


def test_skip_agreed_refused_without_aggregator(tmp_path):
    with Store(tmp_path / "s.sqlite") as store, pytest.raises(SymoeError, match="single-best baseline runs no aggr"):
        pipeline(tmp_path, store, questions(2), "x", baseline="single-best", skip_agreed=True)


def test_self_moa_samples_the_best_model_k_times(tmp_path):
    qs = questions(3)
    with Store(tmp_path / "s.sqlite") as store:
        res, calls, _, summary = pipeline(tmp_path, store, qs, "smoa", baseline="self-moa")
    assert all(r.experts == ["org/b"] * 3 for r in res.report.results)  # best by profile accuracy
    experts = [c for c in calls if c[1] == "expert"]
    assert len(experts) == 9 and len({c[0] for c in experts}) == 9  # k distinct samples per question
    assert sorted(c[2] for c in calls if c[1] == "aggregate") == ["q0", "q1", "q2"]
    assert summary["baseline"] == "self-moa" and summary["model_calls"] == 12


def routed(monkeypatch, store, qs):
    """Keywords as if annotated and matched (stored samples; identity matching, no embedder)."""
    build = Requests(pool(), SAMPLING)
    for q in qs:
        for r in build.keywords(TASK.keyword_model, q):
            store.put(Generation.of(r, "Keywords: law, algebra", 5, 5, "stop", 0.0))
    monkeypatch.setattr(symoe.pipeline, "annotate", lambda qs, *a, **k: {q.id: ["law", "algebra"] for q in qs})
    monkeypatch.setattr(symoe.pipeline, "Embedder", lambda *a, **k: None)
    monkeypatch.setattr(symoe.pipeline, "match_keywords", lambda kws, *a, **k: dict(kws))


def test_oracle_from_stored_generations(tmp_path, monkeypatch):
    qs = questions(4)
    with Store(tmp_path / "s.sqlite") as store:
        with pytest.raises(SymoeError, match="oracle baseline: store .* lacks keyword samples"):
            pipeline(tmp_path, store, qs, "o", baseline="oracle")
        routed(monkeypatch, store, qs)
        res, calls, _, _ = pipeline(tmp_path, store, qs, "moe")
        assert len(calls) == 4 * 4
        # Rewrite the stored expert answers: q0 one right of three, q1 none, q2/q3 all right.
        letters = {"q0": "BAC", "q1": "BBC", "q2": "AAA", "q3": "AAA"}
        rows = [r for r in res.report.results]
        with Store(tmp_path / "o.sqlite") as st2:
            routed(monkeypatch, st2, qs)
            build = Requests(pool(), SAMPLING)
            for q, r in zip(qs, rows):
                for j, m in enumerate(r.experts):
                    st2.put(Generation.of(build.expert(m, q, j), answer(letters[q.id][j]), 10, 7, "stop", 0.0))
            res_o, calls_o, loads_o, summary = pipeline(tmp_path, st2, qs, "oracle", baseline="oracle")
    assert calls_o == [] and loads_o == []  # no generation, no load
    assert [r.correct for r in res_o.report.results] == [True, False, True, True]
    assert summary["accuracy"] == 0.75 and summary["baseline"] == "oracle"
    assert [r.experts for r in res_o.report.results] == [r.experts for r in rows]  # the same routing


def test_export_every_generation_graded(tmp_path):
    qs = questions(2)
    with Store(tmp_path / "s.sqlite") as store:
        with pytest.raises(SymoeError, match="holds no generations: nothing to export"):
            list(export_rows(store, qs))
        prefill(store, pool(), qs, ["org/a", "org/b"], ["AB", "CA"])
        rows = list(export_rows(store, qs))
        rows_unknown = list(export_rows(store, qs[:1]))
    assert len(rows) == 4
    got = sorted((r["question"], r["model"], r["slot"], r["answer"], r["correct"], r["tokens"], r["role"])
                 for r in rows)
    assert got == [("q0", "org/a", 0, "A", True, 7, "expert"), ("q0", "org/b", 1, "B", False, 7, "expert"),
                   ("q1", "org/a", 0, "C", False, 7, "expert"), ("q1", "org/b", 1, "A", True, 7, "expert")]
    assert all(r["text"].startswith("Step by step") for r in rows)
    assert sum(r["answer"] is None for r in rows_unknown) == 2  # q1 not among the questions: not graded


def test_export_cli(tmp_path):
    qs = questions(2)
    qfile = tmp_path / "qs.jsonl"
    qfile.write_text("\n".join(json.dumps({"id": q.id, "question": q.text, "answer": q.gold, "category": q.category})
                               for q in qs))
    r = CliRunner().invoke(main, ["export", "--store", str(tmp_path / "s.sqlite"), "--questions", str(qfile),
                                  "--format", "jsonl", "--out", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 2 and "--store" in r.output and "no such file" in r.output
    Store(tmp_path / "s.sqlite").close()
    r = CliRunner().invoke(main, ["export", "--store", str(tmp_path / "s.sqlite"), "--questions", str(qfile),
                                  "--format", "jsonl", "--out", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 2 and "holds no generations" in r.output and not (tmp_path / "x.jsonl").exists()
    with Store(tmp_path / "s.sqlite") as store:
        prefill(store, pool(), qs, ["org/a"], ["A", "B"])
    r = CliRunner().invoke(main, ["export", "--store", str(tmp_path / "s.sqlite"), "--questions", str(qfile),
                                  "--format", "jsonl", "--out", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "x.jsonl").read_text().splitlines()]
    assert sorted((x["question"], x["correct"]) for x in rows) == [("q0", True), ("q1", False)]
    assert "2 generations" in r.output


def test_regrade_from_store_changes_verdicts(tmp_path):
    qs = questions(4)
    top = ["org/b", "org/a", "org/c"]
    with Store(tmp_path / "s.sqlite") as store:
        # Experts write "\boxed{A}": an extractor that missed it would grade these wrong.
        build = Requests(pool(), SAMPLING)
        for qu in qs:
            for j, m in enumerate(top):
                store.put(Generation.of(build.expert(m, qu, j), "So \\boxed{A}", 10, 7, "stop", 0.0))
        _, _, _, summary = pipeline(tmp_path, store, qs, "run", baseline="top-k", skip_agreed=True)
        assert summary["aggregations_skipped"] == 4 and summary["accuracy"] == 1.0
        # Simulate results graded by an older extractor: every verdict false.
        f = tmp_path / "run" / "results.jsonl"
        old = [json.loads(x) for x in f.read_text().splitlines()]
        f.write_text("\n".join(json.dumps({**r, "correct": False, "final_answer": None}) for r in old))
        g = regrade(tmp_path / "run", qs, store)
        assert g.changed == ["q0", "q1", "q2", "q3"] and g.accuracy_before == 0.0 and g.accuracy_after == 1.0
        new = [json.loads(x) for x in f.read_text().splitlines()]
        assert new == old  # exactly what the run wrote
        assert json.loads((tmp_path / "run" / "summary.json").read_text())["accuracy"] == 1.0
        with pytest.raises(SymoeError, match="--questions lacks 1 question"):
            regrade(tmp_path / "run", qs[:3], store)
    with Store(tmp_path / "empty.sqlite") as empty, pytest.raises(SymoeError, match="lacks 12 expert generation"):
        regrade(tmp_path / "run", qs, empty)


def test_bootstrap_ci_fixed_seed():
    x = [True] * 30 + [False] * 20
    lo, hi = bootstrap_ci(x)
    assert (lo, hi) == bootstrap_ci(x) and lo < 0.6 < hi and 0.4 < lo and hi < 0.8
    assert bootstrap_ci([True] * 5) == (1.0, 1.0)


def test_report_side_by_side_and_refuses_other_questions(tmp_path):
    qs = questions(6)
    with Store(tmp_path / "s.sqlite") as store:
        pipeline(tmp_path, store, qs, "moe", baseline="top-k")
        pipeline(tmp_path, store, qs, "skip", baseline="top-k", skip_agreed=True)
        pipeline(tmp_path, store, qs[:5], "fewer", baseline="top-k")
    rows = load_runs([tmp_path / "moe", tmp_path / "skip"])
    assert [r.name for r in rows] == ["moe", "skip"] and rows[1].baseline == "top-k +skip-agreed"
    assert rows[0].calls_per_question == 4.0 and rows[0].tokens_per_question > 0
    assert set(rows[0].by_category) == {"cat0", "cat1"}
    assert rows[0].ci_low <= rows[0].accuracy <= rows[0].ci_high
    with pytest.raises(SymoeError, match="run over different question sets"):
        load_runs([tmp_path / "moe", tmp_path / "fewer"])
    png = tmp_path / "r.png"
    r = CliRunner().invoke(main, ["report", str(tmp_path / "moe"), str(tmp_path / "skip"), "--png", str(png)])
    assert r.exit_code == 0, r.output
    assert "| moe | top-k |" in r.output and "95% CI" in r.output and "| cat0 |" in r.output
    assert png.stat().st_size > 1000
    r = CliRunner().invoke(main, ["report", str(tmp_path / "moe"), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)[0]["questions"] == 6
    r = CliRunner().invoke(main, ["report", str(tmp_path / "moe"), str(tmp_path / "fewer")])
    assert r.exit_code == 2 and "different question sets" in r.output and "Traceback" not in r.output


def test_preset_reference_turns_the_rare_expert_filter_off(tmp_path, monkeypatch):
    qs = questions(40)
    with Store(tmp_path / "s.sqlite") as store:
        routed(monkeypatch, store, qs)
        # org/c is drawn for about 3% of the slots: below the 5% filter.
        res, _, _, summary = pipeline(tmp_path, store, qs, "symoe")
        ref, _, _, summary_ref = pipeline(tmp_path, store, qs, "ref", preset="reference")
        explicit, _, _, _ = pipeline(tmp_path, store, qs, "explicit", preset="reference", rare_threshold=0.05)
        with pytest.raises(SymoeError, match="preset must be one of symoe, reference, got 'authors'"):
            pipeline(tmp_path, store, qs, "bad", preset="authors")
    assert summary["preset"] == "symoe" and summary["rare_threshold"] == 0.05 and res.assignment.replaced > 0
    assert res.assignment.counts().get("org/c", 0) == 0
    assert summary_ref["preset"] == "reference" and summary_ref["rare_threshold"] == 0.0
    assert ref.assignment.replaced == 0 and ref.assignment.counts()["org/c"] > 0
    assert explicit.assignment.replaced == res.assignment.replaced  # an explicit threshold overrides the preset's
