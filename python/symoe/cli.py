"""The ``symoe`` command line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import numpy as np

from . import _core
from .errors import SymoeError
from .config import Config
from .planning import Plan, plan, save_picture
from .routing import RARE_THRESHOLD, Assignment, Profiles, route

FORMATS = ("mmlu_pro", "medmcqa", "gpqa", "aime", "jsonl")
# Checked by click before a command starts (a usage error, exit code 2).
limit_opt = click.option("--limit", type=click.IntRange(min=1), default=None, help="Use the first N questions.")
seed_opt = click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=0, show_default=True)
k_opt = click.option("-k", type=click.IntRange(1, _core.MAX_K), default=3, show_default=True,
                     help="Experts per question.")


def _table(rows: list[list[object]], header: list[str]) -> str:
    cells = [[str(h) for h in header]] + [[f"{c:,.1f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


class BadInput(click.ClickException):
    """A ValueError (SymoeError included) from a command: one line, exit code 2 like a usage error."""

    exit_code = 2


def _fail(e: Exception) -> None:
    if isinstance(e, ValueError):
        raise BadInput(" ".join(str(e).splitlines())) from e
    raise click.ClickException(str(e)) from e


def faults_opts(f):
    """--retries and the deadline of every engine call."""
    from .execution import RunOptions

    d = RunOptions()
    f = click.option("--deadline-margin", type=float, default=d.deadline_margin_s, show_default=True,
                     help="Seconds added to every engine call's deadline.")(f)
    f = click.option("--deadline-factor", type=float, default=d.deadline_factor, show_default=True,
                     help="An engine call may take this multiple of its predicted time (plus the margin).")(f)
    return click.option("--retries", type=int, default=d.retries, show_default=True,
                        help="Per step: after an engine fault, reload the model and redo what the store lacks.")(f)


def _run_options(retries, deadline_factor, deadline_margin):
    from .execution import RunOptions

    return RunOptions(deadline_factor=deadline_factor, deadline_margin_s=deadline_margin, retries=retries)


def _load_config(path: str) -> Config:
    """A TOML path, or the name of a bundled config."""
    if Path(path).exists():
        return Config.from_toml(path)
    try:
        return Config.bundled(path)
    except ValueError:
        from importlib import resources

        names = sorted(p.stem for p in Path(str(resources.files("symoe") / "configs")).glob("*.toml"))
        raise SymoeError(f"--config {path!r}: no such file, nor a bundled config ({', '.join(names)})") from None


@click.group()
@click.version_option(package_name="symoe")
def main() -> None:
    """Symbolic Mixture-of-Experts: skill-based routing, load-once planning, execution."""


def _read_questions(path: str) -> tuple[list[str], list[list[str]]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SymoeError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason})") from e
    try:
        items = json.loads(text)
        if not isinstance(items, list):
            raise ValueError
    except ValueError:
        try:
            items = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: neither a JSON array nor JSONL: {e}") from e
    ids, kws = [], []
    seen: dict[str, int] = {}
    for i, it in enumerate(items):
        if not isinstance(it, dict) or not isinstance(it.get("keywords"), list):
            raise ValueError(f"{path}: item {i} needs a 'keywords' list")
        qid = str(it.get("id", i))
        if qid in seen:
            raise SymoeError(f"{path} item {i}: duplicate question id {qid!r} (also item {seen[qid]})")
        seen[qid] = i
        ids.append(qid)
        kws.append([str(k) for k in it["keywords"]])
    return ids, kws


def print_counts(a: Assignment) -> None:
    counts = a.counts()
    total = max(1, sum(counts.values()))
    rows = [[m, n, 100.0 * n / total] for m, n in sorted(counts.items(), key=lambda x: -x[1]) if n]
    click.echo(_table(rows, ["expert", "slots", "share %"]))
    click.echo(f"{len(a)} questions x k={a.k}; {sum(1 for n in counts.values() if n)} experts used; "
               f"{a.replaced} slots reassigned by the rare-expert filter")


@main.command("route")
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
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="0: all cores.")
def route_cmd(profiles_path, questions_path, out_path, k, seed, rare_threshold, weighting, no_replace, unknown, threads):
    """Recruit k experts per question from skill profiles."""
    try:
        prof = Profiles.from_json(profiles_path)
        ids, kws = _read_questions(questions_path)
        a = route(prof, kws, k=k, seed=seed, rare_threshold=rare_threshold, weighting=weighting,
                  replace=not no_replace, threads=threads, question_ids=ids, on_unknown=unknown)
    except ValueError as e:
        _fail(e)
    a.save(out_path)
    print_counts(a)
    click.echo(f"wrote {out_path}")


def print_plans(plans: list[Plan]) -> None:
    rows = []
    for p in plans:
        m = p.metrics()
        rows.append([p.strategy, m["devices"], m["loads"], m["bytes_loaded"] / 1e9, m["predicted_makespan_s"],
                     m["lower_bound_s"], 100.0 * m["gap"], 100.0 * float(np.mean(m["utilisation"]))])
    click.echo(_table(rows, ["strategy", "devices", "loads", "GB loaded", "predicted s", "lower bound s",
                             "gap %", "util %"]))
    click.echo("(predicted by the cost model, not measured)")


@main.command("plan")
@click.option("--assignment", "assignment_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--config", "config_path", required=True,
              help="Pool config TOML (a path, or the name of a bundled config such as 'paper16').")
@click.option("--devices", type=int, default=None, help="Override the device count.")
@click.option("--memory-gb", type=float, default=None, help="Override device memory.")
@click.option("--aggregator", default=None, help="Aggregator model name (default: none).")
@click.option("--strategy", type=click.Choice(["symoe", "reference", "naive", "all"]), default="symoe", show_default=True)
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None, help="Plan JSON to write.")
@click.option("--png", "png_path", type=click.Path(dir_okay=False), default=None, help="Timeline picture to write.")
@click.option("--questions", "questions_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The assignment's dataset file: the plan records a hash of each question's text, so run-plan "
              "refuses other questions under the same ids.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None)
def plan_cmd(assignment_path, config_path, devices, memory_gb, aggregator, strategy, out_path, png_path,
             questions_path, fmt):
    """Plan an assignment on a pool and devices; print predicted timing."""
    from .datasets import load_questions

    try:
        cfg = _load_config(config_path).with_devices(devices, memory_gb)
        a = Assignment.load(assignment_path)
        hashes: tuple[str, ...] = ()
        if questions_path:
            qs = load_questions(questions_path, fmt)
            if len(qs) != len(a) or (a.question_ids and tuple(q.id for q in qs) != tuple(a.question_ids)):
                raise SymoeError(f"--questions {questions_path}: {len(qs)} questions do not match the assignment's "
                                 f"{len(a)} (the same ids, in the same order)")
            hashes = tuple(q.text_hash for q in qs)
        strategies = ["naive", "reference", "symoe"] if strategy == "all" else [strategy]
        plans = [plan(a, cfg, aggregator=aggregator, strategy=s) for s in strategies]
        for p in plans:
            p.question_hashes = hashes
    except ValueError as e:
        _fail(e)
    print_plans(plans)
    best = plans[-1]
    if out_path:
        best.to_json(out_path)
        click.echo(f"wrote {out_path}")
    if png_path:
        save_picture(best, png_path)
        click.echo(f"wrote {png_path}")


@main.command("demo")
@click.option("--devices", type=int, default=4, show_default=True)
@click.option("--png", "png_path", type=click.Path(dir_okay=False), default=None)
def demo_cmd(devices, png_path):
    """Route the bundled MMLU-Pro sample with synthetic profiles and plan it on the paper's pool."""
    from .workloads import category_keywords, skewed_profiles

    qs = json.loads(Path(_default_data("mmlu_pro_sample.json")).read_text())  # real questions
    cfg = Config.bundled("paper16")
    cats = sorted({q["category"] for q in qs})
    prof = skewed_profiles(cfg.names, cats)
    a = route(prof, category_keywords([q["category"] for q in qs]), seed=0)
    click.echo(f"routing {len(qs)} MMLU-Pro questions with SYNTHETIC profiles over the paper's 16 models")
    print_counts(a)
    for d in sorted({1, devices}):
        print_plans([plan(a, cfg.with_devices(d), aggregator=cfg.names[12], strategy=s)
                     for s in ("naive", "reference", "symoe")])
    if png_path:
        save_picture(plan(a, cfg.with_devices(devices), aggregator=cfg.names[12]), png_path)
        click.echo(f"wrote {png_path}")


