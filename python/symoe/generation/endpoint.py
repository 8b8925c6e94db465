"""Endpoint settings: how to reach one model on an OpenAI-compatible server (a pool entry with
``endpoint``). The API key is read from the environment variable the pool names, when asked; it is
never stored, logged, or put into an error message."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from ..errors import SymoeError

if TYPE_CHECKING:
    from ..config.pool import ModelSpec


def public_url(url: str) -> str:
    """``url`` without user:password, for messages."""
    p = urlsplit(url)
    host = p.hostname or ""
    netloc = f"{host}:{p.port}" if p.port else host
    return urlunsplit((p.scheme, netloc, p.path, "", ""))


@dataclass(frozen=True)
class EndpointSettings:
    """How to reach one model on an OpenAI-compatible server (a pool entry with ``endpoint``)."""

    name: str                         # the model's name in the pool (and in the store)
    url: str                          # base URL, e.g. http://host:8000/v1
    served_name: str | None = None    # the model id the server knows (default: ``name``)
    chat: bool = True                 # chat completions (False: plain completions)
    api_key_env: str | None = None    # NAME of the environment variable holding the key
    max_concurrency: int = 8
    request_timeout_s: float = 600.0  # one attempt of one request, at most (the step's deadline also bounds it)
    max_attempts: int = 5             # per request: the first try and its retries
    backoff_s: float = 0.5            # first wait between attempts; doubles, with jitter, up to backoff_max_s
    backoff_max_s: float = 8.0
    health_timeout_s: float = 10.0

    @classmethod
    def of(cls, m: ModelSpec) -> EndpointSettings:
        """The settings of a pool model with an ``endpoint``."""
        if not m.endpoint:
            raise SymoeError(f"model {m.name} has no endpoint")
        return cls(m.name, m.endpoint, m.served_name, m.chat, m.api_key_env, m.max_concurrency)

    def __post_init__(self) -> None:
        where = f"model {self.name}"
        if urlsplit(self.url).scheme not in ("http", "https"):
            raise SymoeError(f"{where}: endpoint must be an http(s) URL, got {public_url(self.url)!r}")
        if self.max_concurrency < 1:
            raise SymoeError(f"{where}: max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.max_attempts < 1:
            raise SymoeError(f"{where}: max_attempts must be >= 1, got {self.max_attempts}")
        for f in ("request_timeout_s", "backoff_s", "backoff_max_s", "health_timeout_s"):
            v = getattr(self, f)
            if not (math.isfinite(v) and v > 0):
                raise SymoeError(f"{where}: {f} must be a positive number, got {v!r}")

    @property
    def model_id(self) -> str:
        """The id requests name: ``served_name``, else the pool name."""
        return self.served_name or self.name

    @property
    def where(self) -> str:
        """What every message names: the model, its served id and the URL (never the key)."""
        served = f" (served as {self.model_id!r})" if self.model_id != self.name else ""
        return f"model {self.name}{served} at {public_url(self.url)}"

    def api_key(self) -> str:
        """The key from the named environment variable, read now; servers without auth get a
        placeholder (the client library insists on one)."""
        if not self.api_key_env:
            return "EMPTY"
        key = os.environ.get(self.api_key_env)
        if not key:
            raise SymoeError(f"{self.where}: environment variable {self.api_key_env} (api_key_env) is not set")
        return key
