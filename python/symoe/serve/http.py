"""The HTTP side of ``symoe serve`` (stdlib ``ThreadingHTTPServer``, one thread per connection):
``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST /v1/completions``; optional bearer-key
auth; a body-size limit checked before the body is read; every refusal a 4xx with an OpenAI-style
error body; a slow or silent client times out instead of holding a thread forever."""

from __future__ import annotations

import hmac
import json
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .mixture import Mixture
from .protocol import (
    ApiError,
    Endpoint,
    Limits,
    ServeRequest,
    parse,
    response,
    sse,
    stream_base,
    stream_chunk,
    stream_events,
    stream_tail,
)

SOCKET_TIMEOUT_S = 30.0  # a client that sends nothing for this long is dropped
PATHS: dict[str, Endpoint] = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}


class MixtureServer(ThreadingHTTPServer):
    """The server: the :class:`Mixture`, the model id it answers to, limits and the client key."""

    daemon_threads = True
    request_queue_size = 1024  # listen backlog: bursts of new connections queue instead of being reset

    def __init__(self, mixture: Mixture, model_id: str, host: str = "127.0.0.1", port: int = 8000,
                 limits: Limits = Limits(), api_key: str | None = None, request_timeout_s: float = 600.0):
        self.mixture, self.model_id, self.limits, self.api_key = mixture, model_id, limits, api_key
        self.request_timeout_s = request_timeout_s
        self.in_flight = 0  # POSTs not yet answered
        self.idle = threading.Condition()
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        """``http://HOST:PORT/v1``."""
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def serve_in_thread(self) -> threading.Thread:
        """Serve until :meth:`shutdown`, on a daemon thread."""
        t = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, name="symoe-serve-http",
                             daemon=True)
        t.start()
        return t

    def close(self, drain_s: float) -> int:
        """Stop accepting, answer what is in flight within ``drain_s``, close the socket; returns
        the requests failed for lack of time."""
        end = time.monotonic() + drain_s
        self.shutdown()
        failed = self.mixture.stop(drain_s)
        with self.idle:  # the answers are written before the process may exit
            while self.in_flight and time.monotonic() < end + 5.0:
                self.idle.wait(0.05)
        self.server_close()
        return failed


class Handler(BaseHTTPRequestHandler):
    """One connection (keep-alive: HTTP/1.1 with Content-Length on every answer)."""

    protocol_version = "HTTP/1.1"
    server: MixtureServer
    timeout = SOCKET_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (quiet; the CLI prints a summary)
        """Not logged."""

    def _send(self, code: int, body: dict[str, Any] | bytes) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/event-stream" if isinstance(body, bytes) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        if code == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, e: ApiError) -> None:
        self._send(e.status, e.body())

    def _authorised(self) -> bool:
        key = self.server.api_key
        if key is None:
            return True
        got = self.headers.get("Authorization", "")
        ok = got.startswith("Bearer ") and hmac.compare_digest(got[7:].encode(), key.encode())
        if not ok:
            self._error(ApiError(401, "missing or wrong API key (Authorization: Bearer ...)", "authentication_error",
                                 code="invalid_api_key"))
        return ok

    def do_GET(self) -> None:
        """``/v1/models``: the one model this server is."""
        if not self._authorised():
            return
        if self.path.split("?")[0].rstrip("/") != "/v1/models":
            return self._error(ApiError(404, f"no such path: GET {self.path}", code="not_found"))
        m = {"id": self.server.model_id, "object": "model", "created": 0, "owned_by": "symoe"}
        self._send(200, {"object": "list", "data": [m]})

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise ApiError(411, "send the body with a Content-Length (chunked bodies are not accepted)")
        raw = self.headers.get("Content-Length")
        if raw is None or not raw.strip().isdigit():
            self.close_connection = True
            raise ApiError(411, "a Content-Length header is required")
        n = int(raw)
        if n > self.server.limits.max_body_bytes:
            if n <= 4 * self.server.limits.max_body_bytes:  # read and drop it, so the client reads the answer
                self.rfile.read(n)
            else:
                self.close_connection = True
            raise ApiError(413, f"request body of {n} bytes is over the limit of {self.server.limits.max_body_bytes}")
        return self.rfile.read(n)

    def do_POST(self) -> None:
        """A chat or text completion by the mixture."""
        with self.server.idle:
            self.server.in_flight += 1
        try:
            self._post()
        finally:
            with self.server.idle:
                self.server.in_flight -= 1
                self.server.idle.notify_all()

    def _post(self) -> None:
        try:
            endpoint = PATHS.get(self.path.split("?")[0].rstrip("/"))
            body = self._body()  # read before any refusal, so the connection stays in step
            if not self._authorised():
                return
            if endpoint is None:
                raise ApiError(404, f"no such path: POST {self.path}", code="not_found")
            req = parse(endpoint, body, self.server.model_id, self.server.limits)
            if req.stream:
                return self._stream(req)
            answer = self.server.mixture.answer(req, self.server.request_timeout_s)
            self._send(200, response(req, answer, self.server.model_id))
        except ApiError as e:
            self._error(e)
        except (TimeoutError, ConnectionError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001  (a bug answers 500 with a body, never a dropped connection)
            self._error(ApiError(500, f"internal error: {type(e).__name__}: {e}", "server_error"))

    def _stream(self, req: ServeRequest) -> None:
        """``stream: true``: the aggregator's text as it is written, as server-sent events in a
        chunked body. Until the first piece, a failure is an error answer like any other; after
        it, an ``{"error": ...}`` event ends the stream."""
        mixture, mid = self.server.mixture, self.server.model_id
        job = mixture.submit(req)
        end = time.monotonic() + self.server.request_timeout_s

        def piece() -> str | None:  # the next piece of text; None: the job is done
            assert job.pieces is not None
            try:
                return job.pieces.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise ApiError(503, f"no answer within {self.server.request_timeout_s:g} s", "server_error",
                               code="timeout") from None

        first = piece()
        if first is None:  # done before any text: an error, or an empty answer
            return self._send(200, stream_events(req, mixture.result(job, 0), mid))
        self.send_response(200)
        for k, v in (("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"), ("Transfer-Encoding", "chunked")):
            self.send_header(k, v)
        self.end_headers()
        base = stream_base(req, mid)
        self._chunk(sse(stream_chunk(req, base, first, first=True)))
        tail: list[dict[str, Any] | str]
        try:
            while (text := piece()) is not None:
                self._chunk(sse(stream_chunk(req, base, text)))
            tail = stream_tail(req, base, mixture.result(job, 0))
        except ApiError as e:
            tail = [e.body(), "[DONE]"]
        self._chunk(sse(*tail))
        self._chunk(b"")  # the last chunk of the body

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _no_method(self) -> None:
        """405: only GET and POST are served."""
        self._error(ApiError(405, f"method {self.command} is not supported here"))

    do_PUT = do_DELETE = do_PATCH = _no_method
