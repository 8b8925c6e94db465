"""Presets: named sets of the method's choices where symoe and the authors' reference code differ.

``symoe`` (the default) applies the rare-expert filter the paper describes (a model drawn for less
than 5% of the test slots is replaced, so fewer models are loaded); ``reference`` reproduces the
authors' code, which defines that filter but never calls it. Everything else that changes an
answer already follows the reference code in both presets (SYMBOLIC_MOE.md): routing weights,
draws with replacement, keyword parsing and filtering, nearest-neighbour matching without a floor,
the aggregator benchmark's blanks, answer extraction. The execution schedule changes no answer and
is chosen separately (``plan(..., strategy="reference")``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SymoeError

RARE_THRESHOLD = 0.05  # the paper's rare-expert filter share (the authors' code never applies it)


@dataclass(frozen=True)
class Preset:
    name: str
    rare_threshold: float  # rare-expert filter share; 0 disables it


PRESETS = {"symoe": Preset("symoe", RARE_THRESHOLD), "reference": Preset("reference", 0.0)}


def preset(name: str) -> Preset:
    """The preset named ``name`` (symoe or reference)."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise SymoeError(f"preset must be one of {', '.join(PRESETS)}, got {name!r}") from None
