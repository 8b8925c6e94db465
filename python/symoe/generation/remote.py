"""Remote engine: a model behind an OpenAI-compatible server (vLLM, SGLang, TGI, Ollama,
llama.cpp's server, a hosted API), reached with the ``openai`` client library.

Requests go out concurrently (up to ``max_concurrency`` threads), each with its own deadline, and
are retried with exponential backoff on timeouts, 429, 5xx, dropped connections and malformed
answers, bounded in count and time. Each finished generation is handed to ``on_done`` (on the
caller's thread) the moment it arrives, so the scheduler stores it at once. ``load`` is a health
check (the server lists the served model id); ``unload`` does nothing.

The API key is read from the environment variable the pool names, when the client is made; it is
never stored, logged, or put into an error message.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import openai

from ..errors import SymoeError
from .engine import BatchInfo, Clock, Engine, EngineError, EngineTimeout, ModelSettings, OnDone, generation_from_event
from .requests import Generation, Request

if TYPE_CHECKING:
    from ..config import ModelSpec

log = logging.getLogger("symoe.remote")

# Status codes worth another try: request timeout, conflict, rate limit, server errors.
RETRY_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))


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


class Malformed(Exception):
    """A response that does not carry a generation (retried like a server error)."""


class Fatal(Exception):
    """An answer that another try will not change (400, 401, 404, ...)."""


class RemoteClient:
    """One endpoint's client: health check and one request with retries."""

    def __init__(self, settings: EndpointSettings, closed: threading.Event | None = None):
        self.s = settings
        self._key = settings.api_key()
        # Retries are ours (bounded by the step's deadline, interruptible on close), not the library's.
        self.client = openai.OpenAI(base_url=settings.url, api_key=self._key, max_retries=0,
                                    timeout=settings.request_timeout_s)
        self.closed = closed or threading.Event()
        self.retries = 0  # attempts after a first one, over this client's life
        self._lock = threading.Lock()

    def scrub(self, text: str) -> str:
        """``text`` with the key blanked out (a server might echo a header back)."""
        return text.replace(self._key, "***") if self._key != "EMPTY" else text

    def check(self, deadline: float, clock: Clock) -> None:
        """The server answers and lists the model; else an error naming model and URL, at once."""
        t = min(self.s.health_timeout_s, max(0.1, deadline - clock.now()))
        try:
            ids = [m.id for m in self.client.models.list(timeout=t)]
        except openai.APIStatusError as e:
            raise EngineError(self.scrub(f"{self.s.where}: GET /models answered {e.status_code}: {e.message}")) from None
        except openai.APIError as e:
            raise EngineError(self.scrub(f"{self.s.where}: the server does not answer GET /models within {t:.0f} s "
                                         f"({type(e).__name__}: {e})")) from None
        except (ValueError, TypeError, AttributeError) as e:
            raise EngineError(self.scrub(f"{self.s.where}: GET /models gave a malformed answer ({e})")) from None
        if self.s.model_id not in ids:
            raise EngineError(f"{self.s.where}: the server does not serve {self.s.model_id!r} (it lists "
                              f"{', '.join(map(repr, ids[:10])) or 'nothing'})")

    def _once(self, r: Request, timeout: float) -> dict[str, Any]:
        """One attempt; the finished-generation event the engines share."""
        p = r.params
        common: dict[str, Any] = dict(model=self.s.model_id, temperature=p.temperature, max_tokens=p.max_tokens,
                                      seed=p.seed, timeout=timeout)
        try:
            if self.s.chat:
                if r.messages is None:
                    raise Fatal(f"request {r.key[:12]} has no chat messages for a chat endpoint")
                resp: Any = self.client.chat.completions.create(messages=list(r.messages), **common)  # type: ignore[arg-type]
            else:
                if r.prompt is None:
                    raise Fatal(f"request {r.key[:12]} has no prompt for a completion endpoint")
                resp = self.client.completions.create(prompt=r.prompt, **common)
        except openai.APIStatusError as e:
            msg = str(e.message)[:300]
            msg = msg if msg.startswith("Error code") else f"HTTP {e.status_code}: {msg}"
            if e.status_code in RETRY_STATUS:
                raise _Retry(msg, _retry_after(e)) from None
            raise Fatal(msg) from None
        except openai.APIConnectionError as e:  # timeouts, refused or dropped connections
            raise _Retry(f"{type(e).__name__}: {e}") from None
        except (openai.APIResponseValidationError, ValueError) as e:  # unparsable JSON included
            raise Malformed(f"unparsable response: {str(e)[:200]}") from None
        try:
            choice = resp.choices[0]
            text = choice.message.content if self.s.chat else choice.text
            usage = resp.usage
            ev = {"id": r.key, "text": text, "tokens": usage.completion_tokens, "prompt_tokens": usage.prompt_tokens,
                  "finish": choice.finish_reason}
        except (AttributeError, IndexError, TypeError, KeyError) as e:
            raise Malformed(f"response without a generation ({type(e).__name__}: {e}): {str(resp)[:200]}") from None
        if not isinstance(text, str) or not isinstance(ev["tokens"], int) or not isinstance(ev["finish"], str):
            raise Malformed(f"response without text, token usage or finish reason: {str(resp)[:200]}")
        return ev

    def request(self, r: Request, deadline: float, clock: Clock, stop: threading.Event) -> dict[str, Any]:
        """``r`` with retries: bounded by ``max_attempts`` and by ``deadline``; ``stop`` (or a
        closed engine) ends the waiting between attempts."""
        attempt, wait = 0, self.s.backoff_s
        while True:
            attempt += 1
            left = deadline - clock.now()
            if left <= 0:
                raise EngineTimeout(f"{self.s.where}: request {r.key[:12]} missed its deadline")
            try:
                return self._once(r, min(self.s.request_timeout_s, left))
            except Fatal as e:
                raise EngineError(self.scrub(f"{self.s.where}: request {r.key[:12]} failed: {e}")) from None
            except (_Retry, Malformed) as e:
                after = e.after if isinstance(e, _Retry) else None
                pause = min(self.s.backoff_max_s, after if after is not None else wait * (0.5 + random.random()))
                if attempt >= self.s.max_attempts or clock.now() + pause >= deadline:
                    why = "attempts" if attempt >= self.s.max_attempts else "time before the deadline"
                    err = EngineTimeout if why != "attempts" else EngineError
                    raise err(self.scrub(f"{self.s.where}: request {r.key[:12]} failed after {attempt} attempt(s), "
                                         f"no {why} left: {e}")) from None
                log.warning("%s", self.scrub(f"{self.s.where}: attempt {attempt} of request {r.key[:12]} failed "
                                             f"({e}); retrying in {pause:.1f} s"))
                with self._lock:
                    self.retries += 1
                if stop.wait(pause) or self.closed.is_set():
                    raise EngineError(f"{self.s.where}: request {r.key[:12]} stopped") from None
                wait = min(self.s.backoff_max_s, wait * 2)

    def close(self) -> None:
        """Stop retrying and close the connections (requests in flight fail)."""
        self.closed.set()
        self.client.close()


