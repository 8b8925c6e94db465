import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symoe.method import extraction
from symoe.method.datasets import load_questions
from symoe.method.extraction import extract_answer, extract_boxed, extract_letter, extract_number, option_count
from symoe.method.grading import answer_of, is_correct, majority
from symoe.method.prompts import aggregator_messages, as_completion, expert_messages, strip_reasoning

# Table of realistic outputs: (id, text, kind, n_options, expected extraction).
# MMLU-Pro has 10 options (A-J), GPQA and MedMCQA 4 (A-D), AIME integer answers 0-999.
CASES = [
    # --- MMLU-Pro (A-J), instruction-tuned experts -------------------------------------------------
    ("mmlu-plain", "The Michaelis constant is reached when nearly all enzyme molecules are bound.\n"
     "Adding more substrate no longer raises the rate.\n\nThe answer is (G).", "letter", 10, "G"),
    ("mmlu-changed-mind", "At first glance the answer is (B). However, recomputing the work done, "
     "W = F d = 3 N x 0.4 m = 1.2 J, so the answer is (C).", "letter", 10, "C"),
    ("mmlu-bold-answer", "Step 1: compute the present value.\nStep 2: discount at 5%.\n\n"
     "**Answer: (H)**", "letter", 10, "H"),
    ("mmlu-option-line", "Let's evaluate each option.\nThe only consistent value is\nC) 1.2 J", "letter", 10, "C"),
    ("mmlu-answer-colon", "Cognitive dissonance theory predicts attitude change to reduce tension.\n\n"
     "Answer: E", "letter", 10, "E"),
    ("mmlu-letter-J", "Equilibrium means forward and reverse rates are equal.\nThe answer is J.", "letter", 10, "J"),
    ("mmlu-letter-I", "Since the activation energy is lowered by the catalyst, the answer is (I)", "letter", 10, "I"),
    ("mmlu-unit-not-letter", "The kinetic energy is 1/2 m v^2 = 1.2 J.\nThis matches option (C).", "letter", 10, "C"),
    ("mmlu-bold-letter", "Comparing all ten choices, the best fit is:\n\n**F**", "letter", 10, "F"),
    ("mmlu-correct-option", "Options A through D ignore opportunity cost. "
     "The correct option is D, since it accounts for it.", "letter", 10, "D"),
    ("mmlu-placeholder-echo", "I will reason step by step and print \"The answer is (X)\".\n"
     "The tax incidence falls on consumers when demand is inelastic.\nThe answer is (A)", "letter", 10, "A"),
    ("mmlu-markdown-heading", "### Reasoning\nThe statute of frauds requires a writing.\n\n"
     "### Final Answer\n**(B) The contract is unenforceable.**", "letter", 10, "B"),
    ("mmlu-no-answer", "I am not sure about this one; it depends on the jurisdiction and the facts.",
     "letter", 10, None),
    ("mmlu-article-pronoun", "I think a mass of 2 kg falls. A rock would hit first.", "letter", 10, None),
    ("mmlu-truncated", "Let me check each option. (A) is false. (B) is false. (C) is", "letter", 10, "C"),
    # --- MMLU-Pro, R1-distilled aggregators (DeepSeek-R1-Distill-Llama-8B) --------------------------
    ("mmlu-r1-boxed", "<think>\nModel 1 says (A), model 2 says (C). The Lineweaver-Burk intercept... "
     "so the answer is (A)? No, wait, saturation means G.\n</think>\n\n"
     "The enzyme is saturated with substrate.\n\n**Final Answer**\n\\boxed{G}", "letter", 10, "G"),
    ("mmlu-r1-final-answer-colon", "<think>Hmm, maybe (E). Actually the answer is (E).</think>\n"
     "Final Answer: \\boxed{B}", "letter", 10, "B"),
    ("mmlu-r1-answer-is-boxed", "<think>okay the options... D seems right</think>\n\n"
     "Therefore, the answer is $\\boxed{D}$.", "letter", 10, "D"),
    ("mmlu-r1-boxed-text", "<think>...</think>\nThe answer is $\\boxed{\\text{(H)}}$", "letter", 10, "H"),
    ("mmlu-r1-boxed-with-text", "<think>so the work is 1.2 J which is C</think>\n"
     "The work done is 1.2 J.\n\n\\boxed{C) 1.2 J}", "letter", 10, "C"),
    ("mmlu-r1-no-tail-answer", "<think>Between B and F... the answer is (F).</think>\n\n"
     "I hope this helps!", "letter", 10, "F"),
    ("mmlu-r1-cut-off", "<think>\nLet me reconsider. Option (D) is wrong. So the answer is (J). Wait, "
     "but maybe", "letter", 10, "J"),
    ("mmlu-aggregator-quotes", "Model 1 concluded the answer is (A), and model 3 boxed \\boxed{B}. "
     "Both overlook the discount rate.\n\nThe answer is (E).", "letter", 10, "E"),
    # --- GPQA (A-D), R1-distilled (DeepSeek-R1-Distill-Qwen-7B) and instruction-tuned ---------------
    ("gpqa-r1-boxed", "<think>\nThe Diels-Alder adduct has endo stereochemistry... option B.\n</think>\n\n"
     "The product is the endo adduct.\n\n\\[\n\\boxed{B}\n\\]", "letter", 4, "B"),
    ("gpqa-fbox", "The energy splitting gives a wavelength of 21 cm.\n\\fbox{A}", "letter", 4, "A"),
    ("gpqa-out-of-range-ignored", "Options E and F do not exist here.\nThe answer is (C).", "letter", 4, "C"),
    ("gpqa-out-of-range-only", "The answer is (F).", "letter", 4, None),
    ("gpqa-standalone-fallback", "Between the two remaining candidates, only one conserves parity.\n"
     "So: D", "letter", 4, "D"),
    ("gpqa-bold-in-think", "<think>**A** looks wrong, **C** maybe</think>\n"
     "After checking the symmetry: the correct answer is **B**.", "letter", 4, "B"),
    ("gpqa-answer-lowercase-phrase", "the answer is: **C**", "letter", 4, "C"),
    ("gpqa-boxed-number-then-letter", "The rate constant is \\boxed{3.2 \\times 10^{-3}} s^-1, "
     "which corresponds to option (D).", "letter", 4, "D"),
    # --- MedMCQA (A-D) ------------------------------------------------------------------------------
    ("medmcqa-plain", "Scurvy results from vitamin C deficiency impairing collagen synthesis.\n"
     "The answer is (B)", "letter", 4, "B"),
    ("medmcqa-vitamin-not-letter", "Vitamin C deficiency causes bleeding gums.\nCorrect option: A",
     "letter", 4, "A"),
    ("medmcqa-option-word", "Hepatitis B vaccine is given at birth, so the answer is option D.", "letter", 4, "D"),
    ("medmcqa-letter-dot", "Answer: A. Succinylcholine", "letter", 4, "A"),
    ("medmcqa-exaone-bold", "**Explanation:** The femoral nerve supplies the quadriceps.\n\n"
     "**Correct Answer: (C) Femoral nerve**", "letter", 4, "C"),
    # --- AIME (integers 0-999) ----------------------------------------------------------------------
    ("aime-boxed", "Summing the cases gives 12 + 21 = 33.\nThe answer is \\boxed{33}.", "number", None, "33"),
    ("aime-fbox", "Hence $m+n = \\fbox{33}$.", "number", None, "33"),
    ("aime-boxed-no-brace", "so the answer is \\boxed 33", "number", None, "33"),
    ("aime-boxed-frac", "Total is $\\boxed{\\frac{66}{2}}$", "number", None, "33"),
    ("aime-boxed-equation", "Therefore \\boxed{x = 33}", "number", None, "33"),
    ("aime-final-answer-text", "Adding the two counts, the final answer is 33.", "number", None, "33"),
    ("aime-leading-zero", "The answer is \\boxed{033}", "number", None, "33"),
    ("aime-last-box-wins", "First attempt: \\boxed{115}. Rechecking the overcount, "
     "the answer is \\boxed{116}.", "number", None, "116"),
    ("aime-nested", "$\\boxed{\\dfrac{1}{2}}$ is the probability", "number", None, "\\frac{1}{2}"),
    ("aime-r1-think", "<think>\nMaybe \\boxed{808}? No, I double counted one case, so 809.\n</think>\n\n"
     "The number of such $n$ is $\\boxed{809}$.", "number", None, "809"),
    ("aime-r1-tail-no-box", "<think>\nI get \\boxed{196} at first... then 197.\n</think>\n\n"
     "**Final Answer**\nThe final answer is 197.", "number", None, "197"),
    ("aime-r1-cut-off", "<think>\nSo far \\boxed{384} but let me verify the case where", "number", None, "384"),
    ("aime-template-echo", "I must print \"The answer is \\boxed{X}\". The result is 540.", "number", None, "540"),
    ("aime-thousands", "The count is \\boxed{1,000}", "number", None, "1000"),
    ("aime-unit", "The side length is \\boxed{25 \\text{ cm}}", "number", None, "25"),
    ("aime-degrees", "The angle is \\boxed{45^\\circ}", "number", None, "45"),
    ("aime-nothing", "I could not finish this problem.", "number", None, None),
    ("aime-unclosed-last-box", "Answer \\boxed{204} is confirmed; writing \\boxed{20", "number", None, "204"),
]

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


