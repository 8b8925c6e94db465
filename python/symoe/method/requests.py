"""The one place that builds every request of a run (expert answers, aggregations, keyword
samples, the aggregator benchmark) from the prompts; the records themselves are :mod:`symoe.records`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..records import Message, Request, Role, Sampling, SamplingParams, generation_key, seed_for
from .prompts import aggregator_messages, as_completion, expert_messages, keyword_messages

if TYPE_CHECKING:
    from ..config.pool import Config
    from .datasets import Question


class ExpertTable(Protocol):
    """What :meth:`Requests.plan_experts` reads of a plan (a ``planning.Plan``; method sits below planning)."""

    @property
    def config(self) -> Config:
        """The pool (model names by id)."""
    @property
    def experts(self) -> np.ndarray:
        """N x k model ids."""
    @property
    def k(self) -> int:
        """Experts per question."""


class Requests:
    """Builds every request of a run: expert answers, aggregations, keyword samples and the
    aggregator benchmark. Needs the pool to know which models take chat messages and which have
    their own ``max_tokens`` (it then replaces the run's for that model's answers)."""

    def __init__(self, cfg: Config, sampling: Sampling = Sampling()):
        self.cfg, self.s = cfg, sampling

    def _make(self, model: str, messages: list[Message], role: Role, slot: int, question: str, max_tokens: int,
              temperature: float | None = None, seed_slot: int | None = None) -> Request:
        seed_role = "aggregate" if role == "aggregator-benchmark" else role
        params = SamplingParams(self.s.temperature if temperature is None else temperature, int(max_tokens),
                                seed_for(self.s.seed, question, seed_role, slot if seed_slot is None else seed_slot))
        if self.cfg.model(model).chat:
            payload: dict[str, Any] = {"messages": messages}
            msgs, prompt = tuple(messages), None
        else:
            prompt = as_completion(messages)
            payload, msgs = {"prompt": prompt}, None
        key = generation_key(model, payload, params.as_dict(), role, slot)
        return Request(key, model, role, slot, question, params, msgs, prompt)

    def expert(self, model: str, q: Question, slot: int) -> Request:
        """The expert's chain-of-thought answer; profiling uses the same request (slot 0)."""
        return self._make(model, expert_messages(q.text, q.kind), "expert", slot, q.id,
                          self.cfg.model(model).max_tokens or self.s.max_tokens)

    def plan_experts(self, plan: ExpertTable, questions: Sequence[Question]) -> list[Request]:
        """Every expert request of ``plan``, question by question in slot order (item
        ``q * k + slot`` of the plan's expert runs)."""
        names = plan.config.names
        return [self.expert(names[plan.experts[q, j]], qu, j) for q, qu in enumerate(questions) for j in range(plan.k)]

    def aggregate(self, model: str, q: Question, expert_texts: Sequence[str]) -> Request:
        """The aggregation request of a question from its experts' answers."""
        return self._make(model, aggregator_messages(q.text, q.kind, expert_texts), "aggregate", 0, q.id,
                          self.cfg.model(model).max_tokens or self.s.aggregate_max_tokens)

    def aggregator_benchmark(self, model: str, q: Question, responses: Sequence[str]) -> Request:
        """The aggregation prompt on the synthetic benchmark (seeded like a real aggregation)."""
        return self._make(model, aggregator_messages(q.text, q.kind, responses), "aggregator-benchmark", 0, q.id,
                          self.cfg.model(model).max_tokens or self.s.aggregate_max_tokens)

    def keywords(self, model: str, q: Question) -> list[Request]:
        """``keyword_samples`` samples at temperature 0.7 (SYMBOLIC_MOE.md section 1)."""
        return [self._make(model, keyword_messages(q.text), "keywords", i, q.id, self.s.keyword_max_tokens, 0.7)
                for i in range(self.s.keyword_samples)]
