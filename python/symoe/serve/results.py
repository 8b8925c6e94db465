"""A serve run as a run directory that ``symoe report`` reads: ``results.jsonl`` with one row per
answered request that gave a gold answer (``"symoe": {"gold": ...}``; the rows of ``symoe run``),
and ``summary.json`` (model calls and tokens over every answered request, wall time)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .protocol import Answer, ServeRequest


@dataclass
class ServedResults:
    """What the answered requests add up to, kept as they finish."""

    skip_agreed: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)
    answered: int = 0
    calls: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, req: ServeRequest, a: Answer) -> None:
        """Count one answered request; a row when its question has a gold answer."""
        q, d = req.question, a.details
        with self.lock:
            self.answered += 1
            self.calls += a.calls
            self.tokens += a.completion_tokens
            if q.gold:
                self.rows.append({
                    "id": q.id, "category": q.category, "keywords": d["keywords"], "matched_keywords": d["matched"],
                    "experts": [e["model"] for e in d["experts"]], "expert_answers": [e["answer"] for e in d["experts"]],
                    "aggregator": d["aggregator"], "aggregation_skipped": d["aggregation_skipped"],
                    "final_answer": d["answer"], "gold": q.gold, "correct": bool(d["correct"]), "seed": req.seed})

    def write(self, folder: str | Path) -> int:
        """Write ``results.jsonl`` and ``summary.json`` into ``folder``; returns the graded rows."""
        d = Path(folder)
        d.mkdir(parents=True, exist_ok=True)
        with self.lock:
            rows = list(self.rows)
            summary = {"baseline": "serve", "skip_agreed": self.skip_agreed, "questions": len(rows),
                       "answered": self.answered, "model_calls": self.calls * len(rows) / max(1, self.answered),
                       "tokens": self.tokens * len(rows) / max(1, self.answered),
                       "accuracy": sum(r["correct"] for r in rows) / max(1, len(rows)),
                       "wall_s": time.monotonic() - self.started}
        (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (d / "summary.json").write_text(json.dumps(summary, indent=1))
        return len(rows)
