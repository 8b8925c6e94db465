"""The OpenAI wire format of ``symoe serve``: request bodies checked and read into a
:class:`ServeRequest` (every refusal an :class:`ApiError` with its HTTP status and an OpenAI-style
error body), and the chat/completion response bodies built from a finished :class:`Answer`."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from ..method.datasets import Question
from ..method.extraction import option_count

Endpoint = Literal["chat", "completion"]
_OPTION_MARK = "(A)"


class ApiError(Exception):
    """A request refused or failed: ``status`` and the OpenAI error object's fields."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask: body bytes and new tokens per model call."""

    max_body_bytes: int = 1 << 20
    max_tokens: int = 4096


@dataclass(frozen=True)
class ServeRequest:
    """One client request as the mixture sees it: the question (its id a hash of the text, so the
    same prompt finds its stored generations again), the routing seed and the options."""

    endpoint: Endpoint
    question: Question
    seed: int
    max_tokens: int | None
    details: bool
    stream: bool = False
    usage_in_stream: bool = False
    created: float = field(default_factory=time.time)


def _text(content: Any, where: str) -> str:
    """A message's content: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "\n".join(p["text"] for p in content)
    raise ApiError(400, f"{where}: content must be a string or a list of text parts", param=where)


def question_of(text: str, gold: str = "", category: str = "") -> Question:
    """The question a prompt asks: multiple choice (a letter answer) when it labels options
    "(A) ...", else a number; its id is a hash of the text."""
    kind: Literal["letter", "number"] = "letter" if _OPTION_MARK in text and option_count(text) >= 2 else "number"
    qid = "serve-" + hashlib.sha256(text.encode()).hexdigest()[:16]
    return Question(qid, text, gold, kind, category)


def parse(endpoint: Endpoint, raw: bytes, model_id: str, limits: Limits) -> ServeRequest:
    """Check a request body; anything wrong is an :class:`ApiError` naming the field."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from e
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str):
        raise ApiError(400, "'model' is required (a string)", param="model")
    if model != model_id:
        raise ApiError(404, f"the model {model!r} does not exist; this server serves {model_id!r}", param="model",
                       code="model_not_found")
    if endpoint == "chat":
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
            raise ApiError(400, "'messages' is required: a non-empty list of message objects", param="messages")
        users = [i for i, m in enumerate(msgs) if m.get("role") == "user"]
        if not users:
            raise ApiError(400, "'messages' has no user message: the last one is the question", param="messages")
        text = _text(msgs[users[-1]].get("content"), f"messages[{users[-1]}].content")
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "'prompt' is required: one string", param="prompt")
        text = prompt
    if not text.strip():
        raise ApiError(400, "the question is empty", param="messages" if endpoint == "chat" else "prompt")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise ApiError(400, "'stream_options' must be an object", param="stream_options")
    n = body.get("n", 1)
    if n not in (1, None):
        raise ApiError(400, "only n=1 is supported", param="n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ApiError(400, "'max_tokens' must be a positive integer", param="max_tokens")
        if max_tokens > limits.max_tokens:
            raise ApiError(400, f"'max_tokens' is {max_tokens}, over this server's limit of {limits.max_tokens}",
                           param="max_tokens")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise ApiError(400, "'seed' must be an integer in [0, 2**63)", param="seed")
    ext = body.get("symoe", {})
    if not isinstance(ext, dict):
        raise ApiError(400, "'symoe' must be an object, e.g. {\"details\": true}", param="symoe")
    for f in ("gold", "category"):  # kept with the question in the store, so served answers can be graded
        if not isinstance(ext.get(f, ""), str):
            raise ApiError(400, f"'symoe.{f}' must be a string", param=f"symoe.{f}")
    if seed is None:  # a hash of the prompt: the same prompt is routed the same way
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1
    return ServeRequest(endpoint, question_of(text, ext.get("gold", ""), ext.get("category", "")), int(seed), max_tokens,
                        bool(ext.get("details", False)), stream, bool(opts.get("include_usage", False)))


@dataclass
class Answer:
    """A finished request: the final text, its finish reason, tokens over every model call, and
    the per-expert details (``symoe`` extension field)."""

    text: str
    finish: str
    prompt_tokens: int
    completion_tokens: int
    calls: int
    details: dict[str, Any]


def response(req: ServeRequest, a: Answer, model_id: str) -> dict[str, Any]:
    """The chat.completion or text_completion body."""
    usage = {"prompt_tokens": a.prompt_tokens, "completion_tokens": a.completion_tokens,
             "total_tokens": a.prompt_tokens + a.completion_tokens}
    if req.endpoint == "chat":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": a.text},
                                  "finish_reason": a.finish, "logprobs": None}
        obj, prefix = "chat.completion", "chatcmpl-"
    else:
        choice = {"index": 0, "text": a.text, "finish_reason": a.finish, "logprobs": None}
        obj, prefix = "text_completion", "cmpl-"
    out: dict[str, Any] = {"id": prefix + uuid.uuid4().hex, "object": obj, "created": int(req.created),
                           "model": model_id, "choices": [choice], "usage": usage}
    if req.details:
        out["symoe"] = a.details
    return out


def sse(*events: dict[str, Any] | str) -> bytes:
    """Server-sent events: each a JSON object, or a string as it is (``[DONE]``)."""
    return b"".join(b"data: " + (e if isinstance(e, str) else json.dumps(e)).encode() + b"\n\n" for e in events)


def stream_base(req: ServeRequest, model_id: str) -> dict[str, Any]:
    """What every chunk of one streamed answer shares: id, object, created, model."""
    chat = req.endpoint == "chat"
    return {"id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex,
            "object": "chat.completion.chunk" if chat else "text_completion", "created": int(req.created),
            "model": model_id}


def stream_chunk(req: ServeRequest, base: dict[str, Any], text: str | None, finish: str | None = None,
                 first: bool = False) -> dict[str, Any]:
    """One chunk: a piece of the answer's text, or (``text`` None) the finish reason."""
    if req.endpoint == "chat":
        delta: dict[str, Any] = {} if text is None else {"content": text}
        if first:
            delta["role"] = "assistant"
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
    return {**base, "choices": [choice]}


def stream_tail(req: ServeRequest, base: dict[str, Any], a: Answer) -> list[dict[str, Any] | str]:
    """The end of a streamed answer: the finish chunk (with the ``symoe`` details when asked),
    usage with ``stream_options.include_usage``, and ``[DONE]``."""
    end = stream_chunk(req, base, None, a.finish)
    if req.details:
        end["symoe"] = a.details
    out: list[dict[str, Any] | str] = [end]
    if req.usage_in_stream:
        usage = response(req, a, "")["usage"]
        out.append({**base, "choices": [], "usage": usage})
    return [*out, "[DONE]"]


def stream_events(req: ServeRequest, a: Answer, model_id: str) -> bytes:
    """A whole streamed answer in one body (nothing came before it was done: an engine that
    hands over whole generations, or an answer the store held)."""
    base = stream_base(req, model_id)
    return sse(stream_chunk(req, base, a.text, first=True), *stream_tail(req, base, a))