@main.group("models")
def models_grp() -> None:
    """Obtain model pools."""


@models_grp.command("fetch")
@click.argument("pool", type=click.Choice(["tiny"]))
@click.option("--only", multiple=True, help="Fetch only these models of the pool.")
def models_fetch(pool, only):
    """Fetch, verify (SHA-256) and convert the tiny CPU pool into the cache; print its config path."""
    from .models import fetch_tiny

    try:
        path = fetch_tiny(list(only) or None)
    except (ValueError, RuntimeError) as e:
        _fail(e)
    click.echo(str(path))


def _sampling(temperature, max_tokens, agg_max_tokens, seed):
    from .generation import Sampling

    return Sampling(temperature, max_tokens, agg_max_tokens or max_tokens, seed)


def _paper_sampling(cfg, max_tokens, seed):
    """Temperature 0.7 as in the paper; new tokens from the option, else the config."""
    return _sampling(0.7, _max_tokens(cfg, max_tokens), None, seed)


def print_run(report, plan) -> None:
    rows = {}
    for r in report.steps:
        x = rows.setdefault(r.kind, [r.kind, 0, 0.0, 0.0, 0])
        x[1] += 1
        x[2] += r.end - r.start
        x[3] += r.predicted_end - r.predicted_start
        x[4] += r.tokens
    click.echo(_table(list(rows.values()), ["step", "count", "measured s", "predicted s", "tokens"]))
    click.echo(f"makespan: measured {report.makespan:,.1f} s, predicted {report.predicted_makespan:,.1f} s; "
               f"{report.generated} generations made, {report.reused} reused from the store")
    used = sorted({e for r in report.results for e in r.experts})
    click.echo(f"experts used: {', '.join(used)}")
    click.echo(f"accuracy: {100 * report.accuracy:.1f}% ({sum(r.correct for r in report.results)}/{len(report.results)})")


