"""End to end on the CPU with the tiny pool, measured for real: the keyword stage and matching
once, then the symoe plan vs the reference schedule vs the naive plan on the same routed questions,
every stage and step kind predicted (the cost model with this machine's profile where `symoe
calibrate` wrote one, as `symoe run` plans, and its embedding figure; before it runs) beside what it
measured, and the whole run; then calibration on each run and its cross
predictions.

    python bench/e2e_cpu.py --limit 6 --devices 2 --max-tokens 48     # issue 21's acceptance runs
    python bench/e2e_cpu.py --limit 12 --seed 7
    python bench/e2e_cpu.py --questions 24 --out runs/e2e               # MMLU-Pro test questions instead
    python bench/e2e_cpu.py --sample --strategies symoe --devices 1,2 --out runs/devices   # 1 vs 2 devices

Questions: the bundled 28-question sample (symoe run's default; --limit N: its first N), or
--questions N of the MMLU-Pro test set. Each strategy runs with its own empty store, so nothing is
reused between them; the keyword store starts empty too (--keep-keywords reuses it), the embeddings
cache is kept as `symoe run` keeps its own. Writes summary.json, the table and the measured/predicted
timeline pictures under --out.
"""

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import symoe
from symoe.config import profile as machine_profile
from symoe.execution import RunOptions, calibrate, run_plan
from symoe.execution.prediction import (
    STEP_GROUPS,
    measured_step_groups,
    plan_seconds,
    plan_step_groups,
    predict_run,
)
from symoe.generation import Sampling
from symoe.method.datasets import bundled, load_questions
from symoe.method.embedding_speed import observe_embedder, uncached
from symoe.method.matching import Embedder, match_keywords
from symoe.method.routing import route
from symoe.models.fetch import fetch_tiny
from symoe.planning.steps import StepKind
from symoe.store import Store


