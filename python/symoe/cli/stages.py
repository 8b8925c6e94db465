"""The pipeline's preparation stages one at a time: keywords, profiles, aggregator selection."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..config.pool import Config
from ..errors import SymoeError
from ..execution.launch import stage_engine
from ..generation import Sampling
from ..pipeline import Task
from .common import (
    config_opt,
    fail,
    format_opt,
    limit_opt,
    per_category_opt,
    questions,
    questions_opt,
    seed_opt,
    store_opt,
    table,
    tokens_opt,
    validation_questions_opt,
)


@click.command("keywords")
@questions_opt
@format_opt
@config_opt
@store_opt
@click.option("--model", default=None, help="Keyword LLM (default: the bundled task's keyword model).")
@limit_opt
@per_category_opt
@seed_opt
@click.option("--out", "out_path", required=True, help="JSON {question id: [keywords]}.")
def keywords_cmd(questions_path: str | None, fmt: str | None, config_path: str, store_path: str, model: str | None,
                 limit: int | None, per_category: int | None, seed: int, out_path: str) -> None:
    """Annotate questions with skill keywords (5 samples at T=0.7, filtered as the reference)."""
    from ..method.datasets import bundled
    from ..method.keywords import annotate
    from ..models.fetch import check_models, provide
    from ..store import Store

    try:
        cfg = Config.load(config_path)
        qs = questions(questions_path, fmt, limit, per_category)
        model = model or Task.from_json(bundled("tiny_task.json")).keyword_model
        provide(cfg, [model])
        check_models(cfg, [model])
        with Store(store_path) as store:
            kws = annotate(qs, cfg, model, store, stage_engine(cfg, Path(out_path).parent / "logs"), Sampling(seed=seed))
    except (ValueError, RuntimeError) as e:
        fail(e)
    Path(out_path).write_text(json.dumps(kws, indent=1))
    empty = sum(1 for v in kws.values() if not v)
    click.echo(f"{len(kws)} questions annotated ({empty} without keywords); wrote {out_path}")


@click.command("profile")
@validation_questions_opt
@format_opt
@config_opt
@store_opt
@click.option("--keywords", "keywords_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Keywords of the validation questions (from `symoe keywords`).")
@limit_opt
@per_category_opt
@tokens_opt
@seed_opt
@click.option("--out", "out_path", required=True, help="Profiles JSON {profiles, accuracy}.")
@click.option("--records", "records_path", required=True, help="Graded profiling generations (JSONL).")
def profile_cmd(questions_path: str | None, fmt: str | None, config_path: str, store_path: str, keywords_path: str,
                limit: int | None, per_category: int | None, max_tokens: int | None, seed: int, out_path: str,
                records_path: str) -> None:
    """Profile every pool model on the validation split."""
    from ..method.profiling import profile_pool, save_records
    from ..models.fetch import check_models, provide
    from ..store import Store

    try:
        cfg = Config.load(config_path)
        if not questions_path:
            raise ValueError("--questions: give the validation split (e.g. MMLU_Pro_train.json)")
        qs = questions(questions_path, fmt, limit, per_category)
        try:
            kws = json.loads(Path(keywords_path).read_text(encoding="utf-8"))
        except ValueError as e:  # JSON or UTF-8
            raise SymoeError(f"--keywords {keywords_path} is not a valid JSON file: {e}") from e
        provide(cfg, cfg.names)
        check_models(cfg, cfg.names)
        with Store(store_path) as store:
            prof, records = profile_pool(qs, kws, cfg, store, stage_engine(cfg, Path(out_path).parent / "logs"),
                                         Sampling.for_pool(cfg, max_tokens, seed))
    except (ValueError, RuntimeError) as e:
        fail(e)
    prof.save(out_path)
    save_records(records, records_path)
    table([[m, 100.0 * prof.accuracy[m], len(prof.to_dict()[m])] for m in prof.models],
          ["model", "validation accuracy %", "keywords"])
    click.echo(f"wrote {out_path} and {records_path}")


@click.command("select-aggregator")
@validation_questions_opt
@format_opt
@config_opt
@store_opt
@click.option("--records", "records_path", required=True, type=click.Path(exists=True, dir_okay=False))
@limit_opt
@per_category_opt
@tokens_opt
@seed_opt
@click.option("--task", "task_name", default="mmlu_pro", show_default=True)
@click.option("--keyword-model", default=None, help="Recorded in the task config (default: the pool's first model).")
@click.option("--out", "out_path", required=True, help="Task config JSON to write.")
def select_aggregator_cmd(questions_path: str | None, fmt: str | None, config_path: str, store_path: str,
                          records_path: str, limit: int | None, per_category: int | None, max_tokens: int | None,
                          seed: int, task_name: str, keyword_model: str | None, out_path: str) -> None:
    """Evaluate every candidate aggregator on the synthetic benchmark; keep the best."""
    from ..method.aggregator import select_aggregator
    from ..method.profiling import load_records
    from ..models.fetch import check_models, provide
    from ..store import Store

    try:
        cfg = Config.load(config_path)
        if not questions_path:
            raise ValueError("--questions: give the validation split used for profiling")
        qs = questions(questions_path, fmt, limit, per_category)
        records = load_records(records_path)
        provide(cfg, cfg.names)
        check_models(cfg, cfg.names)
        with Store(store_path) as store:
            best, scores = select_aggregator(qs, records, cfg, store, stage_engine(cfg, Path(out_path).parent / "logs"),
                                             Sampling.for_pool(cfg, max_tokens, seed))
    except (ValueError, RuntimeError) as e:
        fail(e)
    table([[m, 100.0 * a, "<- selected" if m == best else ""] for m, a in scores.items()],
          ["candidate", "synthetic-benchmark accuracy %", ""])
    Task(task_name, best, keyword_model or cfg.names[0], scores,
         f"selected on {len(qs)} validation questions of {Path(questions_path).name}").save(out_path)
    click.echo(f"wrote {out_path}")