def test_grading_real_items(bench_data):
    aime = load_questions(bench_data / "AIME24_test.json")[0]
    assert is_correct(extract_answer(rf"The answer is \boxed{{{aime.gold}}}", "number"), aime.gold, "number")
    assert is_correct("33.0", "33", "number") and is_correct("033", "33", "number")
    assert not is_correct("34", "33", "number") and not is_correct(None, "33", "number")
    mmlu = load_questions(bench_data / "MMLU_Pro_test.json", limit=5)
    for q in mmlu:
        assert is_correct(extract_answer(f"The answer is ({q.gold})", "letter"), q.gold, "letter")
        wrong = "A" if q.gold != "A" else "B"
        assert not is_correct(extract_answer(f"The answer is ({wrong})", "letter"), q.gold, "letter")


def test_prompts_on_real_question(bench_data):
    q = load_questions(bench_data / "MMLU_Pro_test.json", limit=1)[0]
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


def test_dataset_loaders_and_errors(bench_data, tmp_path):
    assert len(load_questions(bench_data / "MedMCQA_train.json")) == 504
    assert load_questions(bench_data / "AIME24_train.json")[0].kind == "number"
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


@pytest.mark.parametrize("text,kind,n_options,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_extraction_table(text, kind, n_options, expected):
    assert extract_answer(text, kind, n_options) == expected


def decided_by(text, kind, n_options):
    """(region, step, answer): which step of the extractor's chain (extraction.extract_letter and
    extract_number) gives the answer, in the text after ``</think>`` (region 0) or the whole text (1)."""
    if kind == "letter":
        letters = extraction._letters(n_options)
        phrase, *rest = extraction._letter_patterns(letters)
        for r, region in enumerate(extraction._regions(text)):
            if hit := extraction._last(phrase, region):
                return r, "phrase", hit
            if hits := [h for b in extraction._boxes(region) if (h := extraction._boxed_letter(b, letters))]:
                return r, "boxed", hits[-1]
            for step, pat in zip(("bold", "option", "standalone"), rest):
                if hit := extraction._last(pat, region):
                    return r, step, hit
        return None, "none", None
    for r, region in enumerate(extraction._regions(text)):
        if boxes := [b for b in extraction._boxes(region) if b and b != "X"]:
            return r, "box", extraction.canonical(boxes[-1])
        if extraction.mv_parse(region):
            return r, "math-verify", extract_number(region)
    return None, "none", None


def test_table_size_and_coverage(cases=CASES):
    # Size: enough distinct cases. Coverage: every step of both chains (and "no answer") decides at
    # least one case, so a change to any step changes some expected extraction; reasoning outputs,
    # the fallback from an answerless </think> tail to the whole text, and every option count occur.
    assert len(cases) >= 40 and len({c[0] for c in cases}) == len(cases)
    decided = [(kind, *decided_by(text, kind, n)) for _, text, kind, n, _ in cases]
    for (kind, _, _, hit), (cid, text, _, n, _) in zip(decided, cases):
        assert hit == extract_answer(text, kind, n), cid  # the chain above is the extractor's
    steps = {(kind, step) for kind, _, step, _ in decided}
    assert steps == {("letter", s) for s in ("phrase", "boxed", "bold", "option", "standalone", "none")} | \
        {("number", s) for s in ("box", "math-verify", "none")}, steps
    assert any(region == 1 for _, region, _, _ in decided)
    assert sum("<think>" in c[1] for c in cases) >= 10
    assert {c[3] for c in cases} == {4, 10, None}


GRADES = [
    ("33", "33", "number", True), ("33.0", "33", "number", True), ("033", "33", "number", True),
    ("\\frac{66}{2}", "33", "number", True), ("x = 33", "33", "number", True),
    ("\\dfrac{66}{2}", "33.0", "number", True), ("1,000", "1000", "number", True),
    ("\\frac{1}{2}", "0.5", "number", True), ("\\sqrt{2}", "\\sqrt 2", "number", True),
    ("34", "33", "number", False), ("33.5", "33", "number", False), ("\\frac{67}{2}", "33", "number", False),
    (None, "33", "number", False), ("", "33", "number", False), ("X", "33", "number", False),
    ("C", "C", "letter", True), ("c", "C", "letter", True), ("(C)", "C", "letter", True),
    ("D", "C", "letter", False), (None, "C", "letter", False),
]


@pytest.mark.parametrize("predicted,gold,kind,expected", GRADES)
def test_is_correct_table(predicted, gold, kind, expected):
    assert is_correct(predicted, gold, kind) is expected


def test_table_end_to_end_grading():
    # The extracted answer of every numeric case grades right against its expected value, and a
    # different integer grades wrong.
    for _, text, kind, _, expected in CASES:
        if kind == "number" and expected is not None and expected.isdigit():
            got = extract_answer(text, kind)
            assert is_correct(got, expected, kind) and not is_correct(got, str(int(expected) + 1), kind)


def test_option_count_from_real_questions(bench_data):
    assert option_count(load_questions(bench_data / "MMLU_Pro_test.json", limit=1)[0].text) == 10
    assert option_count(load_questions(bench_data / "MedMCQA_test.json", limit=1)[0].text) == 4
    assert option_count("What is 2+2?") == 10
    with pytest.raises(ValueError, match="n_options"):
        extract_letter("The answer is (A)", 11)


def test_think_block_does_not_override_final():
    text = "<think>The answer is (A). \\boxed{A} **A**</think>\n\nThe answer is (C)."
    assert extract_letter(text, 4) == "C"
    assert extract_number("<think>\\boxed{12}</think> so \\boxed{13}") == "13"
    # a stronger pattern inside the think block does not beat a weaker one after it
    assert extract_letter("<think>so the answer is (A)</think>\n\\boxed{C}", 4) == "C"
    assert extract_letter("<think>so the answer is (A)</think>\nC) 1.2 J", 10) == "C"
    # nothing after </think>: the whole text decides
    assert extract_letter("<think>the answer is (B)</think>", 4) == "B"


def test_grading_off_the_main_thread():
    # math-verify's timeouts use SIGALRM, which only the main thread may set; the executor grades
    # from worker threads too.
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(extract_number, "so the final answer is 33.").result() == "33"
        assert pool.submit(is_correct, "\\sqrt{2}", "\\sqrt 2", "number").result() is True


LETTERS10 = "ABCDEFGHIJ"
_FRAGMENTS = st.sampled_from([
    "The answer is (", "answer: ", ")", "(", "**", "\\boxed{", "}", "\\fbox{", "<think>", "</think>", " ", "\n",
    "Option ", " is ", "I think ", "A mass ", "1.2 J", ". ", "Final Answer: ", "P(", "x = 3", "vitamin ",
] + list(LETTERS10) + list("KLMNXYZ") + ["X)", "K)", "(Z)"])


@settings(max_examples=150, deadline=None)
@given(prefix=st.text(max_size=200), n=st.sampled_from([4, 10]), data=st.data())
def test_final_answer_is_phrase_always_wins(prefix, n, data):
    x = data.draw(st.sampled_from(LETTERS10[:n]))
    assert extract_letter(f"{prefix}\nThe answer is ({x})", n) == x
    assert extract_letter(f"<think>{prefix}</think>\n\nThe answer is \\boxed{{{x}}}", n) == x


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(_FRAGMENTS, max_size=40), n=st.sampled_from([4, 10]))
def test_letters_outside_the_options_never_returned(parts, n):
    got = extract_letter("".join(parts), n)
    assert got is None or got in LETTERS10[:n]
    assert extract_answer("".join(parts), "letter") in (None, *LETTERS10)


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(_FRAGMENTS.filter(lambda f: f not in "ABCD" and f != "A mass "), max_size=40))
def test_only_out_of_range_letters_give_none(parts):
    # With 4 options, text whose option-like letters are all E-J (capitals inside words such as
    # "Final Answer" aside) yields no answer, whatever the patterns around them. ("The answer is
    # A mass ..." is left out: there "A" is read as the answer, on purpose.)
    assert extract_letter("".join(parts), 4) is None


