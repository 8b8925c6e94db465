"""Vectorised NumPy implementation of the reference routing (section 4), the speed baseline for
the C++ core. No Python loop per question: scores by gather + reduceat, draws by a vectorised
copy of the counter-based generator and an inverse-CDF comparison against row cumsums."""

from __future__ import annotations

import numpy as np

C0, C1, C2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def mix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = z + C0
        z = (z ^ (z >> np.uint64(30))) * C1
        z = (z ^ (z >> np.uint64(27))) * C2
    return z ^ (z >> np.uint64(31))


def uniforms(seed: int, questions: np.ndarray, stream: int, slots: np.ndarray) -> np.ndarray:
    s = mix64(np.array([seed], dtype=np.uint64))
    h = mix64(mix64(s ^ questions.astype(np.uint64)) ^ ((np.uint64(stream) << np.uint64(32)) | slots.astype(np.uint64)))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def pick(w: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Row-wise inverse CDF: w (R x M) unnormalised, u (R x k) -> (R x k) model ids."""
    cum = np.cumsum(w, axis=1)
    x = u * cum[:, -1:]
    idx = (cum[:, None, :] <= x[:, :, None]).sum(axis=2)
    # Rounding at the very top of the range: take the last positive-weight model.
    last = w.shape[1] - 1 - np.argmax(w[:, ::-1] > 0, axis=1)
    return np.minimum(idx, last[:, None])


def route(profiles: np.ndarray, indptr: np.ndarray, indices: np.ndarray, k: int = 3, seed: int = 0,
          rare_threshold: float = 0.05) -> np.ndarray:
    M = profiles.shape[0]
    N = len(indptr) - 1
    c = profiles.sum(axis=1)
    c = c - c.min() + 1 if c.min() < 0 else c
    g = c.astype(np.float64) ** 2
    g = g / g.sum() if g.sum() > 0 else np.full(M, 1.0 / M)
    lengths = np.diff(indptr)
    gathered = profiles.T[indices]                       # nnz x M
    S = np.zeros((N, M), dtype=np.int64)
    nz = lengths > 0
    S[nz] = np.add.reduceat(gathered, indptr[:-1][nz], axis=0)
    pos = S > 0
    anyp = pos.any(axis=1, keepdims=True)
    w = np.where(anyp, np.where(pos, S * g, 0.0), (S - S.min(axis=1, keepdims=True) + 1) * g)
    w[~nz] = 1.0
    bad = w.sum(axis=1) <= 0
    if bad.any():
        w[bad] = np.where(anyp[bad], pos[bad], True).astype(np.float64)
    q = np.arange(N, dtype=np.uint64)[:, None]
    u = uniforms(seed, q, 0, np.arange(k, dtype=np.uint64)[None, :])
    experts = pick(w, u)
    if rare_threshold > 0 and N and k:
        counts = np.bincount(experts.ravel(), minlength=M)
        kept = counts / experts.size >= rare_threshold
        if kept.any() and ((counts > 0) & ~kept).any():
            rows, cols = np.nonzero(~kept[experts])
            u2 = uniforms(seed, rows.astype(np.uint64), 1, cols.astype(np.uint64))
            base = np.where(kept, counts, 0).astype(np.float64)
            experts[rows, cols] = pick(np.broadcast_to(base, (1, M)), u2[None, :])[0]
    return experts
