"""What every command group shares: options, error handling, tables."""

from __future__ import annotations

import functools
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from rich import box
from rich.console import Console
from rich.table import Table

from .. import _core
from ..config.presets import PRESETS, RARE_THRESHOLD
from ..execution import RunOptions
from ..execution.launch import Launch
from ..execution.settings import BASELINES, RunSettings
from ..generation.fake import ScaledClock
from ..method.datasets import DATASETS, SPLITS, Format, Question, bundled, dataset_path, load_questions, select

if TYPE_CHECKING:
    from ..config.pool import Config

F = TypeVar("F", bound=Callable[..., Any])
SettingsFor = Callable[["Config"], RunSettings]  # a run's settings once its pool is loaded (max_tokens' default)
FORMATS = Format.__args__  # type: ignore[attr-defined]

# Checked by click before a command starts (a usage error, exit code 2).
limit_opt = click.option("--limit", type=click.IntRange(min=1), default=None, help="Use the first N questions.")
per_category_opt = click.option("--per-category", type=click.IntRange(min=1), default=None,
                                help="Use the first N questions of each category.")
seed_opt = click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=0, show_default=True)
k_opt = click.option("-k", type=click.IntRange(1, _core.MAX_K), default=3, show_default=True,
                     help="Experts per question.")


def questions_from(split: str) -> Callable[[F], F]:
    """``--questions FILE`` or ``--dataset NAME [--split SPLIT]`` (a bundled benchmark), folded into
    the command's ``questions_path``, so commands see one path. ``split``: the default split
    (validation for the stages that profile models, so a test split is never profiled by accident)."""
    default = split  # the wrapper's own ``split`` is the option's value

    def decorate(f: F) -> F:
        """Add --dataset/--split/--questions to a command taking ``questions_path``."""

        @functools.wraps(f)
        def wrapper(*args: Any, dataset: str | None, split: str | None, **kw: Any) -> Any:
            if dataset is not None:
                if kw.get("questions_path"):
                    raise click.UsageError("give --questions or --dataset, not both")
                kw["questions_path"] = str(dataset_path(dataset, split or default))
            elif split is not None:
                raise click.UsageError("--split needs --dataset (a file given by --questions is one split)")
            return f(*args, **kw)

        wrapper = click.option("--questions", "questions_path", default=None,
                               help="Dataset file (default: the bundled MMLU-Pro sample).")(wrapper)
        wrapper = click.option("--split", type=click.Choice(SPLITS), default=None,
                               help=f"Split of --dataset (validation: the profiling split). [default: {default}]")(wrapper)
        return click.option("--dataset", type=click.Choice(list(DATASETS)), default=None,  # type: ignore[return-value]
                            help="A bundled benchmark instead of --questions.")(wrapper)

    return decorate


questions_opt = questions_from("test")
validation_questions_opt = questions_from("validation")

format_opt = click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
                          help="Dataset format (default: from the file name).")
config_opt = click.option("--config", "config_path", default="tiny", show_default=True,
                          help="Pool config: a TOML path or a bundled name (tiny, paper16).")
store_opt = click.option("--store", "store_path", default="runs/store.sqlite", show_default=True)
# The fake engine (`symoe run`, `symoe serve`): load tests and what-ifs without a model; off by default.
fake_opt = click.option("--fake", "fake_scale", type=click.FloatRange(min=0), default=None,
                        help="Fake engine (tests, load tests): the cost model's times scaled by this (0: instant).")
tokens_opt = click.option("--max-tokens", type=click.IntRange(min=1), default=None, help="New tokens per expert answer "
                          "(default: the config's [engine] max_tokens, else 4096 as in the paper).")


class BadInput(click.ClickException):
    """A ValueError (SymoeError included) from a command: one line, exit code 2 like a usage error."""

    exit_code = 2


def fail(e: Exception) -> NoReturn:
    """Report a library error as a one-line CLI error."""
    if isinstance(e, ValueError):
        raise BadInput(" ".join(str(e).splitlines())) from e
    raise click.ClickException(str(e)) from e


