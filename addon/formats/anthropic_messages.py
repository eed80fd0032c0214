"""Anthropic Messages (``POST /v1/messages``), normalised with LiteLLM's Anthropic adapters."""

import copy
import json
from typing import Any

import httpx

from addon.formats.base import JSON
from addon.formats.request_patch import patch_request
from addon.sse import SSEEvent, encode_event
from controlplane.llm import (
    AnthropicConfig,
    AnthropicStreamParser,
    LiteLLMAnthropicMessagesAdapter,
    ModelResponse,
    ModelResponseStream,
)
from controlplane.models import NormalizedRequest, WireFormat

_TO_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_FROM_FINISH = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
_PARAMETERS = {
    "model": "model",
    "max_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "stop": "stop_sequences",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    403: "permission_error",
    429: "rate_limit_error",
    503: "overloaded_error",
}
_STRUCTURAL = frozenset({"message_start", "content_block_stop", "message_stop", "ping", "error"})


def stop_reason_for(finish_reason: str | None, upstream_stop_reason: str | None) -> str:
    """Keeps the provider's own stop reason when the policy did not change its meaning."""
    if upstream_stop_reason is not None and _TO_FINISH.get(upstream_stop_reason) == finish_reason:
        return upstream_stop_reason
    return _FROM_FINISH.get(finish_reason or "stop", "end_turn")


class AnthropicMessagesCodec:
    wire_format = WireFormat.ANTHROPIC_MESSAGES

    def normalize_request(self, body: JSON) -> NormalizedRequest:
        request, _ = LiteLLMAnthropicMessagesAdapter().translate_anthropic_to_openai(
            anthropic_message_request=copy.deepcopy(body)  # type: ignore[arg-type]
        )
        return dict(request)

    def render_request(self, original: JSON, before: NormalizedRequest, after: NormalizedRequest) -> JSON:
        return patch_request(original, before, after, _PARAMETERS)

    def parse_response(self, body: JSON) -> ModelResponse:
        return AnthropicConfig().transform_parsed_response(
            completion_response=copy.deepcopy(body),
            raw_response=httpx.Response(200, json=body),
            model_response=ModelResponse(),
            json_mode=False,
        )

    def render_response(self, original: JSON, response: ModelResponse) -> JSON:
        choice = response.choices[0]
        message = choice.message  # type: ignore[union-attr]
        rendered = dict(original)
        rendered["content"] = _render_content(
            original.get("content") or [],
            message.content or "",
            message.tool_calls or [],
        )
        rendered["stop_reason"] = stop_reason_for(choice.finish_reason, original.get("stop_reason"))
        return rendered

    def error_body(self, status: int, message: str) -> JSON:
        return {
            "type": "error",
            "error": {
                "type": _ERROR_TYPES.get(status, "api_error"),
                "message": message,
            },
        }

    def stream_transcoder(self) -> "AnthropicTranscoder":
        return AnthropicTranscoder()


def _render_content(original: list[JSON], text: str, tool_calls: list[Any]) -> list[JSON]:
    original_text = "".join(b.get("text", "") for b in original if b.get("type") == "text")
    kept_calls = {call.id: call for call in tool_calls}
    content: list[JSON] = []
    text_placed = text == original_text
    for block in original:
        kind = block.get("type")
        if kind == "text":
            if text == original_text:
                content.append(block)
            elif not text_placed and text:
                content.append({"type": "text", "text": text})
                text_placed = True
        elif kind == "tool_use":
            call = kept_calls.get(block.get("id"))
            if call is not None:
                content.append(_render_tool_use(block, call))
        else:
            content.append(block)
    if not text_placed and text:
        content.append({"type": "text", "text": text})
    return content


def _render_tool_use(block: JSON, call: Any) -> JSON:
    arguments = call.function.arguments or "{}"
    if json.loads(arguments) == block.get("input"):
        return block
    return {**block, "name": call.function.name, "input": json.loads(arguments)}


def _carries_content(chunk: ModelResponseStream) -> bool:
    if getattr(chunk, "usage", None) is not None and not chunk.choices:
        return True
    if not chunk.choices:
        return False
    choice = chunk.choices[0]
    delta = choice.delta
    return bool(
        delta.content
        or delta.tool_calls
        or getattr(delta, "reasoning_content", None)
        or getattr(delta, "thinking_blocks", None)
        or choice.finish_reason
    )


