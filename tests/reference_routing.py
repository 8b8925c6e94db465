"""Plain-Python reference of SYMBOLIC_MOE.md section 4, written from the spec (not from the core).

The random stream is the documented counter-based one: u = top 53 bits of
mix(mix(mix(seed) ^ question) ^ (stream << 32 | slot)) / 2**53, with SplitMix64's finaliser.
"""

from __future__ import annotations

import math

MASK = (1 << 64) - 1


def mix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def uniform(seed: int, question: int, stream: int, slot: int) -> float:
    h = mix64(mix64(mix64(seed) ^ question) ^ ((stream << 32) | slot))
    return (h >> 11) / 2.0**53


def gamma(profiles: list[list[int]], temperature: float = 0.5) -> list[float]:
    c = [sum(row) for row in profiles]
    lo = min(c)
    shifted = [x - lo + 1 if lo < 0 else x for x in c]
    powed = [float(x) * float(x) if 1.0 / temperature == 2.0 else float(x) ** (1.0 / temperature) for x in shifted]
    total = 0.0
    for x in powed:
        total += x
    if total <= 0:
        return [1.0 / len(c)] * len(c)
    return [x / total for x in powed]


def weights(profiles, kws, g, softmax_t=None):
    M = len(profiles)
    if not kws:
        return [1.0] * M
    s = [sum(profiles[m][v] for v in kws) for m in range(M)]
    pos = any(x > 0 for x in s)
    lo = min(s)
    cand = [x > 0 if pos else True for x in s]
    if pos:
        w = [float(s[m]) * g[m] if s[m] > 0 else 0.0 for m in range(M)]
    else:
        w = [float(s[m] - lo + 1) * g[m] for m in range(M)]
    if softmax_t is not None:
        hi = max(w[m] for m in range(M) if cand[m])
        w = [math.exp((w[m] - hi) / softmax_t) if cand[m] else 0.0 for m in range(M)]
    if sum(w) <= 0:
        w = [1.0 if cand[m] else 0.0 for m in range(M)]
    return w


def _total(w):
    t = 0.0
    for x in w:
        t += x
    return t


def pick(w, u):
    x, cum, last = u * _total(w), 0.0, -1
    for m, wm in enumerate(w):
        if wm <= 0:
            continue
        cum += wm
        last = m
        if x < cum:
            return m
    return last


def draw(w, k, replace, seed, q):
    w = list(w)
    out = []
    for j in range(k):
        u = uniform(seed, q, 0, j)
        if replace:
            out.append(pick(w, u))
        elif _total(w) <= 0:
            free = [m for m in range(len(w)) if m not in out]
            out.append(free[int(u * len(free))])
        else:
            m = pick(w, u)
            out.append(m)
            w[m] = 0.0
    return out


def rare_filter(rows, M, threshold, replace, seed, offset=0):
    counts = [0] * M
    for r in rows:
        for m in r:
            counts[m] += 1
    slots = sum(counts)
    if threshold <= 0 or slots == 0:
        return rows, counts
    kept = [counts[m] / slots >= threshold for m in range(M)]
    if not any(kept) or all(kept[m] or counts[m] == 0 for m in range(M)):
        return rows, counts
    out = []
    for i, r in enumerate(rows):
        r = list(r)
        for j in range(len(r)):
            if kept[r[j]]:
                continue
            w = [float(counts[m]) if kept[m] and (replace or m not in r) else 0.0 for m in range(M)]
            if _total(w) <= 0:
                continue
            r[j] = pick(w, uniform(seed, offset + i, 1, j))
        out.append(r)
    return out, counts


def route(profiles, questions, k=3, seed=0, replace=True, temperature=0.5, rare_threshold=0.05, softmax_t=None):
    """Returns (rows, probabilities)."""
    g = gamma(profiles, temperature)
    rows, probs = [], []
    for q, kws in enumerate(questions):
        w = weights(profiles, kws, g, softmax_t)
        t = _total(w)
        probs.append([x / t for x in w])
        rows.append(draw(w, k, replace, seed, q))
    rows, _ = rare_filter(rows, len(profiles), rare_threshold, replace, seed)
    return rows, probs