def faults_opts(f: F) -> F:
    """--retries and the deadline of every engine call."""
    d = RunOptions()
    f = click.option("--deadline-margin", type=float, default=d.deadline_margin_s, show_default=True,
                     help="Seconds added to every engine call's deadline.")(f)
    f = click.option("--deadline-factor", type=float, default=d.deadline_factor, show_default=True,
                     help="An engine call may take this multiple of its predicted time (plus the margin).")(f)
    return click.option("--retries", type=int, default=d.retries, show_default=True,
                        help="Per step: after an engine fault, reload the model and redo what the store lacks.")(f)


def run_options(retries: int, deadline_factor: float, deadline_margin: float) -> RunOptions:
    """RunOptions from the fault options."""
    return RunOptions(deadline_factor=deadline_factor, deadline_margin_s=deadline_margin, retries=retries)


def settings_opts(f: F) -> F:
    """The options of a run's settings (-k, --seed, --preset, --rare-threshold, --similarity-floor,
    --baseline, --skip-agreed, --max-tokens, --optimize and the fault options), folded into the
    command's ``settings``: a :data:`SettingsFor`, called once the pool is loaded; it makes and
    checks the :class:`RunSettings`, the preset resolved there."""

    @functools.wraps(f)
    def wrapper(*args: Any, k: int, seed: int, preset: str, rare_threshold: float | None, similarity_floor: float | None,
                baseline: str, skip_agreed: bool, max_tokens: int | None, optimize_s: float | None, retries: int,
                deadline_factor: float, deadline_margin: float, **kw: Any) -> Any:
        kw["settings"] = lambda cfg: RunSettings.of(
            cfg, k=k, seed=seed, preset=preset, rare_threshold=rare_threshold, similarity_floor=similarity_floor,
            baseline=baseline, skip_agreed=skip_agreed, max_tokens=max_tokens, optimize_s=optimize_s,
            options=run_options(retries, deadline_factor, deadline_margin))
        return f(*args, **kw)

    opts = [k_opt, seed_opt,
            click.option("--preset", type=click.Choice(list(PRESETS)), default="symoe", show_default=True,
                         help="reference: the authors' code's choices (rare-expert filter off); see README."),
            click.option("--rare-threshold", type=float, default=None, help="Rare-expert filter share, 0 disables it "
                         f"(default: the preset's; symoe {RARE_THRESHOLD}, reference 0)."),
            click.option("--similarity-floor", type=float, default=None,
                         help="Drop test keywords whose best match is below this."),
            click.option("--baseline", type=click.Choice(BASELINES), default="none", show_default=True,
                         help="Run an ablation instead of Symbolic-MoE (reuses the store). self-moa: the best profiled "
                              "model sampled k times, then the aggregator; oracle: right if any recruited expert is right "
                              "(from the store's expert answers of a finished Symbolic-MoE run, nothing generated)."),
            click.option("--skip-agreed", is_flag=True, help="Experts first; where all k answers agree that answer is "
                         "final and no aggregation is planned for the question."),
            tokens_opt,
            click.option("--optimize", "optimize_s", type=click.FloatRange(min=0), default=None,
                         help="The plan polish's budget in deterministic seconds (reproducible); 0: the heuristic plan "
                              "alone. Default: as symoe plan."),
            faults_opts]
    for opt in reversed(opts):
        wrapper = opt(wrapper)
    return wrapper  # type: ignore[return-value]


def launch_of(fake_scale: float | None) -> Launch:
    """Where the engines run: this machine's, or the fake on a clock scaled by ``--fake``."""
    return Launch() if fake_scale is None else Launch(fake=ScaledClock(fake_scale))


def questions(path: str | None, fmt: str | None, limit: int | None = None,
              per_category: int | None = None) -> list[Question]:
    """A dataset (default: the bundled MMLU-Pro sample), subset as asked."""
    return select(load_questions(path or bundled("mmlu_pro_sample.json"), fmt), limit, per_category)  # type: ignore[arg-type]


def console() -> Console:
    """stdout as click sees it (tests capture it), wide enough for tables when not a terminal."""
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else max(shutil.get_terminal_size().columns, 160),
                   highlight=False)


def table(rows: Sequence[Sequence[object]], header: Sequence[str], title: str | None = None) -> None:
    """Print a table; floats with one decimal."""
    t = Table(*header, box=box.SIMPLE_HEAD, title=title, title_justify="left")
    for i, _ in enumerate(header[1:], 1):
        t.columns[i].justify = "right"
    for r in rows:
        t.add_row(*(f"{c:,.1f}" if isinstance(c, float) else str(c) for c in r))
    console().print(t)