class AnthropicTranscoder:
    def __init__(self) -> None:
        self._parser = AnthropicStreamParser(streaming_response=None, sync_stream=False)
        self._message_start: JSON | None = None
        self._upstream_delta: JSON = {}
        # What the client has seen:
        self._started = False
        self._open: tuple[int, str] | None = None
        self._next_index = 0
        self._tool_blocks: dict[int, int] = {}
        self._delta_sent = False
        self._stopped = False
        self._ended = False  # the client has seen the stream end (message_stop or an error)

    def decode(self, event: SSEEvent) -> list[ModelResponseStream]:
        data = event.json()
        if not isinstance(data, dict):
            return []
        kind = data.get("type")
        if kind == "message_start":
            self._message_start = data
        elif kind == "message_delta":
            self._upstream_delta = data
        if kind in _STRUCTURAL:
            return []
        chunk = self._parser.chunk_parser(data)
        return [chunk] if chunk is not None and _carries_content(chunk) else []

    def is_error(self, event: SSEEvent) -> bool:
        data = event.json()
        return isinstance(data, dict) and data.get("type") == "error"

    def observe_emitted(self, event: SSEEvent) -> None:
        data = event.json()
        if not isinstance(data, dict):
            return
        kind = data.get("type")
        if kind == "message_start":
            self._started = True
        elif kind == "content_block_start":
            block_type = data["content_block"]["type"]
            self._open = (data["index"], block_type)
            self._next_index = max(self._next_index, data["index"] + 1)
            if block_type == "tool_use":
                self._tool_blocks[len(self._tool_blocks)] = data["index"]
        elif kind == "content_block_stop":
            self._open = None
        elif kind == "message_delta":
            self._delta_sent = True
        elif kind in ("message_stop", "error"):
            self._stopped = True  # an error ends the stream as message_stop does: nothing follows
            self._ended = True

    def encode(self, chunk: ModelResponseStream) -> bytes:
        out = [self._ensure_started()]
        if chunk.choices:
            choice = chunk.choices[0]
            delta = choice.delta
            for block in getattr(delta, "thinking_blocks", None) or []:
                out.append(self._thinking(block))
            if delta.content:
                out.append(self._ensure_open("text", {"type": "text", "text": ""}))
                out.append(self._delta({"type": "text_delta", "text": delta.content}))
            for call in delta.tool_calls or []:
                out.append(self._tool_call(call))
            if choice.finish_reason:
                out.append(self._close_open())
                out.append(self._message_delta(choice.finish_reason))
        return b"".join(out)

    def finish(self) -> bytes:
        if self._ended:
            return b""
        out = [self._ensure_started(), self._close_open()]
        if not self._delta_sent:
            out.append(self._message_delta("stop"))
        if not self._stopped:
            out.append(encode_event({"type": "message_stop"}, "message_stop"))
            self._stopped = True
        self._ended = True
        return b"".join(out)

    def error_event(self, message: str) -> bytes:
        """An ``error`` event, as Anthropic sends mid-stream (the stream ends there, blocks left
        open); the SDK's Stream raises ``anthropic.APIStatusError`` on it."""
        if self._ended:
            return b""
        self._ended = self._stopped = True
        self._open = None
        return encode_event({"type": "error", "error": {"type": "api_error", "message": message}}, "error")

    def _ensure_started(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        start = self._message_start or {
            "type": "message_start",
            "message": {
                "id": "msg_luthien",
                "type": "message",
                "role": "assistant",
                "model": "",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            },
        }
        return encode_event(start, "message_start")

    def _thinking(self, block: Any) -> bytes:
        block = dict(block)
        out = self._ensure_open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        if block.get("thinking"):
            out += self._delta({"type": "thinking_delta", "thinking": block["thinking"]})
        if block.get("signature"):
            out += self._delta({"type": "signature_delta", "signature": block["signature"]})
        return out

    def _tool_call(self, call: Any) -> bytes:
        out = b""
        if call.id:
            out += self._close_open()
            self._tool_blocks[call.index] = self._next_index
            block = {
                "type": "tool_use",
                "id": call.id,
                "name": call.function.name,
                "input": {},
            }
            out += self._start_block("tool_use", block)
        arguments = call.function.arguments
        if arguments and self._open == (self._tool_blocks.get(call.index), "tool_use"):
            out += self._delta({"type": "input_json_delta", "partial_json": arguments})
        return out

    def _ensure_open(self, block_type: str, block: JSON) -> bytes:
        if self._open is not None and self._open[1] == block_type:
            return b""
        return self._close_open() + self._start_block(block_type, block)

    def _start_block(self, block_type: str, block: JSON) -> bytes:
        index = self._next_index
        self._open = (index, block_type)
        self._next_index += 1
        return encode_event(
            {"type": "content_block_start", "index": index, "content_block": block},
            "content_block_start",
        )

    def _delta(self, delta: JSON) -> bytes:
        assert self._open is not None
        return encode_event(
            {"type": "content_block_delta", "index": self._open[0], "delta": delta},
            "content_block_delta",
        )

    def _close_open(self) -> bytes:
        if self._open is None:
            return b""
        index, self._open = self._open[0], None
        return encode_event({"type": "content_block_stop", "index": index}, "content_block_stop")

    def _message_delta(self, finish_reason: str) -> bytes:
        self._delta_sent = True
        upstream = self._upstream_delta
        upstream_stop = (upstream.get("delta") or {}).get("stop_reason")
        payload = {
            "type": "message_delta",
            "delta": {
                "stop_reason": stop_reason_for(finish_reason, upstream_stop),
                "stop_sequence": (upstream.get("delta") or {}).get("stop_sequence"),
            },
            "usage": upstream.get("usage") or {"output_tokens": 0},
        }
        return encode_event(payload, "message_delta")
