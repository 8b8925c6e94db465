"""`symoe run` end to end on the tiny pool (real vLLM CPU engines, bundled profiles and aggregator
choice), on 2 bundled MMLU-Pro questions; then a baseline that reuses the store."""

import json

from click.testing import CliRunner

from symoe.cli import main
from symoe.method.datasets import bundled
from symoe.pipeline import Task


def test_symoe_run_and_majority_baseline(tmp_path):
    store = str(tmp_path / "store.sqlite")
    common = ["--limit", "2", "--max-tokens", "24", "--store", store]
    r = CliRunner().invoke(main, ["run", *common, "--out", str(tmp_path / "moe")])
    assert r.exit_code == 0, r.output
    assert "accuracy:" in r.output and "experts used:" in r.output
    rows = [json.loads(x) for x in (tmp_path / "moe" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    task = Task.from_json(bundled("tiny_task.json"))
    for row in rows:
        assert len(row["experts"]) == 3 and row["aggregator"] == task.aggregator
        assert row["correct"] == (row["final_answer"] == row["gold"])
        assert isinstance(row["keywords"], list) and isinstance(row["matched_keywords"], list)
    summary = json.loads((tmp_path / "moe" / "summary.json").read_text())
    assert summary["questions"] == 2 and summary["generated"] == 8  # 6 expert answers + 2 aggregations
    assert set(summary["stage_seconds"]) >= {"keywords", "matching", "routing", "planning", "generation"}
    # Majority vote instead of the aggregator: same routing, so every expert answer is reused.
    r = CliRunner().invoke(main, ["run", *common, "--baseline", "majority", "--out", str(tmp_path / "maj")])
    assert r.exit_code == 0, r.output
    maj = json.loads((tmp_path / "maj" / "summary.json").read_text())
    assert maj["generated"] == 0 and maj["reused"] == 6
    assert [json.loads(x)["aggregator"] for x in (tmp_path / "maj" / "results.jsonl").read_text().splitlines()] == [None, None]
