"""Evaluation from what a run leaves behind: grading from the store (re-grading after an extractor
fix needs no GPU), the oracle bound, every stored generation as JSONL, and runs side by side."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import Question
from .errors import SymoeError
from .execution.report import QuestionResult, grade_run
from .generation import Request, Requests, Sampling
from .grading import answer_of, is_correct
from .planning import Plan
from .store import Store

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # fixed: the same runs always give the same interval


def agreed_answer(answers: Sequence[str | None]) -> str | None:
    """The answer when every expert gave the same one (an answer nobody could extract never agrees)."""
    if not answers or answers[0] is None or any(x != answers[0] for x in answers):
        return None
    return answers[0]


@dataclass
class Graded:
    """Per-question results of a plan graded from the store, and what they rest on."""

    results: list[QuestionResult]
    calls: int    # stored generations the results use (experts and aggregations)
    tokens: int   # their generated tokens


def expert_requests(plan: Plan, questions: Sequence[Question], sampling: Sampling) -> list[Request]:
    """Every expert request of a plan, question by question and slot by slot."""
    build, names = Requests(plan.config, sampling), plan.config.names
    return [build.expert(names[plan.experts[q, j]], qu, j) for q, qu in enumerate(questions) for j in range(plan.k)]


def grade_from_store(plan: Plan, questions: Sequence[Question], sampling: Sampling, store: Store,
                     oracle: bool = False) -> Graded:
    """Grade ``plan`` over ``questions`` from the generations in ``store`` (nothing is generated).
    ``oracle``: a question counts right when any of its experts is right."""
    build, names = Requests(plan.config, sampling), plan.config.names
    experts = expert_requests(plan, questions, sampling)

    def aggregate(q: int, texts: Sequence[str]) -> Request:
        assert plan.aggregator is not None
        return build.aggregate(names[plan.aggregator[q]], questions[q], texts)

    results = grade_run(plan, questions, experts, aggregate, store)
    used = list(store.generations(r.key for r in experts).values())
    for q, r in enumerate(results):
        if r.aggregator is not None:
            g = store.get(aggregate(q, r.expert_texts).key)
            used += [g] if g else []
    if oracle:
        for r, qu in zip(results, questions):
            right = [x for x in r.expert_answers if is_correct(x, qu.gold, qu.kind)]
            r.aggregator, r.final_text = None, ""
            r.final_answer = right[0] if right else r.final_answer
            r.correct = bool(right)
    return Graded(results, len(used), sum(g.tokens or 0 for g in used))


def missing_experts(plan: Plan, questions: Sequence[Question], sampling: Sampling, store: Store) -> int:
    """How many expert generations of a plan the store lacks."""
    reqs = expert_requests(plan, questions, sampling)
    return len(reqs) - len(store.existing([r.key for r in reqs]))


# --- a run directory ------------------------------------------------------------------------------

def result_rows(questions: Sequence[Question], results: Sequence[QuestionResult],
                keywords: dict[str, list[str]] | None = None, matched: dict[str, list[str]] | None = None,
                skipped: Sequence[bool] | None = None) -> list[dict[str, Any]]:
    """The rows of a run's ``results.jsonl`` (one home for its format)."""
    rows = []
    for i, (qu, r) in enumerate(zip(questions, results)):
        rows.append({"id": r.id, "category": qu.category, "keywords": (keywords or {}).get(qu.id, []),
                     "matched_keywords": (matched or {}).get(qu.id, []), "experts": r.experts,
                     "expert_answers": r.expert_answers, "aggregator": r.aggregator,
                     "aggregation_skipped": bool(skipped[i]) if skipped is not None else False,
                     "final_answer": r.final_answer, "gold": r.gold, "correct": r.correct})
    return rows


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write rows as JSON lines."""
    with open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SymoeError(f"{path.parent}: no {path.name} ({what}); is it a finished `symoe run` directory?") from None
    except ValueError as e:
        raise SymoeError(f"{path}: not valid JSON: {e}") from e


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SymoeError(f"{path.parent}: no {path.name}; is it a finished `symoe run` directory?") from None
    try:
        return [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    except ValueError as e:
        raise SymoeError(f"{path}: not valid JSONL: {e}") from e


def run_sampling(summary: dict[str, Any], run_dir: Path) -> Sampling:
    """The sampling a finished run used, from its summary."""
    if "sampling" not in summary:
        raise SymoeError(f"{run_dir}/summary.json has no 'sampling' (written before re-grading existed): "
                         f"rerun the same `symoe run` command to rewrite it from the store")
    try:
        return Sampling(**summary["sampling"])
    except TypeError as e:
        raise SymoeError(f"{run_dir}/summary.json: bad 'sampling': {e}") from e


@dataclass
class Regrade:
    questions: int
    changed: list[str]      # ids whose verdict changed
    accuracy_before: float
    accuracy_after: float


def regrade(run_dir: str | Path, questions: Sequence[Question], store: Store) -> Regrade:
    """Grade a finished run again from the store with the current extractor; rewrite its
    ``results.jsonl`` and the accuracy in ``summary.json``. Nothing is generated: every generation
    the run used must be in ``store``."""
    d = Path(run_dir)
    summary = _read_json(d / "summary.json", "the run's summary")
    old = _read_jsonl(d / "results.jsonl")
    try:
        plan = Plan.from_json(d / "plan.json")
    except (OSError, ValueError) as e:
        raise SymoeError(f"{d}/plan.json: {e}") from e
    by_id = {q.id: q for q in questions}
    lost = [r["id"] for r in old if r["id"] not in by_id]
    if lost:
        raise SymoeError(f"--questions lacks {len(lost)} question(s) of {d} (first: {lost[0]!r}): give the run's "
                         f"own questions file")
    qs = [by_id[r["id"]] for r in old]
    sampling = run_sampling(summary, d)
    miss = missing_experts(plan, qs, sampling, store)
    if miss:
        raise SymoeError(f"store {store.path} lacks {miss} expert generation(s) of {d}: give the store the run used")
    g = grade_from_store(plan, qs, sampling, store, oracle=summary.get("baseline") == "oracle")
    skipped = [bool(r.get("aggregation_skipped", False)) for r in old]
    rows = result_rows(qs, g.results, {r["id"]: r.get("keywords", []) for r in old},
                       {r["id"]: r.get("matched_keywords", []) for r in old}, skipped)
    changed = [r["id"] for r, n in zip(old, rows) if bool(r.get("correct")) != n["correct"]]
    before = float(np.mean([bool(r.get("correct")) for r in old])) if old else 0.0
    after = float(np.mean([r["correct"] for r in rows])) if rows else 0.0
    write_jsonl(d / "results.jsonl", rows)
    summary["accuracy"] = after
    summary["regraded"] = {"changed": len(changed), "accuracy_before": before}
    (d / "summary.json").write_text(json.dumps(summary, indent=1))
    return Regrade(len(rows), changed, before, after)


# --- export -------------------------------------------------------------------------------------

def export_rows(store: Store, questions: Sequence[Question]) -> Iterator[dict[str, Any]]:
    """Every stored generation, graded where its question is among ``questions`` (keyword samples
    carry no answer)."""
    keys = store.all_keys()
    if not keys:
        raise SymoeError(f"store {store.path} holds no generations: nothing to export")
    by_id = {q.id: q for q in questions}
    for i in range(0, len(keys), 500):
        gens = store.generations(keys[i:i + 500])
        for key in keys[i:i + 500]:
            g = gens[key]
            qu = by_id.get(g.question)
            answer = answer_of(g.text, qu) if qu is not None and g.role != "keywords" else None
            correct = is_correct(answer, qu.gold, qu.kind) if qu is not None and g.role != "keywords" else None
            yield {"question": g.question, "model": g.model, "role": g.role, "slot": g.slot, "text": g.text,
                   "answer": answer, "correct": correct, "tokens": g.tokens, "prompt_tokens": g.prompt_tokens,
                   "params": json.loads(g.params), "key": g.key}


# --- runs side by side ----------------------------------------------------------------------------

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
        summary = _read_json(d / "summary.json", "the run's summary")
        res = _read_jsonl(d / "results.jsonl")
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
