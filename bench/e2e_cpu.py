"""End to end on the CPU with the tiny pool, measured for real: the symoe plan vs the reference
schedule vs the naive plan on the same routed MMLU-Pro test questions; then calibration and the
predicted-vs-measured check.

    python bench/e2e_cpu.py --questions 24 --out runs/e2e
    python bench/e2e_cpu.py --sample --strategies symoe --devices 1,2 --out runs/devices   # 1 vs 2 devices

Each strategy runs with its own empty store, so nothing is reused between them. Writes a JSON
summary and the measured/predicted timeline pictures under --out.
"""

import argparse
import json
import time
from pathlib import Path

import symoe
from symoe.execution import RunOptions, calibrate, run_plan
from symoe.generation import Sampling
from symoe.method.datasets import bundled, load_questions
from symoe.models.fetch import fetch_tiny
from symoe.planning.steps import StepKind
from symoe.store import Store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=24)
    ap.add_argument("--sample", action="store_true", help="The bundled 28-question sample (symoe run's default).")
    ap.add_argument("--devices", default="1", help="Device counts to run each strategy on, e.g. 1,2.")
    ap.add_argument("--naive-questions", type=int, default=None, help="Run naive on the first N only (linear cost).")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--strategies", default="symoe,reference,naive")
    ap.add_argument("--out", default="runs/e2e")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = symoe.Config.from_toml(fetch_tiny())
    qs = (load_questions(bundled("mmlu_pro_sample.json")) if args.sample
          else load_questions("mmlu_pro", limit=args.questions))
    # Routing as `symoe run` does it: keywords from the task's keyword model, matching, k=3 experts.
    moe = symoe.SymbolicMoE(cfg, bundled("tiny_profiles.json"), bundled("tiny_task.json"),
                            store=out / "keywords.sqlite", options=RunOptions(progress=False))
    task = moe.task
    a = moe.route(qs, embeddings=out / "emb.npz")
    a.save(out / "assignment.jsonl")
    sampling = Sampling(0.7, args.max_tokens, args.max_tokens, 0)
    summary = {"questions": len(qs), "experts": a.counts(), "aggregator": task.aggregator, "runs": {}}
    calibrated = {}
    runs = [(s, int(d)) for s in args.strategies.split(",") for d in args.devices.split(",")]
    base = cfg
    for strategy, devices in runs:
        cfg = base.with_devices(devices)
        name = strategy if devices == 1 else f"{strategy}-{devices}dev"
        n = args.naive_questions if strategy == "naive" and args.naive_questions else len(qs)
        sub = symoe.Assignment(a.models, a.experts[:n], a.question_ids[:n])
        p = symoe.plan(sub, cfg, aggregator=task.aggregator, strategy=strategy)
        store_path = out / f"{name}.sqlite"
        for suffix in ("", "-wal", "-shm"):
            Path(str(store_path) + suffix).unlink(missing_ok=True)
        with Store(store_path) as st:
            t0 = time.perf_counter()
            rep = run_plan(p, qs[:n], st, out / name, sampling, options=RunOptions(progress=False))
            wall = time.perf_counter() - t0
        cal = calibrate(cfg, rep)
        pc = symoe.plan(sub, cal, aggregator=task.aggregator, strategy=strategy)
        summary["runs"][name] = {"questions": n, "devices": devices, "measured_s": rep.makespan, "wall_s": wall,
                                     "predicted_s": p.makespan, "predicted_after_calibration_s": pc.makespan,
                                     "loads": sum(s.kind == StepKind.LOAD for s in rep.steps), "accuracy": rep.accuracy}
        (out / f"calibrated-{name}.toml").write_text(cal.to_toml())
        calibrated[name] = (cal, sub, rep.makespan, strategy)
        print(name, json.dumps(summary["runs"][name]), flush=True)
    # Out of sample: figures calibrated on one strategy's run predict the others' runs.
    summary["cross"] = {}
    for src, (cal, _, _, _) in calibrated.items():
        for dst, (dcal, sub, measured, strategy) in calibrated.items():
            cal_d = cal.with_devices(len(dcal.devices))
            pred = symoe.plan(sub, cal_d, aggregator=task.aggregator, strategy=strategy).makespan
            summary["cross"][f"{src}->{dst}"] = {"predicted_s": pred, "measured_s": measured,
                                                 "error": pred / measured - 1}
            print(f"calibrated on {src}: {dst} predicted {pred:.1f} s, measured {measured:.1f} s", flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
