"""Answer extraction: the option letter or number a response gives (SYMBOLIC_MOE.md section 2).

Faithful to what the paper's models write: instruction-tuned experts finish with ``The answer is (X)``
or ``The answer is \\boxed{X}``; R1-distilled experts and aggregators think inside ``<think>...</think>``
and then usually box their final letter or number. The authors' reference grader takes the last
option letter written as ``X)`` within the question's option range (failing that, the last option
letter at all), and for numbers the last ``\\boxed``/``\\fbox`` (failing that, math-verify over the
whole text). The chains below cover those fallbacks and the forms the reference misses.

Every extractor looks first at the text after the last ``</think>`` (the final answer of a reasoning
model), and only when nothing is found there at the whole text, so a letter or number considered
while thinking never overrides the final one.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction
from functools import lru_cache
from typing import Any

from .prompts import AnswerKind

# Numeric grading needs math-verify: without it (or with a broken install, which parses nothing)
# every answer that is not an exact number would be graded wrong without a word (checked below).
try:
    from math_verify import parse as _mv_parse
    from math_verify import verify as _mv_verify
except ImportError as _e:
    raise ImportError(f"symoe grades numeric answers with math-verify, which cannot be imported ({_e}); "
                      "install it: pip install 'math-verify>=0.9'") from _e

DEFAULT_OPTIONS = 10  # A-J (MMLU-Pro); GPQA and MedMCQA have 4 (A-D)
_THINK_END = "</think>"
_OPTION_IN_QUESTION = re.compile(r"\(([A-J])\)")


def option_count(question_text: str) -> int:
    """Number of options of a multiple-choice question, from its "(A) ... (D)" labels (A-J at most).

    The highest option label in the text sets the range (``(A) .. (D)`` -> 4); a text without labels
    gets the default of 10 (A-J)."""
    labels = _OPTION_IN_QUESTION.findall(question_text)
    return max(ord(c) - 64 for c in labels) if labels else DEFAULT_OPTIONS


def _regions(text: str) -> list[str]:
    """The text after the last ``</think>`` (when there is one and it is not blank), then the whole text."""
    i = text.rfind(_THINK_END)
    if i >= 0:
        tail = text[i + len(_THINK_END):]
        if tail.strip():
            return [tail, text]
    return [text]


def _letters(n_options: int | None) -> str:
    n = DEFAULT_OPTIONS if n_options is None else int(n_options)
    if not 1 <= n <= 10:
        raise ValueError(f"n_options must be between 1 and 10 (A-J), got {n_options}")
    return "ABCDEFGHIJ"[:n]


# ---------------------------------------------------------------------------------------------------
# Boxes


_TOKEN = re.compile(r"[^\s$]+")


def _boxes(text: str) -> list[str]:
    """Contents of every ``\\boxed``/``\\fbox`` in order: ``\\boxed{...}`` with nested braces, or
    ``\\boxed 33`` (one token without braces). Unclosed boxes (a truncated output) are left out."""
    out = []
    close: dict[int, int] | None = None  # index of each "{" -> index of its "}", one linear pass
    for m in re.finditer(r"\\(?:boxed|fbox)(?![A-Za-z])[ \t]*", text):
        i, j = m.start() + len(m.group(0).rstrip()), m.end()
        if j < len(text) and text[j] == "{":
            if close is None:
                close, stack = {}, []
                for k, c in enumerate(text):
                    if c == "{":
                        stack.append(k)
                    elif c == "}" and stack:
                        close[stack.pop()] = k
            if j in close:
                out.append(text[j + 1:close[j]].strip())
        elif j > i:  # "\boxed 33": the next token, without closing math delimiters or final dot
            tok = _TOKEN.match(text, j)
            if tok:
                out.append(tok.group(0).rstrip(".,;"))
    return out


def extract_boxed(text: str) -> str | None:
    """Content of the last well-formed ``\\boxed``/``\\fbox`` (braces nested, or ``\\boxed 33``)."""
    boxes = [b for b in _boxes(text) if b]
    return boxes[-1] if boxes else None


# ---------------------------------------------------------------------------------------------------
# Multiple choice

# Wrappers a model may put around a letter: spaces, markdown bold/italics, math delimiters, \boxed,
# \text, brackets, and the words "option"/"choice".
_WRAP = (r"(?:\s|\*|_|\$|\\\(|\\\[|\\(?:boxed|fbox|text|textbf|textrm|mathrm|mathbf)\s*\{|[(\[{:]"
         r"|(?i:option|choice)\s)*")
# "answer is", "Answer:", "final answer is:", "correct option is", "best choice would be", "answer ="
_PHRASE = (r"(?i:\b(?:answer|option|choice)(?:\s+(?:choice|option))?\s*(?:\*\*\s*)?"
           r"(?:is|:|=|would\s+be|should\s+be|must\s+be|will\s+be)(?![a-z]))")


@lru_cache(maxsize=16)
def _letter_patterns(letters: str) -> tuple[re.Pattern[str], ...]:
    """The chain's regular expressions for these option letters: answer phrase, bold letter, option
    letter ``X)``/``(X)``, standalone letter (the boxed letter, step 2, is read by ``_boxed_letter``)."""
    L = f"[{letters}]"
    end = r"(?![A-Za-z0-9'’])"
    return (
        re.compile(_PHRASE + _WRAP + f"({L}){end}"),
        re.compile(rf"\*\*\s*\(?({L})(?:\)|\.|:|\s*\*\*)(?![a-z])"),
        re.compile(rf"(?:(?<![A-Za-z0-9])\(({L})\)|(?<![A-Za-z0-9(])({L})\))"),
        # Standalone capital: not inside a word, not a unit after a number ("1.2 J"), not an
        # argument ("P(A)"), and not before a lower-case word other than "is" ("A mass of",
        # "I think", "Vitamin C deficiency").
        re.compile(rf"(?<![A-Za-z0-9'’\\])(?<!\d )(?<![A-Za-z]\()({L}){end}(?!\s+(?!is\b)[a-z])"),
    )


def _boxed_letter(box: str, letters: str) -> str | None:
    """An option letter boxed alone or leading its option text: ``C``, ``(C)``, ``\\text{C}``, ``C) 1.2 J``."""
    m = re.match(rf"(?:\s|\\(?:text|textbf|textrm|mathrm|mathbf)\s*\{{|[({{\[*])*([{letters}])"
                 rf"(?:\s*[)}}\].:*]|\s*$|\s+[-–—]|\s+\S*\d)", box)
    return m.group(1) if m else None


def extract_letter(text: str, n_options: int | None = None) -> str | None:
    """The final option letter of a multiple-choice response, restricted to the question's options
    (A-D for 4 options, A-J for 10, the default); None if there is none.

    Regions: the text after the last ``</think>`` first, then the whole text. In each region the
    first pattern of this chain that matches gives its LAST match:

    1. answer phrase: ``The answer is (C)``, ``Answer: C``, ``**Final Answer:** \\boxed{B}``,
       ``the correct option is C``, ``The answer is $\\boxed{\\text{C}}$``;
    2. boxed letter: the last ``\\boxed``/``\\fbox`` holding an option letter (``\\boxed{C}``,
       ``\\boxed{(C)}``, ``\\boxed{C) 1.2 J}``);
    3. bold letter: ``**C**``, ``**(C)**``, ``**C) 1.2 J**``;
    4. option letter written as ``X)`` or ``(X)`` (the authors' first pattern): ``C) 1.2 J``;
    5. the last standalone option letter (the authors' fallback), leaving out units after a number
       (``1.2 J``) and a letter before a lower-case word other than "is" (``A mass``, ``I think``).
    """
    letters = _letters(n_options)
    phrase, *rest = _letter_patterns(letters)
    for region in _regions(text):
        hit = _last(phrase, region)
        if hit:
            return hit
        for box in reversed(_boxes(region)):
            hit = _boxed_letter(box, letters)
            if hit:
                return hit
        for pat in rest:
            hit = _last(pat, region)
            if hit:
                return hit
    return None


def _last(pat: re.Pattern[str], text: str) -> str | None:
    last = None
    for m in pat.finditer(text):
        last = next(g for g in m.groups() if g)
    return last


# ---------------------------------------------------------------------------------------------------
# Numbers


def mv_timeout() -> int | None:
    """Seconds math-verify may take (None: no limit)."""
    # math-verify's timeouts use SIGALRM, which only works in the main thread; elsewhere run without.
    return 5 if threading.current_thread() is threading.main_thread() else None


def mv_parse(s: str) -> list[Any]:
    """math-verify's parse of ``s`` as a list (empty when it finds nothing: it raises on faults only)."""
    return list(_mv_parse(s, parsing_timeout=mv_timeout()))


def mv_equal(gold: str, predicted: str) -> bool:
    """math-verify's equivalence of two answers (LaTeX without delimiters)."""
    return bool(_mv_verify(mv_parse(f"${gold}$"), mv_parse(f"${predicted}$"), timeout_seconds=mv_timeout()))


_NUM = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


def _clean(s: str) -> str:
    """Strip what is not the value: math delimiters, ``\\text{}``, degrees/percent signs, spacing,
    thousands separators, a final dot, and a left-hand side (``x = 33`` -> ``33``)."""
    s = s.strip().strip("$").strip()
    s = re.sub(r"\\[(\[]|\\[)\]]", "", s)
    s = re.sub(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\^\s*\{?\\circ\}?|\\%|%|\\[,;!: ]|\\quad", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\left", "").replace("\\right", "")
    if "=" in s:
        s = s.rsplit("=", 1)[1]
    s = s.strip().rstrip(".").strip()
    unit = re.fullmatch(r"([-+]?[\d.,]+)\s*[A-Za-z]+(?:\s+[A-Za-z]+)*", s)  # "33 cm", "12 ways"
    if unit:
        s = unit.group(1)
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    return s


def exact_value(s: str) -> Fraction | None:
    """The exact value of a plain number or a ``\\frac{a}{b}``/``a/b`` of integers, else None."""
    if _NUM.fullmatch(s):
        return Fraction(s)
    m = re.fullmatch(r"([-+]?)\\frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(-?\d+)\s*\}|([-+]?\d+)\s*/\s*(\d+)", s)
    if m:
        sign, a, b, a2, b2 = m.groups()
        num, den = (int(a), int(b)) if a is not None else (int(a2), int(b2))
        if den:
            return Fraction(-num if sign == "-" else num, den)
    return None


def canonical(s: str) -> str:
    """``33``, ``033``, ``33.0`` and ``\\frac{66}{2}`` all read ``33``: equal answers compare equal
    (majority votes, agreement). Anything that is not an exact number stays as cleaned text."""
    s = _clean(s)
    v = exact_value(s)
    if v is None and s and not _NUM.fullmatch(s):
        got = mv_parse(f"${s}$")
        if got and getattr(got[0], "is_Rational", False):
            v = Fraction(int(got[0].p), int(got[0].q))
    if v is None:
        return s
    return str(v.numerator) if v.denominator == 1 else s


def extract_number(text: str) -> str | None:
    """The final numeric answer of a response; None if there is none.

    Regions: the text after the last ``</think>`` first, then the whole text. In each region, the
    first of these that finds something:

    1. the last ``\\boxed``/``\\fbox`` (with braces, nested braces handled, or ``\\boxed 33``);
    2. failing that, math-verify over the region (it finds "the final answer is 33", ``$33$``, ...).

    The value is cleaned (``x = 33`` -> ``33``) and an exact integer value is written plainly
    (``\\frac{66}{2}`` -> ``33``, ``033`` -> ``33``).
    """
    for region in _regions(text):
        boxes = [b for b in _boxes(region) if b and b != "X"]  # "X": the prompt's template echoed
        if boxes:
            return canonical(boxes[-1])
        got = mv_parse(re.sub(r"\\(?:boxed|fbox)\s*\{\s*X\s*\}", "", region))
        if got:
            expr, raw = got[0], got[-1] if isinstance(got[-1], str) else str(got[0])
            rhs = getattr(expr, "rhs", None)  # "x = 33" parses as Eq(x, 33)
            if rhs is not None and getattr(rhs, "is_Rational", False):
                raw = str(rhs)
            return canonical(raw)
    return None


def extract_answer(text: str, kind: AnswerKind, n_options: int | None = None) -> str | None:
    """The final answer of a response: an option letter (``kind == "letter"``, restricted to the
    first ``n_options`` letters, A-J when not given; see ``extract_letter``) or a number
    (``extract_number``)."""
    if kind == "letter":
        return extract_letter(text, n_options)
    return extract_number(text)


if not mv_equal("\\frac{1}{2}", "0.5"):
    raise ImportError("math-verify is installed but does not work: it does not find 1/2 == 0.5 (a broken "
                      "install, or a latex2sympy2_extended/antlr4 version it does not support); reinstall it: "
                      "pip install --force-reinstall 'math-verify>=0.9'")
