"""Prompts of SYMBOLIC_MOE.md sections 2 and 6: the expert's zero-shot chain of thought and the
aggregator's synthesis turn. Each returns chat messages (one user turn); engines apply the
model's chat template, or use ``as_completion`` for base models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

AnswerKind = Literal["letter", "number"]

LETTER_FORMAT = ("Think step by step, then finish your response with \"The answer is (X)\" where X is the "
                 "letter of the correct option.")
NUMBER_FORMAT = "Think step by step, then finish your response with \"The answer is \\boxed{X}\" where X is the final answer."


def answer_format(kind: AnswerKind) -> str:
    """The answer-format instruction for a kind of question."""
    return LETTER_FORMAT if kind == "letter" else NUMBER_FORMAT


def expert_messages(question: str, kind: AnswerKind) -> list[dict[str, str]]:
    """Chat messages asking an expert to answer a question."""
    return [{"role": "user", "content": f"{question.strip()}\n\n{answer_format(kind)}"}]


def strip_reasoning(response: str) -> str:
    """Responses of reasoning models are cut to the text after ``</think>``."""
    return response.split("</think>")[-1].strip() if "</think>" in response else response.strip()


def aggregator_messages(question: str, kind: AnswerKind, responses: Sequence[str]) -> list[dict[str, str]]:
    """Chat messages asking the aggregator to merge the experts' answers."""
    blocks = "\n\n".join(f"### Model {i + 1}'s response:\n{strip_reasoning(r)}" for i, r in enumerate(responses))
    text = (
        "You have been provided with a set of responses from various models to the following question. "
        "Your task is to synthesize these responses into a single, high-quality response. It is crucial to "
        "critically evaluate the information provided in these responses, recognizing that some of it may be "
        "biased or incorrect. Your response should not simply replicate the given answers but should offer a "
        "refined, accurate, and comprehensive reply to the question.\n\n"
        f"{blocks}\n\n### Question:\n{question.strip()}\n\n{answer_format(kind)}"
    )
    return [{"role": "user", "content": text}]


def keyword_messages(question: str) -> list[dict[str, str]]:
    """Section 1: 2-5 comma-separated skill keywords, in the form ``Keywords: a, b, c``."""
    text = (
        "What core knowledge, subjects or skills are needed to answer the question below? Give 2 to 5 "
        "comma-separated keywords and nothing else, in the form \"Keywords: a, b, c\". Example keywords from "
        "diverse fields: psychology, virology, property law, finance, organic chemistry, algebra, "
        "probability, macroeconomics.\n\n"
        f"Question: {question.strip()}"
    )
    return [{"role": "user", "content": text}]


def as_completion(messages: Sequence[dict[str, str]]) -> str:
    """Plain completion prompt for base models without a chat template."""
    body = "\n\n".join(m["content"] for m in messages)
    return f"{body}\n\nResponse:"