@main.command("run-plan")
@click.option("--questions", "questions_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None)
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use the first N questions (must match the plan).")
@click.option("--plan", "plan_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--assignment", "assignment_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Check the plan against this assignment.")
@click.option("--config", "config_path", default=None, help="Pool config (engine settings, model paths); "
              "default: the one stored in the plan.")
@click.option("--store", "store_path", default="runs/store.sqlite", show_default=True)
@click.option("--run-dir", default="runs/last", show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.7, show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), default=4096, show_default=True)
@click.option("--aggregate-max-tokens", type=click.IntRange(min=1), default=None)
@seed_opt
@click.option("--calibrate", "calibrate_path", default=None, help="Write measured cost figures to this TOML.")
@faults_opts
def run_plan_cmd(questions_path, fmt, limit, plan_path, assignment_path, config_path, store_path, run_dir,
                 temperature, max_tokens, aggregate_max_tokens, seed, calibrate_path, retries, deadline_factor,
                 deadline_margin):
    """Execute a plan on real engines; generations go to a durable store (resumable)."""
    from .datasets import load_questions
    from .execution import calibrate, run_plan
    from .execution.scheduler import check_plan_matches
    from .models import check_models
    from .store import Store

    try:
        qs = load_questions(questions_path, fmt, limit)
        p = Plan.from_json(plan_path)
        if config_path:
            cfg = _load_config(config_path)
            p = plan_with_config(p, cfg)
        asg = Assignment.load(assignment_path) if assignment_path else None
        rows = [asg.names(i) for i in range(len(asg))] if asg else None
        # Everything that can refuse the run, before an engine starts.
        check_plan_matches(p, qs, rows)
        check_models(p.config, [p.config.names[m] for m in np.unique(p.arrays["model"]) if m >= 0])
        with Store(store_path) as store:
            report = run_plan(p, qs, store, run_dir, _sampling(temperature, max_tokens, aggregate_max_tokens, seed), rows,
                              _run_options(retries, deadline_factor, deadline_margin))
    except (ValueError, RuntimeError) as e:
        _fail(e)
    print_run(report, p)
    click.echo(f"wrote {run_dir}/results.jsonl, run_log.jsonl, timeline_measured.png, timeline_predicted.png")
    if calibrate_path:
        Path(calibrate_path).write_text(calibrate(p.config, report).to_toml())
        click.echo(f"wrote calibrated cost figures to {calibrate_path}")


