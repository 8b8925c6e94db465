"""Evaluation from what a run leaves behind: grading from the store (re-grading after an extractor
fix needs no GPU), the oracle bound, and every stored generation as JSONL."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SymoeError
from ..execution.report import QuestionResult, grade_run
from ..generation import Request, Sampling
from ..method.datasets import Question
from ..method.grading import answer_of, is_correct
from ..method.requests import Requests
from ..planning.plan import Plan
from ..store import Store


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
    return Requests(plan.config, sampling).plan_experts(plan, questions)


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


def read_json(path: Path, what: str) -> Any:
    """A run's JSON file; a missing or broken one is named with ``what`` it is."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SymoeError(f"{path.parent}: no {path.name} ({what}); is it a finished `symoe run` directory?") from None
    except ValueError as e:
        raise SymoeError(f"{path}: not valid JSON: {e}") from e


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """A run's JSONL file as rows."""
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
    summary = read_json(d / "summary.json", "the run's summary")
    old = read_jsonl(d / "results.jsonl")
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

def stored_questions(store: Store) -> list[Question]:
    """The questions the store keeps itself (``symoe serve``'s prompts, with the gold answers the
    requests gave)."""
    return [Question(q.id, q.text, q.gold, "letter" if q.kind == "letter" else "number", q.category)
            for q in store.questions()]


def export_rows(store: Store, questions: Sequence[Question]) -> Iterator[dict[str, Any]]:
    """Every stored generation with its extracted answer where its question is among ``questions``
    or kept in the store, graded where that question has a gold answer (keyword samples carry no
    answer)."""
    keys = store.all_keys()
    if not keys:
        raise SymoeError(f"store {store.path} holds no generations: nothing to export")
    by_id = {q.id: q for q in stored_questions(store)}
    by_id.update({q.id: q for q in questions})
    for i in range(0, len(keys), 500):
        gens = store.generations(keys[i:i + 500])
        for key in keys[i:i + 500]:
            g = gens[key]
            qu = by_id.get(g.question)
            answer = answer_of(g.text, qu) if qu is not None and g.role != "keywords" else None
            correct = is_correct(answer, qu.gold, qu.kind) if qu is not None and g.role != "keywords" and qu.gold else None
            yield {"question": g.question, "model": g.model, "role": g.role, "slot": g.slot, "text": g.text,
                   "answer": answer, "correct": correct, "tokens": g.tokens, "prompt_tokens": g.prompt_tokens,
                   "params": json.loads(g.params), "key": g.key}
