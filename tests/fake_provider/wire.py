"""Shared wire-level helpers: JSON/SSE encoding, deterministic ids, the reply container."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from .scenarios import Plan, estimate_tokens

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_HEX = "0123456789abcdef"

JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream; charset=utf-8"


def dumps(value: Any) -> bytes:
    """Compact JSON, like both providers put on the wire."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def sse_data(payload: Any) -> bytes:
    """Chat Completions framing: data-only events."""
    return b"data: " + dumps(payload) + b"\n\n"


def sse_event(event: str, payload: Any) -> bytes:
    """Responses / Messages framing: named events."""
    return b"event: " + event.encode() + b"\ndata: " + dumps(payload) + b"\n\n"


@dataclass
class IdFactory:
    """Provider-shaped ids that are stable for a given request number.

    Real ids look random; deriving them from a hash keeps that look while letting two runs
    of the same test produce identical bytes.
    """

    seed: int
    _counter: int = 0

    def _digits(self, alphabet: str, length: int) -> str:
        self._counter += 1
        digest = hashlib.sha256(f"{self.seed}:{self._counter}".encode()).digest()
        while len(digest) < length:
            digest += hashlib.sha256(digest).digest()
        return "".join(alphabet[b % len(alphabet)] for b in digest[:length])

    def base62(self, prefix: str, length: int) -> str:
        return prefix + self._digits(_BASE62, length)

    def hex(self, prefix: str, length: int) -> str:
        return prefix + self._digits(_HEX, length)


@dataclass
class Context:
    """Per-request facts every dialect needs."""

    body: dict[str, Any]
    ids: IdFactory
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def model(self) -> str:
        model = self.body.get("model")
        return model if isinstance(model, str) and model else "fake-model"

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is True

    @property
    def input_tokens(self) -> int:
        return estimate_tokens(dumps(self.body).decode())


def output_tokens(plan: Plan) -> int:
    parts = [plan.text, plan.thinking or ""]
    parts += [json.dumps(call.arguments) for call in plan.tool_calls]
    return estimate_tokens(" ".join(parts))


def reasoning_tokens(plan: Plan) -> int:
    return estimate_tokens(plan.thinking) if plan.thinking else 0


@dataclass
class Reply:
    """A fully pre-rendered response: the server writes `chunks` verbatim, in order.

    Rendering everything up front means what `FakeProvider.sent()` records is by
    construction exactly what went on the wire.
    """

    status: int
    chunks: list[bytes]
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    streaming: bool = False


def json_reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, [dumps(payload)], headers=headers or {})


def stream_reply(chunks: list[bytes], headers: dict[str, str] | None = None) -> Reply:
    stream_headers = {"cache-control": "no-cache", **(headers or {})}
    return Reply(200, chunks, SSE_TYPE, stream_headers, streaming=True)
