"""The ``symoe`` command line: commands parse arguments, call the library, print."""

from __future__ import annotations

import signal
import sys
from types import FrameType

import click

from ..errors import EXTRAS, MissingExtra
from .calibrate import calibrate_cmd
from .plans import demo_cmd, plan_cmd, route_cmd
from .results import export_cmd, regrade_cmd, report_cmd
from .run import run_cmd, run_plan_cmd
from .serve import serve_cmd
from .stages import keywords_cmd, profile_cmd, select_aggregator_cmd
from .tools import bench_grp, models_grp

__all__ = ["cli", "main"]


@click.group()
@click.version_option(package_name="symoe")
def main() -> None:
    """Symbolic Mixture-of-Experts: skill-based routing, load-once planning, execution."""


for _cmd in (route_cmd, plan_cmd, demo_cmd, models_grp, run_plan_cmd, keywords_cmd, profile_cmd,
             select_aggregator_cmd, run_cmd, export_cmd, regrade_cmd, report_cmd, bench_grp, serve_cmd, calibrate_cmd):
    main.add_command(_cmd)


def _terminate_as_interrupt() -> None:
    """SIGTERM stops a run like Ctrl-C: engines killed, every finished generation kept."""
    def handler(signum: int, frame: FrameType | None) -> None:
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
    except ModuleNotFoundError as e:  # an optional dependency that no command checked first
        if (e.name or "").split(".")[0] not in EXTRAS:
            raise
        command = " ".join(["symoe", *sys.argv[1:2]])
        click.echo(f"Error: {MissingExtra(command, e.name or '')}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted: finished generations are kept in the store; rerun the same command to resume",
                   err=True)
        sys.exit(130)
