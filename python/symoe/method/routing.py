"""Skill-based routing (SYMBOLIC_MOE.md sections 3-4) over the C++ core."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from .. import _core
from ..config.presets import RARE_THRESHOLD

__all__ = ["Profiles", "Assignment", "route", "keywords_to_csr"]


@dataclass(frozen=True)
class Profiles:
    """Skill profiles of a pool: ``matrix[m, v]`` is model m's score on keyword ``vocabulary[v]``."""

    models: tuple[str, ...]
    vocabulary: tuple[str, ...]
    matrix: np.ndarray  # int64, models x vocabulary
    accuracy: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(set(self.models)) != len(self.models):
            raise ValueError("model names must be unique")
        if len(set(self.vocabulary)) != len(self.vocabulary):
            raise ValueError("vocabulary keywords must be unique")
        m = np.asarray(self.matrix)
        if m.shape != (len(self.models), len(self.vocabulary)):
            raise ValueError(f"profile matrix has shape {m.shape}, expected {(len(self.models), len(self.vocabulary))}")
        object.__setattr__(self, "matrix", _as_int_matrix(m, self.models, self.vocabulary))

    @classmethod
    def from_dict(cls, profiles: Mapping[str, Mapping[str, float]], accuracy: Mapping[str, float] | None = None) -> Profiles:
        """Build from ``{model: {keyword: score}}`` (the reference's JSON shape)."""
        if not isinstance(profiles, Mapping) or not profiles:
            raise ValueError("profiles must be a non-empty mapping {model: {keyword: score}}")
        models = tuple(profiles)
        vocab: dict[str, int] = {}
        for name, prof in profiles.items():
            if not isinstance(prof, Mapping):
                raise ValueError(f"profile of model {name!r} must be a mapping keyword -> score, got {type(prof).__name__}")
            for kw in prof:
                vocab.setdefault(kw, len(vocab))
        mat = np.zeros((len(models), len(vocab)), dtype=np.float64)
        for i, name in enumerate(models):
            for kw, val in profiles[name].items():
                if isinstance(val, bool) or not isinstance(val, (int, float)):
                    raise ValueError(f"profile of model {name!r}: keyword {kw!r} has non-numeric score {val!r}")
                if not math.isfinite(val):
                    raise ValueError(f"profile of model {name!r}: keyword {kw!r} has non-finite score {val!r} (NaN or infinite)")
                mat[i, vocab[kw]] = val
        return cls(models, tuple(vocab), mat, dict(accuracy or {}))

    @classmethod
    def from_json(cls, path: str | Path) -> Profiles:
        """Read ``{model: {keyword: score}}`` or ``{"profiles": {...}, "accuracy": {...}}``."""
        data = _read_json(path)
        if isinstance(data, dict) and "profiles" in data:
            return cls.from_dict(data["profiles"], data.get("accuracy"))
        return cls.from_dict(data)  # type: ignore[arg-type]  # from_dict checks the shape

    def to_dict(self) -> dict[str, dict[str, int]]:
        """``{model: {keyword: score}}``."""
        return {m: {kw: int(v) for kw, v in zip(self.vocabulary, row) if v != 0} for m, row in zip(self.models, self.matrix)}

    def save(self, path: str | Path) -> None:
        """Write the profiles (and accuracies) as JSON."""
        Path(path).write_text(json.dumps({"profiles": self.to_dict(), "accuracy": dict(self.accuracy)}, indent=1))