@settings(max_examples=150, deadline=None)
@given(k=st.integers(0, 999), form=st.sampled_from(["\\boxed{%d}", "\\fbox{%d}", "\\boxed %d", "\\boxed{x = %d}",
                                                    "\\boxed{%03d}", "$\\boxed{%d}$.", "the final answer is %d."]),
       lead=st.sampled_from(["", "Let me compute. 12 + 7 = 19.\n", "<think>\\boxed{1000}</think>\n"]))
def test_aime_integers_extract_and_grade(k, form, lead):
    got = extract_number(lead + form % k)
    assert got == str(k)
    assert is_correct(got, str(k), "number") and not is_correct(got, str(k + 1), "number")


def test_answer_of_uses_the_questions_own_options():
    from symoe.method.datasets import Question

    four = Question("g1", "Which?\n(A) a\n(B) b\n(C) c\n(D) d", "B", "letter")
    ten = Question("m1", "Which?\n" + "\n".join(f"({c}) x" for c in "ABCDEFGHIJ"), "F", "letter")
    assert answer_of("The answer is (F).", ten) == "F"
    assert answer_of("The answer is (F).", four) is None  # F is not an option of a 4-option question
    assert answer_of("The answer is (C).", four) == "C"
    assert answer_of("The answer is \\boxed{33}", Question("a1", "Find n.", "33", "number")) == "33"


def _import_extraction_with(monkeypatch, math_verify):
    """Import a fresh symoe.method.extraction with ``math_verify`` as the installed package (None: missing)."""
    import importlib
    import sys

    monkeypatch.delitem(sys.modules, "symoe.method.extraction")  # restored after the test
    monkeypatch.setitem(sys.modules, "math_verify", math_verify)
    return importlib.import_module("symoe.method.extraction")


def test_missing_math_verify_fails_at_import(monkeypatch):
    # Was swallowed at every call: each non-exact numeric answer (\\sqrt{2} vs \\sqrt 2) graded wrong.
    with pytest.raises(ImportError, match=r"math-verify, which cannot be imported .*pip install 'math-verify>=0\.9'"):
        _import_extraction_with(monkeypatch, None)


def test_broken_math_verify_fails_at_import(monkeypatch):
    import types

    broken = types.ModuleType("math_verify")  # imports, but parses nothing (as with a bad antlr4 runtime)
    broken.parse = lambda s, **kw: []
    broken.verify = lambda a, b, **kw: False
    with pytest.raises(ImportError, match="math-verify is installed but does not work"):
        _import_extraction_with(monkeypatch, broken)
