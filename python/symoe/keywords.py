"""Skill keywords of a question (SYMBOLIC_MOE.md section 1): a keyword LLM sampled 5 times at
temperature 0.7; parsed and filtered exactly as the reference does."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .datasets import Question
from .execute import generate_jobs, make_request
from .planning import Config
from .prompts import keyword_messages
from .store import Store

SAMPLES = 5
MAX_LEN = 20


def parse_keywords(text: str) -> list[str]:
    """Text after the last ``Keywords:``, split on commas, stripped, lower-cased, dots dropped."""
    tail = text.split("Keywords:")[-1]
    out = []
    for kw in tail.split(","):
        kw = kw.strip().lower().replace(".", "")
        if kw:
            out.append(kw)
    return out


def filter_keywords(samples: Sequence[str]) -> list[str]:
    """Pool the samples' keywords; drop those over 20 characters; keep those seen at least twice;
    de-duplicate (first-seen order)."""
    pool = [kw for s in samples for kw in parse_keywords(s) if len(kw) <= MAX_LEN]
    counts = Counter(pool)
    seen: dict[str, None] = {}
    for kw in pool:
        if counts[kw] >= 2:
            seen.setdefault(kw, None)
    return list(seen)


def _seed(qid: str, i: int) -> int:
    return int.from_bytes(hashlib.sha256(f"keywords|{qid}|{i}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def annotate(questions: Sequence[Question], cfg: Config, model: str, store: Store, run_dir: str | Path,
             samples: int = SAMPLES, temperature: float = 0.7, max_tokens: int = 48, progress: bool = True
             ) -> dict[str, list[str]]:
    """Keywords per question id (possibly empty), generated once and kept in the store."""
    reqs = {q.id: [make_request(cfg, model, keyword_messages(q.text), {"temperature": temperature,
                                "max_tokens": max_tokens, "seed": _seed(q.id, i)}, "keywords", i, q.id)
                   for i in range(samples)] for q in questions}
    gens = generate_jobs(cfg, [(model, [r for rs in reqs.values() for r in rs])], store, run_dir, progress, "keywords")
    return {qid: filter_keywords([gens[r["key"]].text for r in rs]) for qid, rs in reqs.items()}