def _questions(path, fmt, limit, per_category=None):
    from .datasets import load_questions

    qs = load_questions(path, fmt)
    if per_category:
        seen: dict[str, int] = {}
        keep = []
        for q in qs:
            if seen.get(q.category, 0) < per_category:
                seen[q.category] = seen.get(q.category, 0) + 1
                keep.append(q)
        qs = keep
    return qs if limit is None else qs[:limit]


def _default_data(name):
    from .pipeline import bundled

    return str(bundled(name))


questions_opt = click.option("--questions", "questions_path", default=None,
                             help="Dataset file (default: the bundled MMLU-Pro sample).")
format_opt = click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
                          help="Dataset format (default: from the file name).")
config_opt = click.option("--config", "config_path", default="tiny", show_default=True,
                          help="Pool config: a TOML path or a bundled name (tiny, paper16).")
store_opt = click.option("--store", "store_path", default="runs/store.sqlite", show_default=True)
tokens_opt = click.option("--max-tokens", type=click.IntRange(min=1), default=None, help="New tokens per expert answer "
                          "(default: the config's [engine] max_tokens, else 4096 as in the paper).")


def _max_tokens(cfg, given):
    from .generation import Sampling

    return given if given is not None else cfg.engine.max_tokens or Sampling.max_tokens


@main.command("keywords")
@questions_opt
@format_opt
@config_opt
@store_opt
@click.option("--model", default=None, help="Keyword LLM (default: the bundled task's keyword model).")
@limit_opt
@click.option("--per-category", type=click.IntRange(min=1), default=None)
@seed_opt
@click.option("--out", "out_path", required=True, help="JSON {question id: [keywords]}.")
def keywords_cmd(questions_path, fmt, config_path, store_path, model, limit, per_category, seed, out_path):
    """Annotate questions with skill keywords (5 samples at T=0.7, filtered as the reference)."""
    from .generation import Sampling
    from .keywords import annotate
    from .models import check_models
    from .pipeline import Task
    from .store import Store

    try:
        cfg = _load_config(config_path)
        qs = _questions(questions_path or _default_data("mmlu_pro_sample.json"), fmt, limit, per_category)
        model = model or Task.from_json(_default_data("tiny_task.json")).keyword_model
        check_models(cfg, [model])
        with Store(store_path) as store:
            kws = annotate(qs, cfg, model, store, Path(out_path).parent, Sampling(seed=seed))
    except (ValueError, RuntimeError) as e:
        _fail(e)
    Path(out_path).write_text(json.dumps(kws, indent=1))
    empty = sum(1 for v in kws.values() if not v)
    click.echo(f"{len(kws)} questions annotated ({empty} without keywords); wrote {out_path}")


