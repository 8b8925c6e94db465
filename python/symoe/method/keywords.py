"""Skill keywords of a question (SYMBOLIC_MOE.md section 1): a keyword LLM sampled 5 times at
temperature 0.7; parsed and filtered exactly as the reference does."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from ..config.pool import Config
from ..generation import Engine, Sampling
from ..generation.batch import generate_jobs
from ..store import Store
from .datasets import Question
from .requests import Requests

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


def annotate(questions: Sequence[Question], cfg: Config, model: str, store: Store, engine: Engine,
             sampling: Sampling = Sampling(), progress: bool = True) -> dict[str, list[str]]:
    """Keywords per question id (possibly empty), generated once and kept in the store; the
    samples' seeds derive from ``sampling.seed``."""
    build = Requests(cfg, sampling)
    reqs = {q.id: build.keywords(model, q) for q in questions}
    gens = generate_jobs(cfg, [(model, [r for rs in reqs.values() for r in rs])], store, engine, progress, "keywords")
    return {qid: filter_keywords([gens[r.key].text for r in rs]) for qid, rs in reqs.items()}
