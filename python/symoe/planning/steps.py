"""The vocabulary of plan steps, mirrored from ``cpp/plan.hpp`` in this one place, and the typed
step arrays a plan holds."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Any, NamedTuple

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


class StepRow(NamedTuple):
    """One step as the Python planners write it (``PlanArrays.from_rows``)."""

    kind: StepKind
    role: Role
    device: int
    model: int  # -1: none (a pause)
    tp: int = 1
    seconds: float = 0.0
    items: Sequence[int] | np.ndarray = ()


@dataclass(frozen=True, eq=False)
class PlanArrays:
    """A plan's steps as the core makes and reads them: per step its kind, role, first device,
    model, tensor-parallel width, pause seconds and range ``[item_begin, item_end)`` of ``items``
    (an expert run's items are ``question * k + slot``, an aggregation's are questions).

    Read a field by name (``a.kind``) and a step through ``kind_of``, ``role_of`` and
    ``items_of``; ``as_dict`` (keys ``ARRAY_DTYPES``) is only for the core and the plan file."""

    kind: np.ndarray        # int8 StepKind values
    role: np.ndarray        # int8 Role values (expert for steps other than runs)
    device: np.ndarray      # int32
    model: np.ndarray       # int32, -1 none
    tp: np.ndarray          # int32
    item_begin: np.ndarray  # int64
    item_end: np.ndarray    # int64
    seconds: np.ndarray     # float64
    items: np.ndarray       # int64

    @classmethod
    def of(cls, columns: Mapping[str, Any]) -> PlanArrays:
        """From the core's dict (its ``devices`` ignored) or plan-file lists, each in its dtype."""
        return cls(**{f.name: np.asarray(columns[f.name], dtype=ARRAY_DTYPES[f.name]) for f in fields(cls)})

    @classmethod
    def from_rows(cls, rows: Iterable[StepRow]) -> PlanArrays:
        """The arrays of ``rows`` in their order, items concatenated."""
        cols: dict[str, list[Any]] = {f.name: [] for f in fields(cls)}
        chunks: list[np.ndarray] = []
        n = 0
        for r in rows:
            for name in ("kind", "role", "device", "model", "tp", "seconds"):
                cols[name].append(int(getattr(r, name)) if name != "seconds" else float(r.seconds))
            chunks.append(np.asarray(r.items, dtype=np.int64))
            cols["item_begin"].append(n)
            n += len(chunks[-1])
            cols["item_end"].append(n)
        return cls.of({**cols, "items": np.concatenate(chunks) if chunks else np.zeros(0, np.int64)})

    @property
    def n_steps(self) -> int:
        """Number of steps."""
        return int(len(self.kind))

    def kind_of(self, s: int) -> StepKind:
        """What step ``s`` does."""
        return StepKind(int(self.kind[s]))

    def role_of(self, s: int) -> Role:
        """Whose work run step ``s`` does."""
        return Role(int(self.role[s]))

    def items_of(self, s: int) -> np.ndarray:
        """Step ``s``'s items (a view): expert items ``question * k + slot``, or aggregated questions."""
        return self.items[self.item_begin[s]:self.item_end[s]]

    def runs(self, role: Role | None = None) -> np.ndarray:
        """Indices of the run steps (of ``role`` when given), in plan order."""
        mask = self.kind == StepKind.RUN
        return np.flatnonzero(mask if role is None else mask & (self.role == role))

    def copy(self) -> PlanArrays:
        """A deep copy (the arrays are mutable)."""
        return PlanArrays.of({name: a.copy() for name, a in self.as_dict().items()})

    def as_dict(self) -> dict[str, np.ndarray]:
        """The arrays by name, as the core's ``simulate`` and the plan file take them."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __getitem__(self, name: str) -> np.ndarray:
        """``a["kind"]``: a field by name, as when a plan's arrays were a dict (``a.kind`` reads the same)."""
        if name not in ARRAY_DTYPES:
            raise KeyError(f"plan arrays have no field {name!r} (fields: {', '.join(f.name for f in fields(self))})")
        return getattr(self, name)  # type: ignore[no-any-return]
