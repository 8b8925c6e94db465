"""A small, scriptable, misbehaving OpenAI-like server on 127.0.0.1 (stdlib http.server) for the
remote-engine tests: each completion request takes the next behaviour of a script (``ok``,
``500``, ``429``, ``404``, ``echo500``, ``malformed``, ``hang``, ``close``, ``stream_error``: a
streamed answer's first chunks then an SSE error event), then the default one."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOpenAI:
    """``with FakeOpenAI(models=["m"]) as srv: srv.url`` -> ``http://127.0.0.1:PORT/v1``."""

    def __init__(self, models: Iterable[str] = ("m",), script: Iterable[str] = (), default: str = "ok",
                 hang_s: float = 30.0, delay_s: float = 0.0, down: bool = False):
        self.models, self.default, self.hang_s, self.delay_s, self.down = list(models), default, hang_s, delay_s, down
        self.script: deque[str] = deque(script)
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []  # every completion request body, in arrival order
        self.auth: list[str] = []                 # every Authorization header seen
        self.served = 0                           # completions answered with a generation
        self.active = self.peak = 0               # concurrent completion requests (now, at most)
        self.release = threading.Event()          # ends every hang at once (teardown)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:  # quiet
                pass

            def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                with owner.lock:
                    owner.auth.append(self.headers.get("Authorization", ""))
                if owner.down:
                    self.close_connection = True
                    self.connection.close()
                    return
                if self.path.rstrip("/").endswith("/models"):
                    data = [{"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in owner.models]
                    self._send(200, json.dumps({"object": "list", "data": data}).encode())
                elif self.path == "/health":
                    self._send(200, b"")
                else:
                    self._send(404, b'{"error": {"message": "no such path"}}')

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(n) or b"{}")
                with owner.lock:
                    owner.requests.append(body)
                    owner.auth.append(self.headers.get("Authorization", ""))
                    how = owner.script.popleft() if owner.script else owner.default
                    owner.active += 1
                    owner.peak = max(owner.peak, owner.active)
                try:
                    self._answer(how, body)
                finally:
                    with owner.lock:
                        owner.active -= 1

            def _answer(self, how: str, body: dict[str, Any]) -> None:
                if owner.delay_s:
                    time.sleep(owner.delay_s)
                if how == "hang":
                    owner.release.wait(owner.hang_s)
                    self.close_connection = True
                    return
                if how == "close":
                    self.close_connection = True
                    self.connection.shutdown(2)  # drop the connection without an answer
                    return
                if how == "echo500":  # a careless server that echoes the request's headers in its error
                    msg = f"scripted 500; you sent {self.headers.get('Authorization')}"
                    self._send(500, json.dumps({"error": {"message": msg}}).encode())
                    return
                if how in ("500", "429", "404"):
                    hdr = {"Retry-After": "0"} if how == "429" else None
                    self._send(int(how), json.dumps({"error": {"message": f"scripted {how}"}}).encode(), hdr)
                    return
                if how == "stream_error" and body.get("stream"):  # two chunks, then an SSE error event
                    words = stream(body).split(b"\n\n")[:2]
                    err = b'data: {"error": {"message": "scripted error mid-stream"}}'
                    self.close_connection = True
                    self._send(200, b"\n\n".join([*words, err, b""]), {"Content-Type": "text/event-stream"})
                    return
                if how == "malformed":
                    self._send(200, b'{"id": "x", "choices": [{"index": 0, "mess')
                    return
                with owner.lock:
                    owner.served += 1
                if body.get("stream"):  # the same answer as server-sent events, a word a chunk
                    self.close_connection = True
                    self._send(200, stream(body), {"Content-Type": "text/event-stream"})
                    return
                self._send(200, json.dumps(completion(body)).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(body: dict[str, Any]) -> dict[str, Any]:
    """A deterministic answer that echoes the request's seed (so a test can tell answers apart)."""
    text = f"seed {body.get('seed')}: the answer is (A)"
    usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    if "messages" in body:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        return {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"], "choices": [choice],
                "usage": usage}
    choice = {"index": 0, "text": text, "finish_reason": "length", "logprobs": None}
    return {"id": "c", "object": "text_completion", "created": 0, "model": body["model"], "choices": [choice],
            "usage": usage}


def stream(body: dict[str, Any]) -> bytes:
    """:func:`completion` streamed: a chunk per word, the finish chunk, usage when asked, ``[DONE]``."""
    full, chat = completion(body), "messages" in body
    c = full["choices"][0]
    words = (c["message"]["content"] if chat else c["text"]).split(" ")
    base = {"id": "c", "object": "chat.completion.chunk" if chat else "text_completion", "created": 0,
            "model": body["model"]}

    def choice(text: str, finish: str | None) -> dict[str, Any]:
        return ({"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish} if chat
                else {"index": 0, "text": text, "finish_reason": finish, "logprobs": None})

    events = [{**base, "choices": [choice(w + " " * (i + 1 < len(words)), None)]} for i, w in enumerate(words)]
    events.append({**base, "choices": [choice("", c["finish_reason"])]})
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append({**base, "choices": [], "usage": full["usage"]})
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
