"""The one error type for bad input."""

from __future__ import annotations


class SymoeError(ValueError):
    """Bad input (an argument, a file, a field): the message names it and the offending value.

    A ValueError, so callers that already catch ValueError keep working; the CLI prints it as one
    line and exits 2.
    """