@main.command("profile")
@questions_opt
@format_opt
@config_opt
@store_opt
@click.option("--keywords", "keywords_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Keywords of the validation questions (from `symoe keywords`).")
@limit_opt
@click.option("--per-category", type=click.IntRange(min=1), default=None)
@tokens_opt
@seed_opt
@click.option("--out", "out_path", required=True, help="Profiles JSON {profiles, accuracy}.")
@click.option("--records", "records_path", required=True, help="Graded profiling generations (JSONL).")
def profile_cmd(questions_path, fmt, config_path, store_path, keywords_path, limit, per_category, max_tokens, seed,
                out_path, records_path):
    """Profile every pool model on the validation split."""
    from .models import check_models
    from .profiling import profile_pool, save_records
    from .store import Store

    try:
        cfg = _load_config(config_path)
        if not questions_path:
            raise ValueError("--questions: give the validation split (e.g. MMLU_Pro_train.json)")
        qs = _questions(questions_path, fmt, limit, per_category)
        try:
            kws = json.loads(Path(keywords_path).read_text(encoding="utf-8"))
        except ValueError as e:  # JSON or UTF-8
            raise SymoeError(f"--keywords {keywords_path} is not a valid JSON file: {e}") from e
        check_models(cfg, cfg.names)
        with Store(store_path) as store:
            prof, records = profile_pool(qs, kws, cfg, store, Path(out_path).parent, _paper_sampling(cfg, max_tokens, seed))
    except (ValueError, RuntimeError) as e:
        _fail(e)
    prof.save(out_path)
    save_records(records, records_path)
    rows = [[m, 100.0 * prof.accuracy[m], len(prof.to_dict()[m])] for m in prof.models]
    click.echo(_table(rows, ["model", "validation accuracy %", "keywords"]))
    click.echo(f"wrote {out_path} and {records_path}")


@main.command("select-aggregator")
@questions_opt
@format_opt
@config_opt
@store_opt
@click.option("--records", "records_path", required=True, type=click.Path(exists=True, dir_okay=False))
@limit_opt
@click.option("--per-category", type=click.IntRange(min=1), default=None)
@tokens_opt
@seed_opt
@click.option("--task", "task_name", default="mmlu_pro", show_default=True)
@click.option("--keyword-model", default=None, help="Recorded in the task config (default: the pool's first model).")
@click.option("--out", "out_path", required=True, help="Task config JSON to write.")
def select_aggregator_cmd(questions_path, fmt, config_path, store_path, records_path, limit, per_category, max_tokens,
                          seed, task_name, keyword_model, out_path):
    """Evaluate every candidate aggregator on the synthetic benchmark; keep the best."""
    from .aggregator import select_aggregator
    from .models import check_models
    from .pipeline import Task
    from .profiling import load_records
    from .store import Store

    try:
        cfg = _load_config(config_path)
        if not questions_path:
            raise ValueError("--questions: give the validation split used for profiling")
        qs = _questions(questions_path, fmt, limit, per_category)
        records = load_records(records_path)
        check_models(cfg, cfg.names)
        with Store(store_path) as store:
            best, table = select_aggregator(qs, records, cfg, store, Path(out_path).parent,
                                            _paper_sampling(cfg, max_tokens, seed))
    except (ValueError, RuntimeError) as e:
        _fail(e)
    click.echo(_table([[m, 100.0 * a, "<- selected" if m == best else ""] for m, a in table.items()],
                      ["candidate", "synthetic-benchmark accuracy %", ""]))
    Task(task_name, best, keyword_model or cfg.names[0], table,
         f"selected on {len(qs)} validation questions of {Path(questions_path).name}").save(out_path)
    click.echo(f"wrote {out_path}")


@main.command("run")
@questions_opt
@format_opt
@config_opt
@store_opt
@click.option("--profiles", "profiles_path", default=None, help="Profiles JSON (default: the bundled tiny-pool profiles).")
@click.option("--task", "task_path", default=None, help="Task config JSON (default: the bundled one).")
@limit_opt
@k_opt
@seed_opt
@click.option("--preset", type=click.Choice(["symoe", "reference"]), default="symoe", show_default=True,
              help="reference: the authors' code's choices (rare-expert filter off); see README.")
@click.option("--rare-threshold", type=float, default=None,
              help=f"Rare-expert filter share, 0 disables it (default: the preset's; symoe {RARE_THRESHOLD}, reference 0).")