class _Retry(Exception):
    """A transient failure; ``after``: the server's Retry-After, if it gave one."""

    def __init__(self, msg: str, after: float | None = None):
        super().__init__(msg)
        self.after = after


def _retry_after(e: openai.APIStatusError) -> float | None:
    try:
        v = float(e.response.headers.get("retry-after", ""))
    except (ValueError, AttributeError):
        return None
    return v if math.isfinite(v) and v >= 0 else None


def generate_concurrently(client: RemoteClient, requests: Sequence[Request], on_done: OnDone, what: str,
                          deadline: float, clock: Clock) -> BatchInfo:
    """Every request through ``client``, ``max_concurrency`` at a time; ``on_done`` on this thread
    as each arrives. On the first failure no new request starts, those in flight are still
    awaited and handed over (nothing that arrived is lost), then the failure is raised."""
    pending = {r.key: r for r in requests}
    n = len(requests)
    if n == 0:
        return BatchInfo(0.0, 0, 0, 0)
    stop = threading.Event()
    out: queue.Queue[tuple[Request, dict[str, Any] | None, BaseException | None]] = queue.Queue()
    t0 = time.perf_counter()

    def one(r: Request) -> None:
        if stop.is_set():
            out.put((r, None, None))
            return
        try:
            out.put((r, client.request(r, deadline, clock, stop), None))
        except BaseException as e:  # handed to the caller's thread; no new request starts
            stop.set()
            out.put((r, None, e))

    pool = ThreadPoolExecutor(min(client.s.max_concurrency, n), thread_name_prefix=f"symoe-remote-{client.s.name}")
    stats = [0, 0, 0]
    failure: BaseException | None = None
    try:
        for r in requests:
            pool.submit(one, r)
        for _ in range(n):
            # Each attempt is bounded by the deadline; the grace covers a thread that is just
            # returning, not a hung server.
            left = deadline - clock.now()
            try:
                r, ev, err = out.get(timeout=None if math.isinf(left) else max(0.0, left) + 30.0)
            except queue.Empty:
                stop.set()
                raise EngineTimeout(f"{what}: {client.s.where}: {len(pending)} requests unanswered by the "
                                    f"deadline") from None
            if err is not None:
                if failure is None:
                    failure = err
                    stop.set()
                continue
            if ev is None:  # skipped after a failure
                continue
            g: Generation = generation_from_event(ev, pending, what, time.perf_counter() - t0)
            del pending[g.key]
            stats[0] += g.tokens
            stats[1] += g.prompt_tokens
            stats[2] += 1
            on_done(g)
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    if failure is not None:
        if isinstance(failure, EngineError):
            raise type(failure)(f"{what}: {failure}") from None
        raise EngineError(client.scrub(f"{what}: {client.s.where}: {type(failure).__name__}: {failure}")) from failure
    # No first-token time: answers come whole (no streaming).
    return BatchInfo(time.perf_counter() - t0, stats[0], stats[1], stats[2])


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
        self._own(model, what)
        if not self.alive(model):
            raise EngineError(f"{what}: {self.settings.where} was not checked (loaded) on device {self.device}")
        return generate_concurrently(self.client, requests, on_done, what, deadline, self.clock)

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
