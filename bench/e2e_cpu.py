"""End to end on the CPU with the tiny pool, measured for real: the symoe plan vs the reference
schedule vs the naive plan on the same routed MMLU-Pro test questions; then calibration and the
predicted-vs-measured check.

    python bench/e2e_cpu.py --questions 24 --out runs/e2e

Each strategy runs with its own empty store, so nothing is reused between them. Writes a JSON
summary and the measured/predicted timeline pictures under --out.
"""

import argparse
import json
import time
from pathlib import Path

import symoe
from symoe.datasets import load_questions
from symoe.execute import Sampling, calibrate, run_plan
from symoe.models import fetch_tiny
from symoe.pipeline import Task, bundled
from symoe.store import Store

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "symbolic_moe"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=24)
    ap.add_argument("--naive-questions", type=int, default=None, help="Run naive on the first N only (linear cost).")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--strategies", default="symoe,reference,naive")
    ap.add_argument("--out", default="runs/e2e")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = symoe.Config.from_toml(fetch_tiny())
    qs = load_questions(DATA / "MMLU_Pro_test.json", limit=args.questions)
    prof = symoe.Profiles.from_json(bundled("tiny_profiles.json"))
    task = Task.from_json(bundled("tiny_task.json"))
    # Keywords for routing come from the same pipeline stage `symoe run` uses.
    from symoe.keywords import annotate
    from symoe.matching import Embedder, match_keywords

    with Store(out / "keywords.sqlite") as st:
        kws = annotate(qs, cfg, task.keyword_model, st, out / "kw", progress=False)
    matched = match_keywords(kws, prof.vocabulary, Embedder(out / "emb.npz"))
    a = symoe.route(prof, [matched[q.id] for q in qs], k=3, seed=0, question_ids=[q.id for q in qs])
    a.save(out / "assignment.jsonl")
    sampling = Sampling(0.7, args.max_tokens, args.max_tokens, 0)
    summary = {"questions": len(qs), "experts": a.counts(), "aggregator": task.aggregator, "runs": {}}
    calibrated = {}
    for strategy in args.strategies.split(","):
        n = args.naive_questions if strategy == "naive" and args.naive_questions else len(qs)
        sub = symoe.Assignment(a.models, a.experts[:n], a.question_ids[:n])
        p = symoe.plan(sub, cfg, aggregator=task.aggregator, strategy=strategy)
        store_path = out / f"{strategy}.sqlite"
        for suffix in ("", "-wal", "-shm"):
            Path(str(store_path) + suffix).unlink(missing_ok=True)
        with Store(store_path) as st:
            t0 = time.perf_counter()
            rep = run_plan(p, qs[:n], st, out / strategy, sampling, progress=False)
            wall = time.perf_counter() - t0
        cal = calibrate(cfg, rep)
        pc = symoe.plan(sub, cal, aggregator=task.aggregator, strategy=strategy)
        summary["runs"][strategy] = {"questions": n, "measured_s": rep.makespan, "wall_s": wall,
                                     "predicted_s": p.makespan, "predicted_after_calibration_s": pc.makespan,
                                     "loads": sum(s.kind == "load" for s in rep.steps), "accuracy": rep.accuracy}
        (out / f"calibrated-{strategy}.toml").write_text(cal.to_toml())
        calibrated[strategy] = (cal, sub, rep.makespan)
        print(strategy, json.dumps(summary["runs"][strategy]), flush=True)
    # Out of sample: figures calibrated on one strategy's run predict the others' runs.
    summary["cross"] = {}
    for src, (cal, _, _) in calibrated.items():
        for dst, (_, sub, measured) in calibrated.items():
            pred = symoe.plan(sub, cal, aggregator=task.aggregator, strategy=dst).makespan
            summary["cross"][f"{src}->{dst}"] = {"predicted_s": pred, "measured_s": measured,
                                                 "error": pred / measured - 1}
            print(f"calibrated on {src}: {dst} predicted {pred:.1f} s, measured {measured:.1f} s", flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