@click.option("--similarity-floor", type=float, default=None, help="Drop test keywords whose best match is below this.")
@click.option("--baseline", type=click.Choice(["none", "single-best", "top-k", "random", "majority", "self-moa", "oracle"]),
              default="none", show_default=True,
              help="Run an ablation instead of Symbolic-MoE (reuses the store). self-moa: the best profiled model "
                   "sampled k times, then the aggregator; oracle: right if any recruited expert is right (from the "
                   "store's expert answers of a finished Symbolic-MoE run, nothing generated).")
@click.option("--skip-agreed", is_flag=True, help="Experts first; where all k answers agree that answer is final "
              "and no aggregation is planned for the question.")
@click.option("--devices", type=int, default=None)
@tokens_opt
@click.option("--out", "out_dir", default="runs/default", show_default=True)
@faults_opts
def run_cmd(questions_path, fmt, config_path, store_path, profiles_path, task_path, limit, k, seed, preset,
            rare_threshold, similarity_floor, baseline, skip_agreed, devices, max_tokens, out_dir, retries, deadline_factor,
            deadline_margin):
    """The whole Symbolic-MoE pipeline on real models (default: bundled MMLU-Pro sample, tiny pool)."""
    from .pipeline import Task, run_pipeline
    from .store import Store

    try:
        cfg = _load_config(config_path).with_devices(devices)
        qs = _questions(questions_path or _default_data("mmlu_pro_sample.json"), fmt, limit)
        prof = Profiles.from_json(profiles_path or _default_data("tiny_profiles.json"))
        task = Task.from_json(task_path or _default_data("tiny_task.json"))
        sampling = _paper_sampling(cfg, max_tokens, seed)
        if config_path == "tiny":
            from .models import fetch_tiny

            fetch_tiny()  # instant when the cache is valid
        t0 = time.perf_counter()
        with Store(store_path) as store:
            res = run_pipeline(qs, cfg, prof, task, store, out_dir, sampling, k, seed, rare_threshold, baseline,
                               similarity_floor, _run_options(retries, deadline_factor, deadline_margin), skip_agreed,
                               preset=preset)
        wall = time.perf_counter() - t0
    except (ValueError, RuntimeError) as e:
        _fail(e)
    from .pipeline import NO_AGGREGATOR

    click.echo(f"\n{len(qs)} questions, baseline={baseline}, aggregator="
               f"{task.aggregator if baseline not in NO_AGGREGATOR else '(none)'}")
    print_counts(res.assignment)
    if baseline == "oracle":
        click.echo(f"oracle accuracy (any recruited expert right): {100 * res.report.accuracy:.1f}%")
    else:
        print_run(res.report, res.plan)
    if skip_agreed:
        click.echo(f"aggregations skipped (all {k} experts agreed): {res.aggregations_skipped} of {len(qs)} questions")
    click.echo(_table([[k2, v] for k2, v in res.stage_seconds.items()] + [["total", wall]], ["stage", "seconds"]))
    click.echo(f"wrote {out_dir}/results.jsonl, summary.json, run/timeline_measured.png")


@main.command("export")
@questions_opt
@format_opt
@store_opt
@click.option("--out", "out_path", required=True, help="JSONL to write (one line per stored generation).")
def export_cmd(questions_path, fmt, store_path, out_path):
    """Every stored generation as JSONL: question, model, role, slot, text, extracted answer, correct,
    tokens (graded against --questions; generations of other questions carry no verdict)."""
    from .evaluation import export_rows
    from .store import Store

    try:
        qs = _questions(questions_path or _default_data("mmlu_pro_sample.json"), fmt, None)
        if not Path(store_path).exists():
            raise SymoeError(f"--store {store_path}: no such file")
        n = 0
        with Store(store_path) as store, open(out_path, "w") as f:
            for row in export_rows(store, qs):
                f.write(json.dumps(row) + "\n")
                n += 1
    except (ValueError, RuntimeError, OSError) as e:
        if isinstance(e, ValueError):
            Path(out_path).unlink(missing_ok=True)
        _fail(e)
    click.echo(f"{n} generations; wrote {out_path}")


