"""Grading: whether an extracted answer is right, majority votes, and the answer a response gives
to a question (letters restricted to the question's own options)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from .datasets import Question
from .extraction import canonical, exact_value, extract_answer, mv_equal, option_count
from .prompts import AnswerKind


def is_correct(predicted: str | None, gold: str, kind: AnswerKind) -> bool:
    """Exact option letter for multiple choice (case and brackets ignored); for numbers, exact value
    (``33 == 33.0 == 033 == \\frac{66}{2}``, ``x = 33`` reads 33), then math-verify equivalence."""
    if predicted is None or not str(predicted).strip():
        return False
    if kind == "letter":
        return str(predicted).strip().strip("()").upper() == str(gold).strip().strip("()").upper()
    p, g = canonical(str(predicted)), canonical(str(gold))
    a, b = exact_value(p), exact_value(g)
    if a is not None and b is not None:
        return a == b
    if p == g:
        return True
    return mv_equal(g, p)


def answer_of(text: str, q: Question) -> str | None:
    """The answer a response gives to ``q``, letters restricted to the question's own options."""
    return extract_answer(text, q.kind, option_count(q.text) if q.kind == "letter" else None)


def majority(answers: Sequence[str | None]) -> str | None:
    """Most frequent extracted answer; ties go to the earliest slot."""
    valid = [x for x in answers if x is not None]
    if not valid:
        return None
    c = Counter(valid)
    best = max(c.values())
    return next(x for x in valid if c[x] == best)
