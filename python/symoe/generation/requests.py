"""Typed generation requests and results, and the one place that builds them.

Every request carries its store key (a hash of model, prompt, sampling parameters, role and slot),
so a generation is stored once and found again by any later run; every seed derives from the run's
``seed`` through :func:`seed_for`.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..method.prompts import aggregator_messages, as_completion, expert_messages, keyword_messages

if TYPE_CHECKING:
    from ..config.pool import Config
    from ..method.datasets import Question
    from ..planning.plan import Plan

Role = Literal["expert", "aggregate", "keywords", "aggregator-benchmark"]
Message = dict[str, str]


@dataclass(frozen=True)
class Sampling:
    """A run's sampling choices. Paper defaults: temperature 0.7, up to 4096 new tokens."""

    temperature: float = 0.7
    max_tokens: int = 4096
    aggregate_max_tokens: int = 4096
    seed: int = 0
    keyword_samples: int = 5
    keyword_max_tokens: int = 48

    @classmethod
    def for_pool(cls, cfg: Config, max_tokens: int | None = None, seed: int = 0) -> Sampling:
        """The paper's sampling with new tokens per answer from ``max_tokens``, else the config's
        ``[engine] max_tokens``, else the paper's 4096 (aggregations alike)."""
        tokens = max_tokens or cfg.engine.max_tokens or cls.max_tokens
        return cls(max_tokens=tokens, aggregate_max_tokens=tokens, seed=seed)


@dataclass(frozen=True)
class SamplingParams:
    """What one request is sampled with (what vLLM's ``SamplingParams`` receives)."""

    temperature: float
    max_tokens: int
    seed: int

    def as_dict(self) -> dict[str, Any]:
        """As vLLM's ``SamplingParams`` keywords."""
        return {"temperature": self.temperature, "max_tokens": self.max_tokens, "seed": self.seed}

    @functools.cached_property
    def json(self) -> str:
        """As stored beside each generation (sorted keys)."""
        return json.dumps(self.as_dict(), sort_keys=True)


@dataclass(frozen=True)
class Request:
    """One generation: chat ``messages`` for instruct models, else a completion ``prompt``."""

    key: str
    model: str
    role: Role
    slot: int
    question: str
    params: SamplingParams
    messages: tuple[Message, ...] | None = None
    prompt: str | None = None

    def wire(self) -> dict[str, Any]:
        """The JSON form an engine process receives."""
        d: dict[str, Any] = {"id": self.key, **self.params.as_dict()}
        if self.messages is not None:
            d["messages"] = list(self.messages)
        else:
            d["prompt"] = self.prompt
        return d


@dataclass(frozen=True)
class Generation:
    """A finished generation as stored; ``seconds``: from the batch's start to this one's finish."""

    key: str
    model: str
    question: str
    role: str
    slot: int
    params: str  # the request's sampling parameters as sorted JSON
    text: str
    prompt_tokens: int
    tokens: int
    finish: str
    seconds: float = 0.0

    @classmethod
    def of(cls, r: Request, text: str, prompt_tokens: int, tokens: int, finish: str, seconds: float) -> Generation:
        """A stored generation for ``request`` with its measured figures."""
        return cls(r.key, r.model, r.question, r.role, r.slot, r.params.json, text, prompt_tokens, tokens, finish,
                   seconds)


def generation_key(model: str, prompt: Any, params: dict[str, Any], role: str, slot: int) -> str:
    """The store key of a generation: a hash of model, prompt, sampling, role and slot."""
    blob = json.dumps([model, prompt, params, role, slot], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def seed_for(run_seed: int, question: str, role: str, slot: int) -> int:
    """The sampling seed of one (question, role, slot) in a run: a hash, so it does not depend on
    batch order, device or thread."""
    h = hashlib.sha256(f"{run_seed}|{question}|{role}|{slot}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


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

    def plan_experts(self, plan: Plan, questions: Sequence[Question]) -> list[Request]:
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
