"""Benchmark loaders: MMLU-Pro (10 options), MedMCQA and GPQA (4 options), AIME (numeric), and a
plain JSONL format for users' own questions. The paper's MMLU-Pro, MedMCQA and AIME24 splits ship
with the package (gzip, MIT licence beside them in ``data/``) and are named by ``DATASETS``; GPQA is
gated upstream, so it is read from a file the user points at."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from ..errors import SymoeError
from .prompts import AnswerKind

Format = Literal["mmlu_pro", "medmcqa", "gpqa", "aime", "jsonl"]
Split = Literal["test", "validation"]
# Bundled benchmarks: name -> the authors' file stem ("train" is their validation/profiling split).
DATASETS = {"mmlu_pro": "MMLU_Pro", "medmcqa": "MedMCQA", "aime24": "AIME24"}
SPLITS: tuple[Split, ...] = ("test", "validation")
_OPTIONS = {"mmlu_pro": 10, "medmcqa": 4, "gpqa": 4}
_OPTION = re.compile(r"\(([A-J])\)")


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    gold: str
    kind: AnswerKind
    category: str = ""

    @property
    def text_hash(self) -> str:
        """What a plan records of the question, so it is never run on another text under the same id."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]


def bundled(name: str) -> Path:
    """A data file shipped with the package (question samples, tiny-pool profiles and task)."""
    return Path(str(resources.files("symoe") / "data" / name))


def dataset_path(name: str, split: str = "test") -> Path:
    """The bundled file of a named benchmark split (``mmlu_pro``, ``medmcqa``, ``aime24``)."""
    if name not in DATASETS:
        raise SymoeError(f"unknown dataset {name!r}; bundled datasets: {', '.join(DATASETS)} (or pass a file path)")
    if split not in SPLITS:
        raise SymoeError(f"unknown split {split!r} of dataset {name}; splits: {', '.join(SPLITS)}")
    return bundled(f"{DATASETS[name]}_{'train' if split == 'validation' else 'test'}.json.gz")


def resolve(source: str | Path, split: str | None = None) -> Path:
    """A dataset name (when no file of that name exists; ``split`` default test) or a path (no split:
    a file is one split)."""
    if isinstance(source, str) and source in DATASETS and not Path(source).exists():
        return dataset_path(source, split or "test")
    if split is not None:
        raise SymoeError(f"split={split!r} is for a bundled dataset ({', '.join(DATASETS)}); {source} is a file, "
                         "which holds one split")
    return Path(source)


def _stem(path: Path) -> str:
    return Path(path.name.removesuffix(".gz")).stem


def guess_format(path: str | Path) -> Format:
    """The dataset format from the file name (it names the benchmark, or ends in .jsonl)."""
    name = Path(path).name.lower()
    for key, fmt in (("mmlu_pro", "mmlu_pro"), ("mmlu-pro", "mmlu_pro"), ("medmcqa", "medmcqa"), ("gpqa", "gpqa"),
                     ("aime", "aime")):
        if key in name:
            return fmt  # type: ignore[return-value]
    if name.endswith(".jsonl"):
        return "jsonl"
    raise ValueError(f"cannot tell the dataset format of {path}; pass one of mmlu_pro, medmcqa, gpqa, aime, jsonl")


