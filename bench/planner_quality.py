"""Planner quality and speed (issue 12): every number is a prediction of the cost model.

    .venv/bin/python bench/planner_quality.py [--suite N] [--polish SECONDS] [--skip-million]

1. symoe / optimum on the tiny-instance suite of tests/test_planner_exact.py without tensor-parallel
   speed-up (the exhaustive search, run on its own: no plan under test takes part in its
   optimum): the heuristic alone and the default plan (``symoe.plan``: heuristic and reproducible
   polish), mean, 90th percentile and max; optimum / bound (the core's and the default plan's);
   planning time; the default plan made twice is the same;
2. the paper workload (MMLU-Pro test routed over paper16 with synthetic profiles, R1 aggregator)
   on 1 and 4 GPUs with paper16's token figures (the R1-distilled models write 8x the others),
   and with equal tokens for every model: makespan, proven gap, reference and naive vs symoe,
   and the reference / symoe ratio at tensor-parallel efficiency 0.25, 1/3, 0.5 and 1;
3. planning time of 1,000,000 questions x 16 experts (k = 3) on 1, 4 and 16 devices, heuristic
   alone and the default plan;
4. the paper's timing table: a GPQA-sized workload (bench/paper_table.py's: 198 questions, k = 3,
   R1-Distill-Qwen-7B aggregating as the paper's GPQA choice) naive and batched (the authors'
   schedule) on one GPU with configs/paper16_gpqa.toml, in predicted seconds per question,
   against the paper's measured 196.92 s and 25.76 s and paper_table.py's replay.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import symoe
from symoe import Config
from symoe.method.workloads import category_keywords, skewed_profiles

ROOT = Path(__file__).resolve().parents[1]
R1_LLAMA = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
R1_QWEN = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"


def stats(x: np.ndarray) -> str:
    return f"mean {x.mean():.4f}  p90 {np.quantile(x, 0.9):.4f}  max {x.max():.4f}"


def suite(n: int) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    import test_planner_exact as exact

    heur, dflt, core, bound, t_plan, same = [], [], [], [], [], 0
    for seed in range(n):
        inst = exact.quality_instance(seed)
        agg = None if inst.agg is None else [inst.cfg.names[g] if g >= 0 else None for g in inst.agg]
        h = symoe.plan(inst.assignment(), inst.cfg, aggregator=agg, optimize_s=0)
        t = time.perf_counter()
        p = symoe.plan(inst.assignment(), inst.cfg, aggregator=agg)
        t_plan.append(time.perf_counter() - t)
        again = symoe.plan(inst.assignment(), inst.cfg, aggregator=agg)
        pa, qa = p.arrays.as_dict(), again.arrays.as_dict()
        same += all(np.array_equal(pa[k], qa[k]) for k in pa) and p.lower_bound == again.lower_bound
        opt, _ = exact.optimum(inst, math.inf)
        heur.append(h.makespan / opt)
        dflt.append(p.makespan / opt)
        core.append(opt / h.lower_bound)
        bound.append(opt / p.lower_bound)
    print(f"\n1. tiny instances ({n}: 2-5 models, 1-3 devices, 1-3 questions, no TP speed-up), symoe / optimum")
    print(f"   heuristic alone             {stats(np.array(heur))}")
    print(f"   default plan (polished)     {stats(np.array(dflt))}   (planning: mean {np.mean(t_plan):.3f} s, "
          f"max {np.max(t_plan):.3f} s; the same plan twice: {same}/{n})")
    print(f"   optimum / core bound        {stats(np.array(core))}")
    print(f"   optimum / default bound     {stats(np.array(bound))}   (min {np.min(bound):.4f}: never above the optimum)")


def equal_tokens(cfg: Config) -> Config:
    models = tuple(replace(m, expert_prompt_tokens=None, expert_output_tokens=None, aggregate_prompt_tokens=None,
                           aggregate_output_tokens=None) for m in cfg.models)
    return replace(cfg, models=models)


def paper(seconds: float | None) -> None:
    cfg0 = Config.bundled("paper16")
    qs = symoe.load_questions("mmlu_pro")
    cats = sorted({q.category for q in qs})
    a = symoe.route(skewed_profiles(cfg0.names, cats), category_keywords([q.category for q in qs]))
    print(f"\n2. paper workload: MMLU-Pro test, {len(a)} questions, k=3, aggregator {R1_LLAMA}")
    for label, cfg in (("paper16 tokens (R1 models write 8x)", cfg0), ("equal tokens (600 out each)", equal_tokens(cfg0))):
        print(f"   {label}")
        print(f"   {'GPUs':>4} {'strategy':>14} {'makespan s':>11} {'bound s':>9} {'gap':>7} {'vs symoe':>8} {'plan s':>7}")
        for d in (1, 4):
            c = cfg.with_devices(d)
            rows = {}
            for s, opt_s in (("naive", 0.0), ("reference", 0.0), ("symoe", 0.0), ("symoe+polish", seconds)):  # None: default
                t = time.perf_counter()
                p = symoe.plan(a, c, aggregator=R1_LLAMA, strategy=s.split("+")[0], optimize_s=opt_s)  # type: ignore[arg-type]
                rows[s] = (p, time.perf_counter() - t)
            best = rows["symoe+polish"][0].makespan
            for s, (p, t) in rows.items():
                print(f"   {d:>4} {s:>14} {p.makespan:>11,.0f} {p.lower_bound:>9,.0f} {100 * p.gap:>6.2f}% "
                      f"{p.makespan / best:>7.2f}x {t:>7.2f}")
        c4 = cfg.with_devices(4)
        sym = symoe.plan(a, c4, aggregator=R1_LLAMA, optimize_s=seconds).makespan
        cells = []
        for eff in (0.25, 1 / 3, 0.5, 1.0):
            ref = symoe.plan(a, replace(c4, tp_efficiency=eff), aggregator=R1_LLAMA, strategy="reference").makespan
            cells.append(f"{eff:.3g}: {ref / sym:.2f}x")
        print(f"   reference / symoe on 4 GPUs by TP efficiency: {', '.join(cells)}")


def million() -> None:
    cfg = Config.bundled("paper16")
    rng = np.random.default_rng(0)
    pr = np.array([25, 20, 15, 10, 8, 6, 5, 4, 3, 2, 1, 0.4, 0.3, 0.2, 0.05, 0.05])
    a = symoe.Assignment(cfg.names, rng.choice(16, size=(1_000_000, 3), p=pr / pr.sum()))
    print("\n3. planning 1,000,000 questions x 16 experts (k=3), aggregator R1-Distill-Llama-8B")
    for d in (1, 4, 16):
        c = cfg.with_devices(d)
        times = {}
        for label, opt_s in (("heuristic", 0.0), ("default", None)):
            best = math.inf
            for _ in range(3):
                t = time.perf_counter()
                p = symoe.plan(a, c, aggregator=R1_LLAMA, optimize_s=opt_s)
                best = min(best, time.perf_counter() - t)
            times[label] = best
        print(f"   {d:>2} devices: heuristic {times['heuristic']:.3f} s, default plan {times['default']:.3f} s "
              f"(best of 3), makespan {p.makespan:,.0f} s, gap {100 * p.gap:.2f}%")


def gpqa() -> None:
    import paper_table as pt  # bench/paper_table.py: the paper's procedures replayed with the same figures

    cfg = Config.bundled("paper16_gpqa").with_devices(1)
    rows = pt.workload(rare=0.0)  # as the authors' code runs it: no rare-expert filter
    a = symoe.Assignment(cfg.names, np.array(rows))
    print(f"\n4. the paper's GPQA table (198 questions, k=3, aggregator {R1_QWEN}, one GPU), configs/paper16_gpqa.toml")
    replay = {"naive": pt.naive(pt.CHOSEN, rows).per_question(), "reference": pt.batched(pt.CHOSEN, rows).per_question()}
    for s, paper_s in (("naive", pt.PAPER_NAIVE), ("reference", pt.PAPER_BATCHED), ("symoe", None)):
        per_q = symoe.plan(a, cfg, aggregator=R1_QWEN, strategy=s, optimize_s=0).makespan / len(a)  # type: ignore[arg-type]
        ref = (f"paper {paper_s:.2f} s/question, plan {per_q / paper_s - 1:+.0%}; paper_table.py's replay "
               f"{replay[s]:.2f} ({replay[s] / paper_s - 1:+.0%})") if paper_s else ""
        print(f"   {s:>9}: {per_q:7.2f} s/question  {ref}")
    print("   (a plan reads every load cold; the replay's naive reads a model again from the page cache)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", type=int, default=300, help="tiny instances (0: skip)")
    ap.add_argument("--polish", type=float, default=None,
                    help="the polish's budget in deterministic seconds (default: plan()'s own)")
    ap.add_argument("--skip-million", action="store_true")
    args = ap.parse_args()
    if args.suite:
        suite(args.suite)
    paper(args.polish)
    if not args.skip_million:
        million()
    gpqa()


if __name__ == "__main__":
    main()
