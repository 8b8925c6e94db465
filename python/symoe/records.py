"""What the store keeps: typed generation requests (with their sampling) and results.

Every request carries its store key (a hash of model, prompt, sampling parameters, role and slot),
so a generation is stored once and found again by any later run; every seed derives from the run's
``seed`` through :func:`seed_for`; :class:`symoe.method.requests.Requests` builds them.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .config.pool import Config

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


@dataclass(frozen=True)
class StoredQuestion:
    """A question kept in the store beside its generations, for those no dataset file holds (a
    served request's prompt): its text, answer kind, and gold answer and category ("" if unknown)."""

    id: str
    text: str
    kind: str
    gold: str = ""
    category: str = ""


def generation_key(model: str, prompt: Any, params: dict[str, Any], role: str, slot: int) -> str:
    """The store key of a generation: a hash of model, prompt, sampling, role and slot."""
    blob = json.dumps([model, prompt, params, role, slot], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def seed_for(run_seed: int, question: str, role: str, slot: int) -> int:
    """The sampling seed of one (question, role, slot) in a run: a hash, so it does not depend on
    batch order, device or thread."""
    h = hashlib.sha256(f"{run_seed}|{question}|{role}|{slot}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF
