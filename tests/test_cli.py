import json

from click.testing import CliRunner

from symoe.cli import main


def test_route_and_plan_commands(tmp_path):
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({"meta-llama/Meta-Llama-3.1-8B-Instruct": {"algebra": 3, "law": -2},
                                "Qwen/Qwen2.5-7B-Instruct": {"algebra": -1, "law": 4}}))
    qs = tmp_path / "q.jsonl"
    qs.write_text("\n".join(json.dumps({"id": f"q{i}", "keywords": ["algebra"] if i % 2 else ["law"]}) for i in range(20)))
    r = CliRunner().invoke(main, ["route", "--profiles", str(prof), "--questions", str(qs), "--out", str(tmp_path / "a.jsonl")])
    assert r.exit_code == 0, r.output
    assert "20 questions x k=3" in r.output and "Qwen/Qwen2.5-7B-Instruct" in r.output
    r = CliRunner().invoke(main, ["plan", "--assignment", str(tmp_path / "a.jsonl"), "--config", "paper16", "--devices", "2",
                                  "--aggregator", "Qwen/Qwen2.5-7B-Instruct", "--strategy", "all",
                                  "--out", str(tmp_path / "plan.json"), "--png", str(tmp_path / "t.png")])
    assert r.exit_code == 0, r.output
    for s in ("naive", "reference", "symoe", "predicted by the cost model"):
        assert s in r.output
    assert json.loads((tmp_path / "plan.json").read_text())["strategy"] == "symoe"
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_cli_errors_are_clean(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text("{oops")
    qs = tmp_path / "q.jsonl"
    qs.write_text(json.dumps({"keywords": ["x"]}))
    r = CliRunner().invoke(main, ["route", "--profiles", str(bad), "--questions", str(qs), "--out", str(tmp_path / "a")])
    assert r.exit_code != 0 and "not valid JSON" in r.output and "Traceback" not in r.output
    assert r.exit_code == 2
    r = CliRunner().invoke(main, ["plan", "--assignment", str(qs), "--config", "no-such-config"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "Error: --config 'no-such-config': no such file, nor a bundled config (paper16, " in r.output
    assert "tiny)" in r.output


def test_demo_runs():
    r = CliRunner().invoke(main, ["demo", "--devices", "2"])
    assert r.exit_code == 0, r.output
    assert "SYNTHETIC profiles" in r.output and r.output.count("symoe ") >= 2