@main.command("regrade")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@questions_opt
@format_opt
@store_opt
def regrade_cmd(run_dir, questions_path, fmt, store_path):
    """Grade a finished run again from the store with the current extractor (no generation);
    rewrites RUN_DIR/results.jsonl and the accuracy in summary.json."""
    from .evaluation import regrade
    from .store import Store

    try:
        qs = _questions(questions_path or _default_data("mmlu_pro_sample.json"), fmt, None)
        if not Path(store_path).exists():
            raise SymoeError(f"--store {store_path}: no such file")
        with Store(store_path) as store:
            g = regrade(run_dir, qs, store)
    except (ValueError, RuntimeError) as e:
        _fail(e)
    click.echo(f"{g.questions} questions re-graded: accuracy {100 * g.accuracy_before:.1f}% -> "
               f"{100 * g.accuracy_after:.1f}%; {len(g.changed)} verdicts changed"
               + (f" ({', '.join(g.changed[:10])}{', ...' if len(g.changed) > 10 else ''})" if g.changed else ""))


@main.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a markdown table.")
@click.option("--png", "png_path", default=None, help="Write a chart: accuracy (95% CI) and tokens per question.")
def report_cmd(run_dirs, as_json, png_path):
    """Runs side by side: accuracy with a 95% bootstrap interval, per-category accuracy, model calls
    and generated tokens per question, wall time, loads (runs over the same questions only)."""
    from . import evaluation

    try:
        rows = evaluation.load_runs(run_dirs)
        if png_path:
            evaluation.chart(rows, png_path)
    except (ValueError, RuntimeError) as e:
        _fail(e)
    click.echo(evaluation.as_json(rows) if as_json else evaluation.markdown(rows))


@main.group("bench")
def bench_grp() -> None:
    """Measurements on this machine."""


@bench_grp.command("load")
@click.option("--config", "config_path", default="tiny", show_default=True)
@click.option("--model", "models", multiple=True, help="Models to measure (default: all in the config).")
@click.option("--batch", "batches", multiple=True, type=int, default=(1, 4, 16), show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--out", "out_path", default=None, help="Write the measurements as JSON.")
def bench_load_cmd(config_path, models, batches, max_tokens, out_path):
    """Per model: load, first token, throughput by batch size, unload; raw file-read bandwidth."""
    from .loadbench import bench_model
    from .models import check_models

    try:
        cfg = _load_config(config_path)
        check_models(cfg, models or cfg.names)
        rows = [bench_model(cfg, m, tuple(batches), max_tokens) for m in (models or cfg.names)]
    except (ValueError, RuntimeError) as e:
        _fail(e)
    table = []
    for r in rows:
        tput = "  ".join(f"b{b['batch']}:{b['tokens_per_s']:.0f}" for b in r["batches"])
        ft = r["batches"][0]["first_token_s"] if r["batches"] else None
        fr = r.get("file_read", {})
        table.append([r["model"], r["load_s"], ft or 0.0, tput, r["unload_s"], fr.get("gbps", float("nan")),
                      r.get("h2d_gbps") or float("nan")])
    click.echo(_table(table, ["model", "load s", "first token s", "tokens/s by batch", "unload s", "file read GB/s",
                              "H2D GB/s"]))
    if out_path:
        Path(out_path).write_text(json.dumps(rows, indent=1))


def plan_with_config(p: Plan, cfg: Config) -> Plan:
    """The same steps with another config's engine settings and paths (same models, same devices)."""
    if cfg.names != p.config.names or len(cfg.devices) != len(p.config.devices):
        raise ValueError("config does not match the plan: models or device count differ")
    from dataclasses import replace as _replace

    from .planning import simulate

    q = _replace(p, config=cfg)
    q.timeline = simulate(q)
    return q


def _terminate_as_interrupt() -> None:
    """SIGTERM stops a run like Ctrl-C: engines killed, every finished generation kept."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def cli() -> None:
    """Entry point: interrupts end with a one-line message and exit code 130; rerunning resumes."""
    _terminate_as_interrupt()
    try:
        main(standalone_mode=False)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted: finished generations are kept in the store; rerun the same command to resume",
                   err=True)
        sys.exit(130)


if __name__ == "__main__":
    cli()
