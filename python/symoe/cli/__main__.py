"""``python -m symoe.cli``."""

from . import cli

cli()