def _as_int_matrix(m: np.ndarray, models: Sequence[str], vocab: Sequence[str]) -> np.ndarray:
    if m.dtype.kind == "f":
        bad = ~np.isfinite(m)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise ValueError(f"profile of model {models[i]!r}: keyword {vocab[j]!r} is {m[i, j]} (NaN or infinite)")
        if (m != np.round(m)).any():
            i, j = np.argwhere(m != np.round(m))[0]
            raise ValueError(f"profile of model {models[i]!r}: keyword {vocab[j]!r} is {m[i, j]}, scores must be integers")
    elif m.dtype.kind not in "iub":
        raise ValueError(f"profile matrix must be numeric, got dtype {m.dtype}")
    # The core takes |score| < 2**40; checked before the int64 cast, which would wrap larger values.
    big = np.abs(m.astype(np.float64)) >= 2.0**40
    if big.any():
        i, j = np.argwhere(big)[0]
        raise ValueError(f"profile of model {models[i]!r}: keyword {vocab[j]!r} is {m[i, j]}, out of range (|score| < 2**40)")
    return np.ascontiguousarray(m, dtype=np.int64)


def _read_json(path: str | Path) -> object:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def keywords_to_csr(
    questions: Sequence[Sequence[str]], vocabulary: Sequence[str], on_unknown: Literal["error", "drop"] = "error"
) -> tuple[np.ndarray, np.ndarray]:
    """Question keyword lists -> CSR (indptr, indices) over ``vocabulary``.

    Keywords must already be mapped into the vocabulary (see ``symoe.method.matching``); repeated
    keywords count repeatedly, as in the reference.
    """
    index = {kw: i for i, kw in enumerate(vocabulary)}
    indptr = np.zeros(len(questions) + 1, dtype=np.int64)
    indices: list[int] = []
    for q, kws in enumerate(questions):
        if isinstance(kws, str):
            raise ValueError(f"question {q}: keywords must be a list of strings, got a string")
        for kw in kws:
            j = index.get(kw)
            if j is None:
                if on_unknown == "error":
                    raise ValueError(f"question {q}: keyword {kw!r} is not in the profile vocabulary")
                continue
            indices.append(j)
        indptr[q + 1] = len(indices)
    return indptr, np.asarray(indices, dtype=np.int64)


