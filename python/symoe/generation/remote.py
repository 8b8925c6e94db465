"""Remote engine: a model behind an OpenAI-compatible server (vLLM, SGLang, TGI, Ollama,
llama.cpp's server, a hosted API), reached through :class:`.openai_client.RemoteClient`.

Requests go out concurrently, each with its own deadline, retried with backoff (bounded in count
and time); each finished generation is handed to ``on_done`` the moment it arrives, so the
scheduler stores it at once. ``load`` is a health check (the server lists the served model id);
``unload`` does nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Sequence
from typing import Any

from ..errors import SymoeError
from ..records import Request
from .endpoint import EndpointSettings, public_url
from .engine import BatchInfo, Clock, Engine, EngineError, ModelSettings, OnDone, OnText
from .openai_client import RemoteClient, generate_concurrently


class RemoteEngine(Engine):
    """The "device" of one endpoint: its model is always available and uses no local memory."""

    def __init__(self, device: int, settings: EndpointSettings, clock: Clock | None = None):
        self.device, self.settings = device, settings
        self.clock = clock or Clock()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._client: RemoteClient | None = None
        self._retries_before = 0
        self.loaded: set[str] = set()

    @property
    def client(self) -> RemoteClient:
        """The endpoint's client, made on first use (the key is read then)."""
        with self._lock:
            if self._closed.is_set():
                raise EngineError(f"device {self.device} ({self.settings.where}): engine closed")
            if self._client is None:
                try:
                    self._client = RemoteClient(self.settings, self._closed)
                except SymoeError as e:
                    raise EngineError(str(e)) from None
            return self._client

    def prepare(self) -> None:
        """Fail fast: the endpoint answers and serves the model (before any local model loads)."""
        self.client.check(self.clock.now() + self.settings.health_timeout_s, self.clock)

    def _own(self, model: str, what: str) -> None:
        if model != self.settings.name:
            raise EngineError(f"{what}: device {self.device} serves only {self.settings.where}, not model {model}")

    def load(self, model: ModelSettings, what: str, deadline: float, keep_spare: bool = True) -> dict[str, Any]:
        self._own(model.name, what)
        t0 = time.perf_counter()
        try:
            self.client.check(deadline, self.clock)
        except EngineError as e:
            raise EngineError(f"{what}: {e}") from None
        with self._lock:
            self.loaded.add(model.name)
        return {"load_s": time.perf_counter() - t0, "endpoint": public_url(self.settings.url)}

    def generate(self, model: str, requests: Sequence[Request], on_done: OnDone, what: str, deadline: float) -> BatchInfo:
        return self.generate_streaming(model, requests, on_done, lambda key, text: None, (), what, deadline)

    def generate_streaming(self, model: str, requests: Sequence[Request], on_done: OnDone, on_text: OnText,
                           streamed: Collection[str], what: str, deadline: float) -> BatchInfo:
        self._own(model, what)
        if not self.alive(model):
            raise EngineError(f"{what}: {self.settings.where} was not checked (loaded) on device {self.device}")
        return generate_concurrently(self.client, requests, on_done, what, deadline, self.clock, on_text, streamed)

    def unload(self, model: str, what: str, deadline: float) -> None:
        self._own(model, what)
        with self._lock:
            self.loaded.discard(model)

    def alive(self, model: str) -> bool:
        with self._lock:
            return model in self.loaded and not self._closed.is_set()

    def kill(self, model: str) -> None:
        with self._lock:
            self.loaded.discard(model)

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            c, self._client = self._client, None
            self.loaded.clear()
        if c is not None:
            self._retries_before += c.retries
            c.close()

    @property
    def retries(self) -> int:
        """Attempts after a first one, over this engine's life."""
        with self._lock:
            return self._retries_before + (self._client.retries if self._client is not None else 0)