def load_questions(path: str | Path, fmt: Format | None = None, limit: int | None = None,
                   split: Split | None = None) -> list[Question]:
    """Read a dataset: a bundled name (``"mmlu_pro"``, ``"medmcqa"``, ``"aime24"``; ``split`` test or
    validation) or a file (``.gz`` read as gzip); every item is checked and a bad one named by index and field."""
    if limit is not None and limit < 1:
        raise SymoeError(f"limit must be >= 1, got {limit}")
    path = resolve(path, split)
    fmt = fmt or guess_format(path)
    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if path.name.endswith(".gz") else raw).decode("utf-8")
    except (OSError, EOFError) as e:
        raise SymoeError(f"cannot read dataset {path}: {getattr(e, 'strerror', None) or e}") from e
    except UnicodeDecodeError as e:
        raise SymoeError(f"dataset {path} is not UTF-8 text (byte {e.start}: {e.reason})") from e
    try:
        items = [json.loads(ln) for ln in text.splitlines() if ln.strip()] if fmt == "jsonl" else json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid {'JSONL' if fmt == 'jsonl' else 'JSON'}: {e}") from e
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a list of questions")
    stem = _stem(path)
    out = []
    seen: dict[str, int] = {}
    for i, it in enumerate(items if limit is None else items[:limit]):
        where = f"{path} item {i}"
        if not isinstance(it, dict):
            raise ValueError(f"{where}: expected an object")
        if fmt == "jsonl":
            q, gold = it.get("question"), it.get("answer", it.get("gold_answer"))
            kind = it.get("kind", "letter" if isinstance(gold, str) and re.fullmatch(r"[A-J]", gold.strip()) else "number")
            if kind not in ("letter", "number"):
                raise ValueError(f"{where}: kind must be 'letter' or 'number', got {kind!r}")
        else:
            q, gold = it.get("question"), it.get("gold_answer")
            kind = "number" if fmt == "aime" else "letter"
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"{where}: missing field 'question'")
        if gold is None or (isinstance(gold, str) and not gold.strip()):
            raise ValueError(f"{where}: missing field 'gold_answer'" if fmt != "jsonl" else f"{where}: missing field 'answer'")
        gold = str(gold).strip()
        if kind == "letter":
            opts = _OPTION.findall(q)
            if not opts:
                raise ValueError(f"{where}: multiple-choice question with no options '(A) ...' in its text")
            n = _OPTIONS.get(fmt)
            if n is not None and len(set(opts)) > n:
                raise ValueError(f"{where}: {len(set(opts))} options, {fmt} has at most {n}")
            if not re.fullmatch(r"[A-J]", gold) or gold not in opts:
                raise ValueError(f"{where}: gold answer {gold!r} is not one of its options")
        qid = str(it.get("id", f"{stem}-{i}"))
        if qid in seen:  # results, keywords and stored generations are all keyed by id
            raise SymoeError(f"{where}: duplicate question id {qid!r} (also item {seen[qid]})")
        seen[qid] = i
        out.append(Question(qid, q, gold, kind, str(it.get("category", ""))))
    if not out:
        raise ValueError(f"{path}: no questions")
    return out


def select(questions: Sequence[Question], limit: int | None = None, per_category: int | None = None) -> list[Question]:
    """The first ``per_category`` questions of each category (all if None), then the first ``limit``."""
    seen: dict[str, int] = {}
    keep = []
    for q in questions:
        if per_category is None or seen.get(q.category, 0) < per_category:
            seen[q.category] = seen.get(q.category, 0) + 1
            keep.append(q)
    return keep if limit is None else keep[:limit]


def load_keyword_file(path: str | Path) -> tuple[list[str], list[list[str]]]:
    """Question ids and keyword lists from a JSON array or JSONL of ``{id, keywords: [...]}``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SymoeError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason})") from e
    try:
        items = json.loads(text)
        if not isinstance(items, list):
            raise ValueError
    except ValueError:
        try:
            items = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: neither a JSON array nor JSONL: {e}") from e
    ids, kws = [], []
    seen: dict[str, int] = {}
    for i, it in enumerate(items):
        if not isinstance(it, dict) or not isinstance(it.get("keywords"), list):
            raise ValueError(f"{path}: item {i} needs a 'keywords' list")
        qid = str(it.get("id", i))
        if qid in seen:
            raise SymoeError(f"{path} item {i}: duplicate question id {qid!r} (also item {seen[qid]})")
        seen[qid] = i
        ids.append(qid)
        kws.append([str(k) for k in it["keywords"]])
    return ids, kws