@dataclass
class Assignment:
    """Experts recruited per question: ``experts[i, j]`` indexes ``models``."""

    models: tuple[str, ...]
    experts: np.ndarray  # int64, N x k
    question_ids: tuple[str, ...] = ()
    seed: int = 0
    probabilities: np.ndarray | None = None  # N x M, when requested
    kept: tuple[bool, ...] = ()
    replaced: int = 0

    def __post_init__(self) -> None:
        self.experts = np.ascontiguousarray(self.experts, dtype=np.int64)
        if self.experts.ndim != 2:
            raise ValueError("experts must be a 2-D (questions x k) array")
        if self.experts.size and (self.experts.min() < 0 or self.experts.max() >= len(self.models)):
            raise ValueError(f"expert ids must lie in [0, {len(self.models)})")
        if self.question_ids and len(self.question_ids) != len(self.experts):
            raise ValueError(f"{len(self.question_ids)} question ids for {len(self.experts)} questions")

    @property
    def k(self) -> int:
        """Experts per question."""
        return int(self.experts.shape[1])

    def __len__(self) -> int:
        return int(self.experts.shape[0])

    def ids(self) -> tuple[str, ...]:
        """Question ids (their positions when none were given)."""
        return self.question_ids or tuple(str(i) for i in range(len(self)))

    def names(self, i: int) -> list[str]:
        """Expert names of question ``i``."""
        return [self.models[m] for m in self.experts[i]]

    def counts(self) -> dict[str, int]:
        """How many slots each model got."""
        c = np.bincount(self.experts.ravel(), minlength=len(self.models))
        return {m: int(n) for m, n in zip(self.models, c)}

    def save(self, path: str | Path) -> None:
        """JSONL: a header line with the pool, then one line per question."""
        with open(path, "w") as f:
            f.write(json.dumps({"symoe": "assignment", "models": list(self.models), "k": self.k, "seed": self.seed}) + "\n")
            for qid, row in zip(self.ids(), self.experts):
                f.write(json.dumps({"id": qid, "experts": [self.models[m] for m in row]}) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Assignment:
        """Read an assignment JSONL."""
        try:
            lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        except OSError as e:
            raise ValueError(f"cannot read {path}: {e.strerror}") from e
        try:
            rows = [json.loads(ln) for ln in lines]
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSONL: {e}") from e
        if not rows or rows[0].get("symoe") != "assignment" or "models" not in rows[0]:
            raise ValueError(f"{path}: first line must be the assignment header with 'models'")
        models = tuple(rows[0]["models"])
        index = {m: i for i, m in enumerate(models)}
        k = int(rows[0]["k"])
        experts = np.zeros((len(rows) - 1, k), dtype=np.int64)
        ids = []
        for i, r in enumerate(rows[1:]):
            names = r.get("experts")
            if not isinstance(names, list) or len(names) != k:
                raise ValueError(f"{path}: question {i} must list exactly {k} experts")
            for j, n in enumerate(names):
                if n not in index:
                    raise ValueError(f"{path}: question {i} names unknown model {n!r}")
                experts[i, j] = index[n]
            ids.append(str(r.get("id", i)))
        return cls(models, experts, tuple(ids), int(rows[0].get("seed", 0)))




def route(
    profiles: Profiles,
    keywords: Sequence[Sequence[str]] | tuple[np.ndarray, np.ndarray],
    *,
    k: int = 3,
    seed: int = 0,
    replace: bool = True,
    temperature: float = 0.5,
    weighting: Literal["reference", "softmax"] = "reference",
    softmax_temperature: float = 0.5,
    rare_threshold: float = RARE_THRESHOLD,
    question_offset: int = 0,
    threads: int = 0,
    return_probabilities: bool = False,
    question_ids: Iterable[str] | None = None,
    on_unknown: Literal["error", "drop"] = "error",
) -> Assignment:
    """Recruit ``k`` experts per question (reference behaviour by default).

    ``keywords`` is either one list of vocabulary keywords per question or a CSR pair
    ``(indptr, indices)`` of vocabulary ids. The draw for question ``question_offset + i``
    depends only on ``seed``, that index and its scores, so batches and thread counts agree. A
    ``temperature`` too small for the profiles (competence^(1/T) beyond a double) is refused with
    the smallest that works.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= _core.MAX_K:
        raise ValueError(f"k must be an integer in [1, {_core.MAX_K}], got {k!r}")  # the CLI's and check_run's range
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    if not isinstance(question_offset, (int, np.integer)) or question_offset < 0:
        raise ValueError(f"question_offset must be a non-negative integer, got {question_offset!r}")
    for name, v in (("temperature", temperature), ("softmax_temperature", softmax_temperature),
                    ("rare_threshold", rare_threshold)):
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    if isinstance(keywords, tuple) and len(keywords) == 2 and isinstance(keywords[0], np.ndarray):
        indptr, indices = (np.ascontiguousarray(a) for a in keywords)
        for name, a in (("indptr", indptr), ("indices", indices)):
            if a.dtype.kind not in "iu":
                raise ValueError(f"{name} must be an integer array, got dtype {a.dtype}")
        indptr = indptr.astype(np.int64, copy=False)
        indices = indices.astype(np.int64, copy=False)
    else:
        indptr, indices = keywords_to_csr(keywords, profiles.vocabulary, on_unknown)
    if indptr.ndim != 1 or len(indptr) < 1:
        raise ValueError("indptr must be 1-D with one more entry than questions")
    r = _core.route(profiles.matrix, indptr, indices, int(k), bool(replace), float(temperature), weighting,
                    float(softmax_temperature), float(rare_threshold), int(seed), int(question_offset),
                    int(threads), bool(return_probabilities))
    ids = tuple(question_ids) if question_ids is not None else ()
    return Assignment(profiles.models, r["experts"], ids, int(seed), r.get("probabilities"), tuple(r["kept"]),
                      int(r["replaced"]))
