"""The vocabulary of plan steps, mirrored from ``cpp/plan.hpp`` in this one place."""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class StepKind(IntEnum):
    """What a plan step does (the values of ``cpp/plan.hpp``'s ``StepKind``)."""

    LOAD = 0
    RUN = 1
    UNLOAD = 2
    PARK = 3
    WAKE = 4
    PAUSE = 5

    @property
    def label(self) -> str:
        """The step's name as plan JSON and run logs write it."""
        return self.name.lower()

    @property
    def is_io(self) -> bool:
        """Loads, unloads, parks and wakes: the steps of a device's I/O lane."""
        return self in (StepKind.LOAD, StepKind.UNLOAD, StepKind.PARK, StepKind.WAKE)


class Role(IntEnum):
    """Whose work a run step does (the values of ``cpp/plan.hpp``'s ``Role``)."""

    EXPERT = 0
    AGGREGATE = 1

    @property
    def label(self) -> str:
        """The role's name as plan JSON and run logs write it."""
        return self.name.lower()


STEP_KINDS = tuple(k.label for k in StepKind)  # step labels by value, as run logs and plan JSON write them
ROLES = tuple(r.label for r in Role)


ARRAY_DTYPES: dict[str, type[np.generic]] = dict(
    kind=np.int8, role=np.int8, device=np.int32, model=np.int32, tp=np.int32, item_begin=np.int64, item_end=np.int64,
    seconds=np.float64, items=np.int64)
"""The dtype of every plan array (as the C++ core makes and reads them)."""
