"""The one error type for bad input."""

from __future__ import annotations


class SymoeError(ValueError):
    """Bad input (an argument, a file, a field): the message names it and the offending value.

    A ValueError, so callers that already catch ValueError keep working; the CLI prints it as one
    line and exits 2.
    """


# Optional dependencies -> the extra that installs them (pyproject.toml's [project.optional-dependencies]).
EXTRAS = {"tokenizers": "'symoe[remote]'", "safetensors": "'symoe[remote]'", "ray": "'symoe[ray]'",
          "vllm": "'symoe[cpu]' (CPU) or 'symoe[gpu]' (GPU)", "torch": "'symoe[cpu]'", "transformers": "'symoe[cpu]'",
          "gguf": "'symoe[cpu]'", "tqdm": "'symoe[cpu]'"}


class MissingExtra(RuntimeError):
    """An optional dependency is not installed: the message names the extra that installs it."""

    def __init__(self, what: str, module: str):
        extra = EXTRAS.get(module.split(".")[0], "")
        super().__init__(f"{what} needs the '{module}' package, which is not installed: "
                         + f"pip install {extra or module}")


def require(module: str, what: str) -> None:
    """Raise MissingExtra unless ``module`` can be imported (checked without importing it)."""
    import importlib.util
    import sys

    if module in sys.modules:  # imported already, or blocked (None)
        found = sys.modules[module] is not None
    else:
        found = importlib.util.find_spec(module) is not None
    if not found:
        raise MissingExtra(what, module)
