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


def test_demo_runs(tmp_path):
    # The demo routes the bundled sample with synthetic profiles and plans it with each strategy on
    # 1 and --devices devices: every row it prints is the plan the API makes for those inputs.
    from symoe import Config, plan, route
    from symoe.method.datasets import bundled, load_questions
    from symoe.method.workloads import category_keywords, skewed_profiles
    from symoe.pipeline import Task

    r = CliRunner().invoke(main, ["demo", "--devices", "2", "--png", str(tmp_path / "t.png")])
    assert r.exit_code == 0, r.output
    qs = load_questions(bundled("mmlu_pro_sample.json"))
    cfg = Config.bundled("paper16")
    a = route(skewed_profiles(cfg.names, sorted({q.category for q in qs})), category_keywords([q.category for q in qs]))
    assert f"routing {len(qs)} MMLU-Pro questions with SYNTHETIC profiles" in r.output
    assert f"{len(qs)} questions x k=3; {sum(1 for n in a.counts().values() if n)} experts used" in r.output
    agg = Task.from_json(bundled("paper16_task_mmlu_pro.json")).aggregator
    want = [[s, str(d), str(p.timeline.loads), f"{p.makespan:,.1f}", f"{p.lower_bound:,.1f}"]
            for d in (1, 2) for s in ("naive", "reference", "symoe")
            for p in [plan(a, cfg.with_devices(d), aggregator=agg, strategy=s)]]
    rows = [w for w in map(str.split, r.output.splitlines()) if w[:1] in (["naive"], ["reference"], ["symoe"])]
    assert [w[:3] + w[4:6] for w in rows] == want, r.output
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
