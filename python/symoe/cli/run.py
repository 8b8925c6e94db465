"""``symoe run`` (the whole method) and ``symoe run-plan`` (a saved plan on real engines)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..config.pool import Config
from ..execution import RunReport
from ..execution.prediction import comparison_rows, forecast_line
from ..generation import Sampling
from ..method.routing import Assignment
from ..pipeline import NO_AGGREGATOR
from ..planning.plan import Plan
from .common import (
    SettingsFor,
    config_opt,
    fail,
    fake_opt,
    faults_opts,
    format_opt,
    launch_of,
    limit_opt,
    questions,
    questions_opt,
    run_options,
    seed_opt,
    settings_opts,
    store_opt,
    table,
)
from .plans import print_counts


def print_run(report: RunReport) -> None:
    """Measured vs predicted time per step kind, and the accuracy."""
    rows: dict[str, list[Any]] = {}
    for r in report.steps:
        x = rows.setdefault(r.kind.label, [r.kind.label, 0, 0.0, 0.0, 0])
        x[1] += 1
        x[2] += r.end - r.start
        x[3] += r.predicted_end - r.predicted_start
        x[4] += r.tokens
    table(list(rows.values()), ["step", "count", "measured s", "predicted s", "tokens"])
    click.echo(f"makespan (last result): measured {report.makespan:,.1f} s, predicted {report.predicted_makespan:,.1f} s; "
               f"finished (unloads included) at {report.finish:,.1f} s")
    click.echo(f"{report.generated} generations made, {report.reused} reused from the store")
    click.echo(f"experts used: {', '.join(sorted({e for r in report.results for e in r.experts}))}")
    click.echo(f"accuracy: {100 * report.accuracy:.1f}% ({sum(r.correct for r in report.results)}/{len(report.results)})")


@click.command("run")
@questions_opt
@format_opt
@config_opt
@store_opt
@click.option("--profiles", "profiles_path", default=None, help="Profiles JSON (default: the bundled tiny-pool profiles).")
@click.option("--task", "task_path", default=None, help="Task config JSON (default: the bundled one).")
@limit_opt
@click.option("--devices", type=int, default=None)
@click.option("--out", "out_dir", default="runs/default", show_default=True)
@settings_opts
@fake_opt
def run_cmd(questions_path: str | None, fmt: str | None, config_path: str, store_path: str, profiles_path: str | None,
            task_path: str | None, limit: int | None, devices: int | None, out_dir: str, settings: SettingsFor,
            fake_scale: float | None) -> None:
    """The whole Symbolic-MoE pipeline on real models (default: bundled MMLU-Pro sample, tiny pool)."""
    from ..method.datasets import bundled
    from ..moe import SymbolicMoE

    try:
        cfg = Config.load(config_path).with_devices(devices)
        s = settings(cfg)  # every option checked before anything loads or is predicted
        qs = questions(questions_path, fmt, limit)
        moe = SymbolicMoE(cfg, profiles_path or bundled("tiny_profiles.json"), task_path or bundled("tiny_task.json"),
                          store=store_path, settings=s, launch=launch_of(fake_scale))
        click.echo(moe.cost_note)  # which figures came from this machine's profile, which from the config
        click.echo(forecast_line(moe.forecast(qs, out_dir)))  # the whole run predicted before anything loads; run reuses it
        t0 = time.perf_counter()
        res = moe.run(qs, out_dir, s.baseline, s.skip_agreed, s.optimize_s)
        wall = time.perf_counter() - t0
    except (ValueError, RuntimeError) as e:
        fail(e)
    baseline = s.baseline
    click.echo(f"\n{len(qs)} questions, baseline={baseline}, aggregator="
               f"{moe.task.aggregator if baseline not in NO_AGGREGATOR else '(none)'}")
    print_counts(res.assignment)
    if baseline == "oracle":
        click.echo(f"oracle accuracy (any recruited expert right): {100 * res.report.accuracy:.1f}%")
    else:
        print_run(res.report)
    if s.skip_agreed:
        click.echo(f"aggregations skipped (all {s.k} experts agreed): {res.aggregations_skipped} of {len(qs)} questions")
    if res.prediction is not None:
        table(comparison_rows(res.prediction), ["stage", "forecast s", "predicted s", "measured s"])
    click.echo(f"total {wall:,.1f} s (imports excluded)")
    click.echo(f"wrote {out_dir}/results.jsonl, summary.json, run/timeline_measured.png")


@click.command("run-plan")
@questions_opt
@format_opt
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use the first N questions (must match the plan).")
@click.option("--plan", "plan_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--assignment", "assignment_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Check the plan against this assignment.")
@click.option("--config", "config_path", default=None, help="Pool config (engine settings, model paths); "
              "default: the one stored in the plan.")
@store_opt
@click.option("--run-dir", default="runs/last", show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=Sampling.temperature, show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), default=Sampling.max_tokens, show_default=True)
@click.option("--aggregate-max-tokens", type=click.IntRange(min=1), default=None)
@seed_opt
@click.option("--calibrate", "calibrate_path", default=None, help="Write measured cost figures to this TOML.")
@faults_opts
def run_plan_cmd(questions_path: str | None, fmt: str | None, limit: int | None, plan_path: str,
                 assignment_path: str | None, config_path: str | None, store_path: str, run_dir: str,
                 temperature: float, max_tokens: int, aggregate_max_tokens: int | None, seed: int,
                 calibrate_path: str | None, retries: int, deadline_factor: float, deadline_margin: float) -> None:
    """Execute a plan on real engines; generations go to a durable store (resumable)."""
    from ..execution import calibrate, run_plan
    from ..execution.run import check_plan_matches
    from ..models.fetch import check_models
    from ..moe import observe_or_warn
    from ..store import Store

    try:
        if not questions_path:
            raise click.UsageError("run-plan needs the plan's questions: --questions FILE or --dataset NAME")
        qs = questions(questions_path, fmt, limit)
        p = Plan.from_json(plan_path)
        if config_path:
            p = p.with_config(Config.load(config_path))
        asg = Assignment.load(assignment_path) if assignment_path else None
        rows = [asg.names(i) for i in range(len(asg))] if asg else None
        # Everything that can refuse the run, before an engine starts.
        check_plan_matches(p, qs, rows)
        check_models(p.config, [p.config.names[m] for m in np.unique(p.arrays.model) if m >= 0])
        sampling = Sampling(temperature, max_tokens, aggregate_max_tokens or max_tokens, seed)
        with Store(store_path) as store:
            report = run_plan(p, qs, store, run_dir, sampling, rows, run_options(retries, deadline_factor,
                                                                                 deadline_margin))
            if p.config.cluster is None:  # the next prediction on this machine uses what it saw (not a cluster's)
                observe_or_warn(p.config, report, store)
    except (ValueError, RuntimeError) as e:
        fail(e)
    print_run(report)
    click.echo(f"wrote {run_dir}/results.jsonl, run_log.jsonl, timeline_measured.png, timeline_predicted.png")
    if calibrate_path:
        with Store(store_path) as store:  # every measured length of the pool's models, reused ones too
            Path(calibrate_path).write_text(calibrate(p.config, report, store).to_toml())
        click.echo(f"wrote calibrated cost figures to {calibrate_path}")