def fresh(path: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return path


def costed(cfg: symoe.Config, max_tokens: int) -> tuple[symoe.Config, str]:
    """The pool as `symoe run` plans it here: this machine's profile (`symoe calibrate`) where it
    has a model, output lengths capped at the run's new tokens; and which figures came from where."""
    return machine_profile.apply(cfg, max_tokens, max_tokens)


def error(pred: float, meas: float) -> str:
    return f"{100 * (pred / meas - 1):+.0f}%" if meas > 0 else ""


def print_table(rows: list[list]) -> None:
    head = ["run", "stage / step kind", "predicted s", "measured s", "error"]
    cells = [head] + [[str(r[0]), str(r[1]), f"{r[2]:,.1f}", f"{r[3]:,.1f}", error(r[2], r[3])] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    for n, c in enumerate(cells):
        print("  ".join(x.ljust(w) if i < 2 else x.rjust(w) for i, (x, w) in enumerate(zip(c, widths))), flush=True)
        if n == 0:
            print("  ".join("-" * w for w in widths))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=None, help="The bundled sample's first N questions.")
    ap.add_argument("--questions", type=int, default=None, help="N MMLU-Pro test questions instead of the sample.")
    ap.add_argument("--sample", action="store_true", help="The bundled 28-question sample (the default).")
    ap.add_argument("--seed", type=int, default=0, help="Sampling and routing seed (a new one: runs never seen).")
    ap.add_argument("--devices", default="1", help="Device counts to run each strategy on, e.g. 1,2.")
    ap.add_argument("--naive-questions", type=int, default=None, help="Run naive on the first N only (linear cost).")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--strategies", default="symoe,reference,naive")
    ap.add_argument("--keep-keywords", action="store_true", help="Reuse the keyword store of an earlier run.")
    ap.add_argument("--out", default="runs/e2e")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = symoe.Config.from_toml(fetch_tiny())
    qs = (load_questions("mmlu_pro", limit=args.questions) if args.questions
          else load_questions(bundled("mmlu_pro_sample.json"), limit=args.limit))
    sampling = Sampling(0.7, args.max_tokens, args.max_tokens, args.seed)
    moe = symoe.SymbolicMoE(base, bundled("tiny_profiles.json"), bundled("tiny_task.json"), seed=args.seed,
                            sampling=sampling, store=out / "keywords.sqlite", options=RunOptions(progress=False))
    task, profiles, ids = moe.task, moe.profiles, [q.id for q in qs]
    if not args.keep_keywords:
        fresh(out / "keywords.sqlite")
    emb = out / "embeddings.npz"
    kw_cfg, note = costed(base, args.max_tokens)
    print(note, flush=True)
    with Store(out / "keywords.sqlite") as st:  # keywords and matching predicted before they run
        pre = predict_run(qs, kw_cfg, profiles, task.keyword_model, st, sampling, emb, routed=True, assignment=None,
                          aggregator=task.aggregator, k=moe.k, seed=args.seed, rare_threshold=moe.rare_threshold)
    print(f"{len(qs)} questions; forecast: keywords {pre.stages['keywords']:.1f} s ({pre.keyword_requests} samples), "
          f"matching {pre.stages['matching']:.1f} s ({pre.matching_texts:g} texts at {pre.embedding.seconds_per_text:.3f} "
          f"s/text, {pre.embedding.source}); generation by the symoe plan of a prior routing "
          f"{pre.stages['generation']:.1f} s", flush=True)
    # Routing as `symoe run` does it: keywords from the task's keyword model, matching, k=3 experts.
    t = time.perf_counter()
    kws = moe.keywords(qs, out / "keywords")
    keywords_s = time.perf_counter() - t
    words = [*profiles.vocabulary, *(w for ws in kws.values() for w in ws)]
    new = uncached(emb, words)
    t = time.perf_counter()
    embedder = Embedder(emb)
    loaded = time.perf_counter() - t
    matched = match_keywords(kws, profiles.vocabulary, embedder)
    matching_s = time.perf_counter() - t
    observe_embedder(embedder, loaded)  # this machine's embedding figure, for later forecasts
    t = time.perf_counter()
    a = route(profiles, [matched[i] for i in ids], k=moe.k, seed=args.seed, rare_threshold=moe.rare_threshold,
              question_ids=ids)
    routing_s = time.perf_counter() - t
    a.save(out / "assignment.jsonl")
    shared = [["(all)", "keywords", pre.stages["keywords"], keywords_s],
              ["(all)", "matching", pre.stages["matching"], matching_s],
              ["(all)", "routing", 0.0, routing_s]]
    summary = {"questions": len(qs), "seed": args.seed, "max_tokens": args.max_tokens, "experts": a.counts(),
               "aggregator": task.aggregator, "keyword_samples": pre.keyword_requests, "matching_texts": new,
               "embedding": asdict(pre.embedding), "stages": {r[1]: {"predicted_s": r[2], "measured_s": r[3]} for r in shared},
               "runs": {}}
    rows = list(shared)
    calibrated = {}
    for strategy, devices in [(s, int(d)) for s in args.strategies.split(",") for d in args.devices.split(",")]:
        cfg, _ = costed(base.with_devices(devices), args.max_tokens)
        name = strategy if devices == 1 else f"{strategy}-{devices}dev"
        n = args.naive_questions if strategy == "naive" and args.naive_questions else len(qs)
        sub = symoe.Assignment(a.models, a.experts[:n], a.question_ids[:n])
        t = time.perf_counter()
        p = symoe.plan(sub, cfg, aggregator=task.aggregator, strategy=strategy)
        planning_s = time.perf_counter() - t
        with Store(fresh(out / f"{name}.sqlite")) as st:
            t = time.perf_counter()
            rep = run_plan(p, qs[:n], st, out / name, sampling, options=RunOptions(progress=False))
            wall = time.perf_counter() - t
        pred_k, meas_k = plan_step_groups([p]), measured_step_groups(rep.steps)
        whole_pred = pre.stages["keywords"] + pre.stages["matching"] + plan_seconds(p)
        whole_meas = keywords_s + matching_s + routing_s + planning_s + wall
        run_rows = [[name, g, pred_k[g], meas_k[g]] for g in STEP_GROUPS if pred_k[g] or meas_k[g]]
        run_rows += [[name, "planning", 0.0, planning_s], [name, "makespan", p.makespan, rep.makespan],
                     [name, "generation (wall)", plan_seconds(p), wall], [name, "whole run", whole_pred, whole_meas]]
        rows += run_rows
        cal = calibrate(cfg, rep)
        pc = symoe.plan(sub, cal, aggregator=task.aggregator, strategy=strategy)
        summary["runs"][name] = {"questions": n, "devices": devices, "accuracy": rep.accuracy,
                                 "loads": sum(s.kind == StepKind.LOAD for s in rep.steps),
                                 "rows": {r[1]: {"predicted_s": r[2], "measured_s": r[3]} for r in run_rows},
                                 "predicted_after_calibration_s": pc.makespan}
        (out / f"calibrated-{name}.toml").write_text(cal.to_toml())
        calibrated[name] = (cal, sub, rep.makespan, strategy)
        print_table(run_rows)
    # Out of sample: figures calibrated on one strategy's run predict the others' runs.
    summary["cross"] = {}
    for src, (cal, _, _, _) in calibrated.items():
        for dst, (dcal, sub, measured, strategy) in calibrated.items():
            cal_d = cal.with_devices(len(dcal.devices))
            pred = symoe.plan(sub, cal_d, aggregator=task.aggregator, strategy=strategy).makespan
            summary["cross"][f"{src}->{dst}"] = {"predicted_s": pred, "measured_s": measured,
                                                 "error": pred / measured - 1}
            print(f"calibrated on {src}: {dst} predicted {pred:.1f} s, measured {measured:.1f} s", flush=True)
    print("\npredicted (before each ran) vs measured:")
    print_table(rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
