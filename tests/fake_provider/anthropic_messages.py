"""Anthropic Messages (`POST /v1/messages`, any query string such as `?beta=true`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .scenarios import MIDSTREAM_WORDS, Plan, fragments, words
from .wire import Context, Reply, json_reply, output_tokens, sse_event, stream_reply

RETRY_AFTER_SECONDS = 1
# The real API really does send this one event with a space after the colon.
PING = b'event: ping\ndata: {"type": "ping"}\n\n'


@dataclass
class _Ids:
    message: str
    request: str
    signature: str
    tools: list[str]


class _Message:
    """One message's identity and its blocks in final form."""

    def __init__(self, plan: Plan, ctx: Context) -> None:
        self.plan = plan
        self.ctx = ctx
        ids = ctx.ids
        self.ids = _Ids(
            message=ids.base62("msg_01", 22),
            request=ids.base62("req_011C", 20),
            # Real signatures are opaque base64 blobs; only their presence matters to clients.
            signature=ids.base62("Eq", 140),
            tools=[ids.base62("toolu_01", 22) for _ in plan.tool_calls],
        )

    @property
    def stop_reason(self) -> str:
        return "tool_use" if self.plan.tool_calls else "end_turn"

    def blocks(self) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if self.plan.thinking:
            blocks.append(
                {"type": "thinking", "thinking": self.plan.thinking, "signature": self.ids.signature}
            )
        blocks.append({"type": "text", "text": self.plan.text})
        for tool_id, call in zip(self.ids.tools, self.plan.tool_calls, strict=True):
            blocks.append({"type": "tool_use", "id": tool_id, "name": call.name, "input": call.arguments})
        return blocks

    def usage(self, output: int) -> dict[str, Any]:
        return {
            "input_tokens": self.ctx.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": output,
            "service_tier": "standard",
        }

    def body(self, *, started: bool) -> dict[str, Any]:
        """The full message, or (for message_start) the empty shell the stream begins with."""
        return {
            "id": self.ids.message,
            "type": "message",
            "role": "assistant",
            "model": self.ctx.model,
            "content": [] if started else self.blocks(),
            "stop_reason": None if started else self.stop_reason,
            "stop_sequence": None,
            "usage": self.usage(1 if started else output_tokens(self.plan)),
        }

    def headers(self) -> dict[str, str]:
        return {"request-id": self.ids.request}


def render(plan: Plan, ctx: Context) -> Reply:
    message = _Message(plan, ctx)
    if plan.http_error is not None:
        return _http_error(plan.http_error, message)
    if ctx.stream:
        return stream_reply(_Stream(message).render(), message.headers())
    return json_reply(200, message.body(started=False), message.headers())


@dataclass
class _Stream:
    message: _Message
    frames: list[bytes] = field(default_factory=list)
    index: int = 0  # index of the next content block

    def emit(self, type_: str, **fields: Any) -> None:
        self.frames.append(sse_event(type_, {"type": type_, **fields}))

    def render(self) -> list[bytes]:
        plan = self.message.plan
        self.emit("message_start", message=self.message.body(started=True))
        if plan.thinking:
            self._thinking(plan.thinking)
        if not self._text(plan.text):
            return self.frames  # the stream ends at the error event
        for tool_id, call in zip(self.message.ids.tools, plan.tool_calls, strict=True):
            self._tool_use(tool_id, call.name, json.dumps(call.arguments))
        self._finish()
        return self.frames

    def _open(self, start: dict[str, Any]) -> None:
        self.emit("content_block_start", index=self.index, content_block=start)
        if self.index == 0:
            # Anthropic sends one ping right after the first block opens.
            self.frames.append(PING)

    def _deltas(self, deltas: list[dict[str, Any]]) -> None:
        for delta in deltas:
            self.emit("content_block_delta", index=self.index, delta=delta)

    def _block(self, start: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
        self._open(start)
        self._deltas(deltas)
        self.emit("content_block_stop", index=self.index)
        self.index += 1

    def _thinking(self, thinking: str) -> None:
        deltas = [{"type": "thinking_delta", "thinking": word} for word in words(thinking)]
        deltas.append({"type": "signature_delta", "signature": self.message.ids.signature})
        self._block({"type": "thinking", "thinking": "", "signature": ""}, deltas)

    def _text(self, text: str) -> bool:
        """Emit the text block; False if a mid-stream error cut it short."""
        deltas = [{"type": "text_delta", "text": word} for word in words(text)]
        if not self.message.plan.midstream_error:
            self._block({"type": "text", "text": ""}, deltas)
            return True
        # A few words into the block, fail without closing anything.
        self._open({"type": "text", "text": ""})
        self._deltas(deltas[:MIDSTREAM_WORDS])
        error = {"type": "overloaded_error", "message": "Overloaded"}
        self.emit("error", error=error, request_id=self.message.ids.request)
        return False

    def _tool_use(self, tool_id: str, name: str, arguments: str) -> None:
        # The first input_json_delta is empty, as with the real API.
        pieces = ["", *fragments(arguments)]
        deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in pieces]
        self._block({"type": "tool_use", "id": tool_id, "name": name, "input": {}}, deltas)

    def _finish(self) -> None:
        usage = self.message.usage(output_tokens(self.message.plan))
        # message_delta usage is cumulative and leaves out the cache breakdown/service tier.
        delta_usage = {
            key: usage[key]
            for key in (
                "input_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
                "output_tokens",
            )
        }
        self.emit(
            "message_delta",
            delta={"stop_reason": self.message.stop_reason, "stop_sequence": None},
            usage=delta_usage,
        )
        self.emit("message_stop")


def _error_body(type_: str, message: str, request_id: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}, "request_id": request_id}


def _http_error(status: int, message: _Message) -> Reply:
    headers = {**message.headers(), "x-should-retry": "true"}
    if status == 429:
        text = (
            "This request would exceed the rate limit for your organization of 30,000 input tokens per "
            "minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the "
            "response headers for current usage. Please reduce the prompt length or the maximum tokens "
            "requested, or try again later."
        )
        headers |= {
            "retry-after": str(RETRY_AFTER_SECONDS),
            "anthropic-ratelimit-input-tokens-limit": "30000",
            "anthropic-ratelimit-input-tokens-remaining": "0",
        }
        return json_reply(429, _error_body("rate_limit_error", text, message.ids.request), headers)
    return json_reply(status, _error_body("api_error", "Internal server error", message.ids.request), headers)


def invalid_request(text: str, ctx: Context) -> Reply:
    request_id = ctx.ids.base62("req_011C", 20)
    body = _error_body("invalid_request_error", text, request_id)
    return json_reply(400, body, {"request-id": request_id})
