"""``symoe export``, ``symoe regrade``, ``symoe report``: finished runs, read from the store."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import SymoeError
from .common import fail, format_opt, questions, questions_opt, store_opt


def _existing_store(path: str) -> str:
    if not Path(path).exists():
        raise SymoeError(f"--store {path}: no such file")
    return path


@click.command("export")
@questions_opt
@format_opt
@store_opt
@click.option("--out", "out_path", required=True, help="JSONL to write (one line per stored generation).")
def export_cmd(questions_path: str | None, fmt: str | None, store_path: str, out_path: str) -> None:
    """Every stored generation as JSONL: question, model, role, slot, text, extracted answer, correct,
    tokens (graded against --questions; generations of other questions carry no verdict)."""
    from ..evaluation.from_store import export_rows
    from ..store import Store

    try:
        qs = questions(questions_path, fmt)
        n = 0
        with Store(_existing_store(store_path)) as store, open(out_path, "w") as f:
            for row in export_rows(store, qs):
                f.write(json.dumps(row) + "\n")
                n += 1
    except (ValueError, RuntimeError, OSError) as e:
        if isinstance(e, ValueError):
            Path(out_path).unlink(missing_ok=True)
        fail(e)
    click.echo(f"{n} generations; wrote {out_path}")


@click.command("regrade")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@questions_opt
@format_opt
@store_opt
def regrade_cmd(run_dir: str, questions_path: str | None, fmt: str | None, store_path: str) -> None:
    """Grade a finished run again from the store with the current extractor (no generation);
    rewrites RUN_DIR/results.jsonl and the accuracy in summary.json."""
    from ..evaluation.from_store import regrade
    from ..store import Store

    try:
        qs = questions(questions_path, fmt)
        with Store(_existing_store(store_path)) as store:
            g = regrade(run_dir, qs, store)
    except (ValueError, RuntimeError) as e:
        fail(e)
    click.echo(f"{g.questions} questions re-graded: accuracy {100 * g.accuracy_before:.1f}% -> "
               f"{100 * g.accuracy_after:.1f}%; {len(g.changed)} verdicts changed"
               + (f" ({', '.join(g.changed[:10])}{', ...' if len(g.changed) > 10 else ''})" if g.changed else ""))


@click.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a markdown table.")
@click.option("--png", "png_path", default=None, help="Write a chart: accuracy (95% CI) and tokens per question.")
def report_cmd(run_dirs: tuple[str, ...], as_json: bool, png_path: str | None) -> None:
    """Runs side by side: accuracy with a 95% bootstrap interval, per-category accuracy, model calls
    and generated tokens per question, wall time, loads (runs over the same questions only)."""
    from ..evaluation import comparison

    try:
        rows = comparison.load_runs(run_dirs)
        if png_path:
            comparison.chart(rows, png_path)
    except (ValueError, RuntimeError) as e:
        fail(e)
    click.echo(comparison.as_json(rows) if as_json else comparison.markdown(rows))
