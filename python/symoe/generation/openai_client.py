"""OpenAI-compatible client: one endpoint's health check and requests, reached with the ``openai``
client library, each request retried with exponential backoff on timeouts, 429, 5xx, dropped
connections and malformed answers, bounded in count and time; and a batch of requests sent
concurrently (up to ``max_concurrency`` threads), each finished generation handed to ``on_done``
on the caller's thread the moment it arrives."""

from __future__ import annotations

import logging
import math
import queue
import random
import threading
import time
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai

from ..records import Generation, Request
from .endpoint import EndpointSettings
from .engine import BatchInfo, Clock, EngineError, EngineTimeout, OnDone, OnText, Tally, generation_from_event

log = logging.getLogger("symoe.remote")

# Status codes worth another try: request timeout, conflict, rate limit, server errors.
RETRY_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))


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

    def _once(self, r: Request, timeout: float, on_text: OnText | None = None) -> dict[str, Any]:
        """One attempt; the finished-generation event the engines share. With ``on_text``, streamed
        (``stream: true`` with usage in the last chunk), ``on_text`` called as the text grows."""
        p = r.params
        common: dict[str, Any] = dict(model=self.s.model_id, temperature=p.temperature, max_tokens=p.max_tokens,
                                      seed=p.seed, timeout=timeout)
        if on_text is not None:
            common.update(stream=True, stream_options={"include_usage": True})
        try:
            if self.s.chat:
                if r.messages is None:
                    raise Fatal(f"request {r.key[:12]} has no chat messages for a chat endpoint")
                resp: Any = self.client.chat.completions.create(messages=list(r.messages), **common)  # type: ignore[arg-type]
            else:
                if r.prompt is None:
                    raise Fatal(f"request {r.key[:12]} has no prompt for a completion endpoint")
                resp = self.client.completions.create(prompt=r.prompt, **common)
            if on_text is not None:
                return self._streamed(r, resp, on_text)
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
        except openai.APIError as e:  # an SSE {"error": ...} event mid-stream: tried again unstreamed
            raise Malformed(f"error event in the stream: {str(e)[:200]}") from None
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

    def _streamed(self, r: Request, chunks: Any, on_text: OnText) -> dict[str, Any]:
        """A streamed answer read chunk by chunk (inside :meth:`_once`'s error handling)."""
        text, finish, usage = "", None, None
        for c in chunks:
            usage = getattr(c, "usage", None) or usage
            if c.choices:
                ch = c.choices[0]
                piece = (ch.delta.content if self.s.chat else ch.text) or ""
                finish = ch.finish_reason or finish
                if piece:
                    text += piece
                    on_text(r.key, text)
        if usage is None or not isinstance(finish, str):  # e.g. a server that ignores stream_options
            raise Malformed("streamed response without token usage or finish reason")
        return {"id": r.key, "text": text, "tokens": usage.completion_tokens, "prompt_tokens": usage.prompt_tokens,
                "finish": finish}

    def request(self, r: Request, deadline: float, clock: Clock, stop: threading.Event,
                on_text: OnText | None = None) -> dict[str, Any]:
        """``r`` with retries: bounded by ``max_attempts`` and by ``deadline``; ``stop`` (or a
        closed engine) ends the waiting between attempts. ``on_text``: streamed (a malformed
        streamed answer is tried again unstreamed)."""
        attempt, wait = 0, self.s.backoff_s
        while True:
            attempt += 1
            left = deadline - clock.now()
            if left <= 0:
                raise EngineTimeout(f"{self.s.where}: request {r.key[:12]} missed its deadline")
            try:
                return self._once(r, min(self.s.request_timeout_s, left), on_text)
            except Fatal as e:
                raise EngineError(self.scrub(f"{self.s.where}: request {r.key[:12]} failed: {e}")) from None
            except (_Retry, Malformed) as e:
                on_text = None if isinstance(e, Malformed) else on_text
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
                          deadline: float, clock: Clock, on_text: OnText | None = None,
                          streamed: Collection[str] = ()) -> BatchInfo:
    """Every request through ``client``, ``max_concurrency`` at a time; ``on_done`` on this thread
    as each arrives (``on_text`` on the request's own thread, for those in ``streamed``). On the
    first failure no new request starts, those in flight are still awaited and handed over
    (nothing that arrived is lost), then the failure is raised."""
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
            out.put((r, client.request(r, deadline, clock, stop, on_text if r.key in streamed else None), None))
        except BaseException as e:  # handed to the caller's thread; no new request starts
            stop.set()
            out.put((r, None, e))

    pool = ThreadPoolExecutor(min(client.s.max_concurrency, n), thread_name_prefix=f"symoe-remote-{client.s.name}")
    tally = Tally()
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
            tally.add(g)
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
    # No first-token time: answers come whole (streamed ones only to their on_text).
    return tally.info(time.perf_counter() - t0)
