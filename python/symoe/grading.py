"""Answer extraction and grading (SYMBOLIC_MOE.md section 2)."""

from __future__ import annotations

import re

from .prompts import AnswerKind

_ANSWER_IS = re.compile(r"answer is:?\s*\(?\s*\**\s*\(?([A-J])\)?(?![A-Za-z])")
_LETTER_PAREN = re.compile(r"\(([A-J])\)")


def extract_letter(text: str) -> str | None:
    """The last "answer is (X)" letter; failing that, the last parenthesised option letter."""
    hits = _ANSWER_IS.findall(text)
    if hits:
        return hits[-1]
    hits = _LETTER_PAREN.findall(text)
    return hits[-1] if hits else None


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, with nested braces."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth, out = start + len("\\boxed{"), 1, []
    while i < len(text):
        c = text[i]
        depth += c == "{"
        depth -= c == "}"
        if depth == 0:
            return "".join(out).strip()
        out.append(c)
        i += 1
    return None


def extract_answer(text: str, kind: AnswerKind) -> str | None:
    return extract_letter(text) if kind == "letter" else extract_boxed(text)


def _number(s: str) -> float | None:
    s = s.replace(",", "").replace("$", "").strip()
    try:
        return float(s)
    except ValueError:
        return None


def is_correct(predicted: str | None, gold: str, kind: AnswerKind) -> bool:
    """Exact letter for multiple choice; numeric equivalence (math-verify when installed) otherwise."""
    if predicted is None:
        return False
    if kind == "letter":
        return predicted.strip().upper() == gold.strip().upper()
    a, b = _number(predicted), _number(gold)
    if a is not None and b is not None:
        return a == b
    try:
        from math_verify import parse, verify
    except ImportError:
        return predicted.strip() == gold.strip()
    return bool(verify(parse(f"${gold}$"), parse(f"${predicted}$")))
