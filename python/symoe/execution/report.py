"""What a run leaves behind: per-step records (measured beside predicted), per-question results,
the run log, results file and timeline pictures."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..generation import Request
from ..method.datasets import Question
from ..method.grading import answer_of, is_correct, majority
from ..picture import draw_timeline
from ..planning.plan import Plan
from ..planning.steps import StepKind
from ..store import Store


@dataclass
class StepRecord:
    step: int
    device: int
    kind: StepKind  # its label in the run log
    model: str | None
    start: float
    end: float
    predicted_start: float
    predicted_end: float
    items: int = 0
    tokens: int = 0
    prompt_tokens: int = 0
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class QuestionResult:
    id: str
    experts: list[str]
    expert_answers: list[str | None]
    aggregator: str | None
    final_answer: str | None
    gold: str
    correct: bool
    expert_texts: list[str] = field(default_factory=list)
    final_text: str = ""


@dataclass
class RunReport:
    run_id: str
    steps: list[StepRecord]
    results: list[QuestionResult]
    makespan: float            # the last run's end (trailing unloads delay no result), as the plan's prediction
    predicted_makespan: float
    generated: int
    reused: int
    retries: int = 0
    finish: float = float("nan")  # the last step's end: trailing unloads and parks included

    @property
    def accuracy(self) -> float:
        """Share of questions answered right."""
        return float(np.mean([r.correct for r in self.results])) if self.results else 0.0


def write_report(report: RunReport, plan: Plan, run_dir: Path, pictures: bool = True) -> None:
    """Write a run's log, results and timeline pictures into its folder."""
    with open(run_dir / "run_log.jsonl", "w") as f:
        for r in report.steps:
            f.write(json.dumps({**asdict(r), "kind": r.kind.label}) + "\n")
    with open(run_dir / "results.jsonl", "w") as f:
        for q in report.results:
            f.write(json.dumps(asdict(q)) + "\n")
    if not pictures:
        return
    names = list(plan.config.names)
    idx = {n: i for i, n in enumerate(names)}
    dev = np.array([r.device for r in report.steps])
    mod = np.array([idx[r.model] if r.model else -1 for r in report.steps])
    kinds = [r.kind.label for r in report.steps]
    draw_timeline(run_dir / "timeline_measured.png", names, dev, mod, kinds, np.array([r.start for r in report.steps]),
                  np.array([r.end for r in report.steps]), f"{plan.strategy}: measured {report.makespan:,.1f} s")
    draw_timeline(run_dir / "timeline_predicted.png", names, dev, mod, kinds,
                  np.array([r.predicted_start for r in report.steps]), np.array([r.predicted_end for r in report.steps]),
                  f"{plan.strategy}: predicted {plan.makespan:,.1f} s (cost model)")


def grade_run(plan: Plan, questions: Sequence[Question], expert_requests: Sequence[Request],
              aggregate_request: Callable[[int, Sequence[str]], Request], store: Store) -> list[QuestionResult]:
    """Per question: the experts' extracted answers and the final one (the aggregator's, or the
    majority of the experts' when the plan has no aggregation), graded against the gold answer."""
    names, k = plan.config.names, plan.k
    got = store.generations(r.key for r in expert_requests)
    texts = [[got[r.key].text for r in expert_requests[q * k:(q + 1) * k] if r.key in got] for q in range(len(questions))]
    agg_keys = {q: aggregate_request(q, texts[q]).key for q in range(len(questions))
                if plan.aggregator is not None and plan.aggregator[q] >= 0 and len(texts[q]) == k}
    finals = store.generations(agg_keys.values())  # one query, not one per question
    out = []
    for q, qu in enumerate(questions):
        answers = [answer_of(x, qu) for x in texts[q]]
        agg, final_text = None, ""
        if q in agg_keys:
            assert plan.aggregator is not None
            agg = names[plan.aggregator[q]]
            g = finals.get(agg_keys[q])
            final_text = g.text if g else ""
            final = answer_of(final_text, qu)
        else:
            final = majority(answers)
        out.append(QuestionResult(qu.id, [names[m] for m in plan.experts[q]], answers, agg, final, qu.gold,
                                  is_correct(final, qu.gold, qu.kind), texts[q], final_text))
    return out

