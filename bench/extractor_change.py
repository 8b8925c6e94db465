"""How many final answers of a finished run change verdict between symoe's first extractor and
today's, graded from the store (nothing generated):

    symoe export --store runs/store.sqlite --out runs/export.jsonl
    python bench/extractor_change.py runs/export.jsonl [--questions FILE]

The first extractor (commit fc9dd1c) found a letter only after "answer is" or inside "(X)", and a
number only in the last ``\\boxed{``; it is kept here, verbatim, as the baseline of the comparison.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter

from symoe.method.datasets import bundled, load_questions
from symoe.method.extraction import extract_answer, option_count
from symoe.method.grading import is_correct

_ANSWER_IS = re.compile(r"answer is:?\s*\(?\s*\**\s*\(?([A-J])\)?(?![A-Za-z])")
_LETTER_PAREN = re.compile(r"\(([A-J])\)")


def first_extract_letter(text: str) -> str | None:
    hits = _ANSWER_IS.findall(text)
    if hits:
        return hits[-1]
    hits = _LETTER_PAREN.findall(text)
    return hits[-1] if hits else None


def first_extract_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth, out = start + len("\\boxed{"), 1, []
    while i < len(text):
        depth += text[i] == "{"
        depth -= text[i] == "}"
        if depth == 0:
            return "".join(out).strip()
        out.append(text[i])
        i += 1
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("export", help="JSONL from `symoe export`")
    ap.add_argument("--questions", default=str(bundled("mmlu_pro_sample.json")))
    ap.add_argument("--role", default="aggregate", help="Which generations decide a question (aggregate, expert).")
    args = ap.parse_args()
    qs = {q.id: q for q in load_questions(args.questions)}
    rows = [json.loads(line) for line in open(args.export, encoding="utf-8")]
    changes: Counter[str] = Counter()
    examples = []
    for r in rows:
        q = qs.get(r["question"])
        if q is None or r["role"] != args.role:
            continue
        old = first_extract_letter(r["text"]) if q.kind == "letter" else first_extract_boxed(r["text"])
        new = extract_answer(r["text"], q.kind, option_count(q.text) if q.kind == "letter" else None)
        ok_old, ok_new = is_correct(old, q.gold, q.kind), is_correct(new, q.gold, q.kind)
        changes["graded"] += 1
        changes["answer changed"] += old != new
        changes["wrong -> right"] += ok_new and not ok_old
        changes["right -> wrong"] += ok_old and not ok_new
        changes["no answer before"] += old is None
        changes["no answer now"] += new is None
        if ok_old != ok_new and len(examples) < 5:
            examples.append({"question": q.id, "model": r["model"], "old": old, "new": new, "gold": q.gold,
                             "tail": r["text"][-160:]})
    print(json.dumps({"role": args.role, **changes, "examples": examples}, indent=1))


if __name__ == "__main__":
    main()
