"""Runs side by side (``symoe report``): accuracy with a bootstrap interval, per-category accuracy,
calls, tokens, time and loads, as markdown, JSON or a chart."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SymoeError
from .from_store import read_json, read_jsonl

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # fixed: the same runs always give the same interval


@dataclass
class RunRow:
    """One run in a report."""

    name: str
    baseline: str
    questions: int
    accuracy: float
    ci_low: float
    ci_high: float
    calls_per_question: float | None
    tokens_per_question: float | None
    wall_s: float | None
    loads: int | None
    aggregations_skipped: int
    by_category: dict[str, float] = field(default_factory=dict)


def bootstrap_ci(correct: Sequence[bool], level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the accuracy (fixed seed: reproducible)."""
    x = np.asarray(correct, dtype=float)
    if len(x) == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def load_runs(run_dirs: Sequence[str | Path]) -> list[RunRow]:
    """Rows for ``run_dirs``; refused unless every run answered the same questions."""
    if not run_dirs:
        raise SymoeError("report: give at least one run directory")
    rows, first_ids, first = [], None, None
    for rd in run_dirs:
        d = Path(rd)
        summary = read_json(d / "summary.json", "the run's summary")
        res = read_jsonl(d / "results.jsonl")
        ids = sorted(r["id"] for r in res)
        if first_ids is None:
            first_ids, first = ids, d
        elif ids != first_ids:
            only = sorted(set(ids) ^ set(first_ids))
            raise SymoeError(f"report: {d} and {first} were run over different question sets "
                             f"({len(ids)} vs {len(first_ids)} questions; e.g. {only[0]!r} is in only one)"
                             if only else f"report: {d} and {first} were run over different question sets")
        correct = [bool(r["correct"]) for r in res]
        lo, hi = bootstrap_ci(correct)
        cats: dict[str, list[bool]] = {}
        for r in res:
            cats.setdefault(r.get("category") or "(none)", []).append(bool(r["correct"]))
        n = len(res)
        rows.append(RunRow(
            d.name, str(summary.get("baseline", "none")) + (" +skip-agreed" if summary.get("skip_agreed") else ""), n,
            float(np.mean(correct)) if n else 0.0, lo, hi,
            summary["model_calls"] / n if n and "model_calls" in summary else None,
            summary["tokens"] / n if n and "tokens" in summary else None,
            summary.get("wall_s", summary.get("makespan_s")), summary.get("loads"),
            int(summary.get("aggregations_skipped", 0)), {c: float(np.mean(v)) for c, v in sorted(cats.items())}))
    return rows


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(rows: Sequence[RunRow]) -> str:
    """Runs side by side as a markdown table."""
    head = ["run", "baseline", "questions", "accuracy %", "95% CI", "calls/q", "tokens/q", "wall s", "loads",
            "aggregations skipped"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r.name, r.baseline, str(r.questions), f"{100 * r.accuracy:.1f}",
                                        f"{100 * r.ci_low:.1f}-{100 * r.ci_high:.1f}", _fmt(r.calls_per_question, ".2f"),
                                        _fmt(r.tokens_per_question, ",.0f"), _fmt(r.wall_s, ",.1f"),
                                        _fmt(r.loads, "d"), str(r.aggregations_skipped)]) + " |")
    cats = sorted({c for r in rows for c in r.by_category})
    lines += ["", "| category | " + " | ".join(r.name for r in rows) + " |", "|" + "---|" * (len(rows) + 1)]
    for c in cats:
        lines.append(f"| {c} | " + " | ".join(_fmt(100 * r.by_category[c] if c in r.by_category else None, ".1f")
                                               for r in rows) + " |")
    return "\n".join(lines)


def as_json(rows: Sequence[RunRow]) -> str:
    """Runs side by side as JSON."""
    return json.dumps([asdict(r) for r in rows], indent=1)


def chart(rows: Sequence[RunRow], path: str | Path) -> None:
    """Accuracy with its 95% interval per run, and generated tokens per question."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in rows]
    x = np.arange(len(rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(rows) + 4), 4.5))
    acc = np.array([100 * r.accuracy for r in rows])
    err = np.array([[100 * (r.accuracy - r.ci_low) for r in rows], [100 * (r.ci_high - r.accuracy) for r in rows]])
    ax1.bar(x, acc, yerr=err, capsize=4, color="tab:blue")
    ax1.set_ylabel("accuracy % (95% bootstrap CI)")
    ax2.bar(x, [r.tokens_per_question or 0 for r in rows], color="tab:orange")
    ax2.set_ylabel("generated tokens per question")
    for ax in (ax1, ax2):
        ax.set_xticks(x, names, rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
