import json

import pytest

from conftest import DATA
from symoe.datasets import load_questions
from symoe.execute import majority
from symoe.grading import extract_answer, extract_boxed, extract_letter, is_correct
from symoe.prompts import aggregator_messages, as_completion, expert_messages, strip_reasoning


def test_letter_extraction():
    assert extract_letter("Let's think. (A) is wrong, (C) fits. The answer is (C).") == "C"
    assert extract_letter("The answer is (B). Wait, no: the answer is (D)") == "D"
    assert extract_letter("the answer is: **E**") == "E"
    assert extract_letter("The answer is J") == "J"
    assert extract_letter("Options (A) and (B) both... so (B)") == "B"
    assert extract_letter("No idea.") is None
    assert extract_letter("The answer is Paris") is None


def test_boxed_extraction():
    assert extract_boxed(r"so \boxed{12} and finally \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert extract_boxed(r"The answer is \boxed{033}.") == "033"
    assert extract_boxed("no box") is None
    assert extract_boxed(r"\boxed{unclosed") is None


def test_grading_real_items():
    aime = load_questions(DATA / "AIME24_test.json")[0]
    assert is_correct(extract_answer(rf"The answer is \boxed{{{aime.gold}}}", "number"), aime.gold, "number")
    assert is_correct("33.0", "33", "number") and is_correct("033", "33", "number")
    assert not is_correct("34", "33", "number") and not is_correct(None, "33", "number")
    mmlu = load_questions(DATA / "MMLU_Pro_test.json", limit=5)
    for q in mmlu:
        assert is_correct(extract_answer(f"The answer is ({q.gold})", "letter"), q.gold, "letter")
        wrong = "A" if q.gold != "A" else "B"
        assert not is_correct(extract_answer(f"The answer is ({wrong})", "letter"), q.gold, "letter")


def test_prompts_on_real_question():
    q = load_questions(DATA / "MMLU_Pro_test.json", limit=1)[0]
    m = expert_messages(q.text, q.kind)
    assert m[0]["role"] == "user" and q.text.strip() in m[0]["content"]
    assert "The answer is (X)" in m[0]["content"]
    agg = aggregator_messages(q.text, q.kind, ["<think>hmm</think>The answer is (A)", "The answer is (B)", ""])
    c = agg[0]["content"]
    assert "### Model 1's response:\nThe answer is (A)" in c and "hmm" not in c
    assert "### Model 3's response:" in c and "biased or incorrect" in c
    assert c.index("### Model 3") < c.index(q.text.strip()[:30])
    assert "\\boxed{X}" in expert_messages("1+1?", "number")[0]["content"]
    assert as_completion(m).endswith("Response:")
    assert strip_reasoning("a</think> b") == "b"


def test_majority_vote():
    assert majority(["B", "A", "B"]) == "B"
    assert majority(["A", "B", None]) == "A"
    assert majority([None, None]) is None


def test_dataset_loaders_and_errors(tmp_path):
    assert len(load_questions(DATA / "MedMCQA_train.json")) == 504
    assert load_questions(DATA / "AIME24_train.json")[0].kind == "number"
    gpqa = tmp_path / "gpqa_diamond.json"
    gpqa.write_text(json.dumps([{"question": "Made-up: which is a noble gas? The options are: (A) Ne (B) Na (C) Cl (D) O",
                                 "gold_answer": "A"}]))
    assert load_questions(gpqa)[0].gold == "A"
    bad = tmp_path / "MMLU_Pro_x.json"
    bad.write_text(json.dumps([{"question": "Q? The options are: (A) x (B) y"}]))
    with pytest.raises(ValueError, match="item 0: missing field 'gold_answer'"):
        load_questions(bad)
    bad.write_text(json.dumps([{"question": "What is 2+2?", "gold_answer": "A"}]))
    with pytest.raises(ValueError, match="no options"):
        load_questions(bad)
    gpqa.write_text(json.dumps([{"question": "Q (A) a (B) b (C) c (D) d (E) e", "gold_answer": "A"}]))
    with pytest.raises(ValueError, match="5 options, gpqa has at most 4"):
        load_questions(gpqa)
    own = tmp_path / "mine.jsonl"
    own.write_text(json.dumps({"id": "x", "question": "2+3?", "answer": "5"}) + "\n")
    q = load_questions(own)[0]
    assert q.kind == "number" and q.id == "x"
    with pytest.raises(ValueError, match="cannot tell the dataset format"):
        load_questions(tmp_path / "whatever.json")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="no questions"):
        load_questions(tmp_path / "empty.jsonl")
