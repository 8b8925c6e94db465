"""bench/serve_load.py (issue 23's load test) at a tiny size on the fake engine (instant): two
``symoe serve`` processes (batched by expert, one pass per request) and the batch mode, ``symoe run
--fake`` on the same questions, as one more row of the table."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "serve_load.py"


def serve_load():
    spec = importlib.util.spec_from_file_location("serve_load", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_load"] = module  # its dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


def test_load_test_answers_every_request_with_its_own_answer_and_adds_the_batch_mode(capsys):
    n = 6
    res = serve_load().run(["--requests", str(n), "--rates", "30", "--scale", "0", "--clients", "8", "--window-ms", "50"])
    out = capsys.readouterr().out
    assert [r.mode for r in res.rows] == ["batched (50 ms)", "per request", "batch mode (symoe run)"]
    # The load refuses an answer whose question or seed is not its request's. One pass per request
    # cannot mix requests, and the fake engine's text is a function of the request: a batched answer
    # equal to the per-request one is its own question's answer.
    batched, alone, batch = res.answers["batched (50 ms) @ 30"], res.answers["per request @ 30"], res.answers["batch mode"]
    assert len(batched) == n and batched == alone  # (None: the fake's letter is past the question's options)
    assert len(batch) == n
    # Each question: 5 keyword samples, k = 3 experts and one aggregation, served or in the batch mode.
    assert [r.calls for r in res.rows] == [9.0, 9.0, 9.0] and all(r.batches > 0 for r in res.rows)
    row = res.rows[-1]
    assert row.rate is None and row.sustained is None and row.p50 == row.p99 > 0
    assert row.rps == pytest.approx(n / row.p50) and row.batches > 0
    assert "| all at once | batch mode (symoe run) |" in out and "p50 = p99 = its wall time" in out
    assert "highest rate sustained, batched (50 ms):" in out and "highest rate sustained, per request:" in out
    assert "extracted answers, batch mode = batched (50 ms) @ 30:" in out


def test_symoe_run_fake_runs_every_stage_on_the_fake_engine_with_the_configs_figures(tmp_path):
    # The pool's models have no folder (the fake loads nothing): a real engine could not run them.
    from click.testing import CliRunner

    from symoe.cli import main

    pool = serve_load().pool_file(tmp_path)
    r = CliRunner().invoke(main, ["run", "--config", str(pool), "--dataset", "mmlu_pro", "--limit", "3", "--fake", "0",
                                  "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "cost figures: the config's (fake engine)" in r.output  # not this machine's profile
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["questions"] == 3 and summary["model_calls"] == 3 * (3 + 1)  # experts and aggregations
