"""This machine's keyword-embedding speed, the cost of the matching stage: the embedder's load
time and seconds per text on the threads NumPy uses. Measured, never assumed: every run's matching
stage adds what it observed (:func:`observe`), :func:`measure` times the embedder on given texts,
and the figures live in the cache beside the other machine figures (``profiles/``), keyed by host,
processor and thread count. Before any measurement a prediction uses :data:`UNMEASURED` and says so."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..config.pool_file import cache_dir
from .matching import MiniLM, embedder_folder, text_key

log = logging.getLogger(__name__)

MIN_TEXTS = 8      # an observation of fewer texts is mostly timer noise: not kept
MEMORY = 2000      # texts of past observations weighed against a new one (older runs fade)


@dataclass(frozen=True)
class EmbeddingSpeed:
    """Seconds per embedded text and the embedder's load time, on ``threads`` threads."""

    seconds_per_text: float
    load_s: float
    threads: int
    texts: int = 0        # texts the figure rests on (0: not measured on this machine)
    source: str = "unmeasured"


# Before the first measurement: all-MiniLM-L6-v2 in NumPy on 2 busy shared cores, keyword texts.
UNMEASURED = EmbeddingSpeed(seconds_per_text=0.1, load_s=1.0, threads=0)


def threads() -> int:
    """The threads NumPy's BLAS may use here (a thread-count variable, else the usable cores)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        if (v := os.environ.get(var, "")).isdigit() and int(v) > 0:
            return int(v)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def speed_path(root: Path | None = None) -> Path:
    """This machine's figure file, one per host, processor and thread count, in the machine profiles'
    folder (``$SYMOE_PROFILES``, else ``<cache>/profiles``, as config/profile.py), or ``root/profiles``."""
    key = "-".join(x or "unknown" for x in (platform.node(), platform.machine())) + f"-{threads()}t"
    folder = root / "profiles" if root else Path(os.environ.get("SYMOE_PROFILES") or cache_dir() / "profiles")
    return folder / f"embedding-{key}.json"


def load_speed(root: Path | None = None) -> EmbeddingSpeed:
    """The stored figure of this machine, else :data:`UNMEASURED` (with this machine's threads)."""
    path = speed_path(root)
    try:
        d = json.loads(path.read_text())
        return EmbeddingSpeed(float(d["seconds_per_text"]), float(d["load_s"]), int(d["threads"]), int(d["texts"]),
                              str(path))
    except FileNotFoundError:
        return replace(UNMEASURED, threads=threads())
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"embedding speed figure {path}: {e}; delete it to measure again") from e


def usable_speed(root: Path | None = None) -> EmbeddingSpeed:
    """:func:`load_speed`, but an unreadable file costs one warning line naming it, not the run: the
    unmeasured figure stands in, and the run's own measurement (:func:`observe`) replaces the file."""
    try:
        return load_speed(root)
    except ValueError as e:
        log.warning("%s; the unmeasured figure is used and this run's measurement replaces it", e)
        return replace(UNMEASURED, threads=threads())


def observe(texts: int, encode_s: float, load_s: float, root: Path | None = None) -> EmbeddingSpeed | None:
    """Fold one observation (``texts`` embedded in ``encode_s`` seconds after a load of ``load_s``)
    into the stored figure, weighted by texts; ignored below :data:`MIN_TEXTS` texts."""
    if texts < MIN_TEXTS or not (encode_s > 0 and load_s >= 0):
        return None
    try:
        old = load_speed(root)
    except ValueError:  # unreadable (the forecast warned, usable_speed): this observation replaces it
        old = replace(UNMEASURED, threads=threads())
    w = min(old.texts, MEMORY)
    new = EmbeddingSpeed((old.seconds_per_text * w + encode_s) / (w + texts),
                         load_s if not old.texts else (old.load_s + load_s) / 2, threads(), w + texts)
    path = speed_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # concurrent runs never share a half-written file
    tmp.write_text(json.dumps({k: v for k, v in asdict(new).items() if k != "source"}, indent=1))
    tmp.replace(path)
    return replace(new, source=str(path))


def observe_embedder(embedder: object, load_s: float, root: Path | None = None) -> EmbeddingSpeed | None:
    """Fold what an :class:`~symoe.method.matching.Embedder` encoded (its ``encoded`` texts in
    ``encode_s`` seconds) into the stored figure; anything without those counters (a test double)
    records nothing."""
    return observe(int(getattr(embedder, "encoded", 0)), float(getattr(embedder, "encode_s", 0.0)), load_s, root)


def measure(texts: Sequence[str], root: Path | None = None) -> EmbeddingSpeed | None:
    """Time loading all-MiniLM-L6-v2 and embedding ``texts`` (e.g. a profile vocabulary), and keep it."""
    t = time.perf_counter()
    model = MiniLM(embedder_folder())
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    model.encode(list(texts))
    return observe(len(texts), time.perf_counter() - t, load_s, root)


def uncached(cache: Path, texts: Iterable[str]) -> int:
    """How many distinct ``texts`` the embeddings file ``cache`` lacks (what matching will embed)."""
    keys = {text_key(t) for t in texts}
    if not keys or not cache.exists():
        return len(keys)
    try:
        with np.load(cache) as z:
            return len(keys - set(z.files))
    except (OSError, ValueError):  # unreadable: the embedder will fail on it, not the prediction
        return len(keys)
