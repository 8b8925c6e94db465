"""``symoe route``, ``symoe plan``, ``symoe demo``: routing and planning without any model."""

from __future__ import annotations

import click
import numpy as np

from ..config import profile
from ..config.pool import Config
from ..config.presets import RARE_THRESHOLD
from ..errors import SymoeError
from ..method.datasets import bundled, load_keyword_file, load_questions
from ..method.routing import Assignment, Profiles, route
from ..planning.plan import Plan, save_picture
from ..planning.planner import plan
from .common import fail, format_opt, k_opt, questions_opt, seed_opt, table


def print_counts(a: Assignment) -> None:
    """Slots per expert of an assignment."""
    counts = a.counts()
    total = max(1, sum(counts.values()))
    table([[m, n, 100.0 * n / total] for m, n in sorted(counts.items(), key=lambda x: -x[1]) if n],
          ["expert", "slots", "share %"])
    click.echo(f"{len(a)} questions x k={a.k}; {sum(1 for n in counts.values() if n)} experts used; "
               f"{a.replaced} slots reassigned by the rare-expert filter")


def print_plans(plans: list[Plan]) -> None:
    """Predicted figures of plans side by side."""
    rows = []
    for p in plans:
        m = p.metrics()
        rows.append([p.strategy, m["devices"], m["loads"], m["bytes_loaded"] / 1e9, m["predicted_makespan_s"],
                     m["lower_bound_s"], 100.0 * m["gap"], 100.0 * float(np.mean(m["utilisation"]))])
    table(rows, ["strategy", "devices", "loads", "GB loaded", "predicted s", "lower bound s", "gap %", "util %"])
    click.echo("(predicted by the cost model, not measured)")


@click.command("route")
@click.option("--profiles", "profiles_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="JSON {model: {keyword: score}} (or {profiles, accuracy}).")
@click.option("--questions", "questions_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="JSON array or JSONL of {id, keywords: [...]} (keywords in the profile vocabulary).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Assignment JSONL to write.")
@k_opt
@seed_opt
@click.option("--rare-threshold", default=RARE_THRESHOLD, show_default=True, help="Rare-expert filter share (0 disables).")
@click.option("--weighting", type=click.Choice(["reference", "softmax"]), default="reference", show_default=True)
@click.option("--no-replace", is_flag=True, help="Sample experts without replacement.")
@click.option("--unknown", type=click.Choice(["error", "drop"]), default="error", show_default=True,
              help="What to do with keywords outside the profile vocabulary.")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True, help="0: all cores.")
def route_cmd(profiles_path: str, questions_path: str, out_path: str, k: int, seed: int, rare_threshold: float,
              weighting: str, no_replace: bool, unknown: str, threads: int) -> None:
    """Recruit k experts per question from skill profiles."""
    try:
        prof = Profiles.from_json(profiles_path)
        ids, kws = load_keyword_file(questions_path)
        a = route(prof, kws, k=k, seed=seed, rare_threshold=rare_threshold, weighting=weighting,  # type: ignore[arg-type]
                  replace=not no_replace, threads=threads, question_ids=ids, on_unknown=unknown)  # type: ignore[arg-type]
    except ValueError as e:
        fail(e)
    a.save(out_path)
    print_counts(a)
    click.echo(f"wrote {out_path}")


@click.command("plan")
@click.option("--assignment", "assignment_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--config", "config_path", required=True,
              help="Pool config TOML (a path, or the name of a bundled config such as 'paper16').")
@click.option("--devices", type=int, default=None, help="Override the device count.")
@click.option("--memory-gb", type=float, default=None, help="Override device memory.")
@click.option("--aggregator", default=None, help="Aggregator model name (default: none).")
@click.option("--strategy", type=click.Choice(["symoe", "reference", "naive", "all"]), default="symoe", show_default=True)
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None, help="Plan JSON to write.")
@click.option("--png", "png_path", type=click.Path(dir_okay=False), default=None, help="Timeline picture to write.")
@questions_opt  # the assignment's questions: the plan records a hash of each text, so run-plan refuses others
@format_opt
@click.option("--optimize", "optimize_s", type=click.FloatRange(min=0), default=None,
              help="The constraint solver's budget (deterministic seconds, reproducible) to polish the symoe plan "
              "and prove its optimality gap; 0: the heuristic plan alone. Default: 0.02% of the predicted "
              "makespan, at most 0.5, where the heuristic is not proven within 1%.")
def plan_cmd(assignment_path: str, config_path: str, devices: int | None, memory_gb: float | None,
             aggregator: str | None, strategy: str, out_path: str | None, png_path: str | None,
             questions_path: str | None, fmt: str | None, optimize_s: float | None) -> None:
    """Plan an assignment on a pool and devices; print predicted timing."""
    try:
        cfg, note = profile.apply(Config.load(config_path).with_devices(devices, memory_gb))  # this machine's figures
        click.echo(note)
        a = Assignment.load(assignment_path)
        hashes: tuple[str, ...] = ()
        if questions_path:
            qs = load_questions(questions_path, fmt)  # type: ignore[arg-type]
            if len(qs) != len(a) or (a.question_ids and tuple(q.id for q in qs) != tuple(a.question_ids)):
                raise SymoeError(f"--questions {questions_path}: {len(qs)} questions do not match the assignment's "
                                 f"{len(a)} (the same ids, in the same order)")
            hashes = tuple(q.text_hash for q in qs)
        strategies = ["naive", "reference", "symoe"] if strategy == "all" else [strategy]
        plans = [plan(a, cfg, aggregator=aggregator, strategy=s, optimize_s=optimize_s)  # type: ignore[arg-type]
                 for s in strategies]
        for p in plans:
            p.question_hashes = hashes
    except ValueError as e:
        fail(e)
    print_plans(plans)
    best = plans[-1]
    if out_path:
        best.to_json(out_path)
        click.echo(f"wrote {out_path}")
    if png_path:
        save_picture(best, png_path)
        click.echo(f"wrote {png_path}")


@click.command("demo")
@click.option("--devices", type=int, default=4, show_default=True)
@click.option("--png", "png_path", type=click.Path(dir_okay=False), default=None)
def demo_cmd(devices: int, png_path: str | None) -> None:
    """Route the bundled MMLU-Pro sample with synthetic profiles and plan it on the paper's pool."""
    from ..method.workloads import category_keywords, skewed_profiles
    from ..pipeline import Task

    qs = load_questions(bundled("mmlu_pro_sample.json"))  # real questions
    cfg = Config.bundled("paper16")
    aggregator = Task.from_json(bundled("paper16_task_mmlu_pro.json")).aggregator  # the paper's for MMLU-Pro
    cats = sorted({q.category for q in qs})
    prof = skewed_profiles(cfg.names, cats)
    a = route(prof, category_keywords([q.category for q in qs]), seed=0)
    click.echo(f"routing {len(qs)} MMLU-Pro questions with SYNTHETIC profiles over the paper's 16 models")
    print_counts(a)
    for d in sorted({1, devices}):
        print_plans([plan(a, cfg.with_devices(d), aggregator=aggregator, strategy=s)
                     for s in ("naive", "reference", "symoe")])
    if png_path:
        save_picture(plan(a, cfg.with_devices(devices), aggregator=aggregator), png_path)
        click.echo(f"wrote {png_path}")
