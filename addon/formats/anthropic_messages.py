"""Anthropic Messages (``POST /v1/messages``), normalised with LiteLLM's Anthropic adapters."""

import copy
import json
from typing import Any

import httpx

from addon.formats.base import JSON, FormatError, MalformedStream
from addon.formats.request_patch import patch_request
from addon.formats.request_view import completed
from addon.sse import SSEEvent, encode_event
from controlplane.chunks import ChunkDelta, StreamChunk, ToolCallDelta, chunk_data
from controlplane.llm import (
    AnthropicConfig,
    AnthropicStreamParser,
    ChatCompletionMessageToolCall,
    Function,
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
            anthropic_message_request=_with_texts_placed(body)  # type: ignore[arg-type]
        )
        return completed(body, dict(request), _CONSUMED)

    def render_request(self, original: JSON, before: NormalizedRequest, after: NormalizedRequest) -> JSON:
        return patch_request(original, before, after, _PARAMETERS)

    def parse_response(self, body: JSON) -> ModelResponse:
        content = body.get("content") or []
        if not isinstance(content, list) or not all(isinstance(block, dict) for block in content):
            raise FormatError("`content` must be a list of blocks")
        response = AnthropicConfig().transform_parsed_response(
            completion_response=copy.deepcopy(body),
            raw_response=httpx.Response(200, json=body),
            model_response=ModelResponse(),
            json_mode=False,
        )
        # Every block that is not text or thinking is a tool call to policies, whatever its type.
        message = response.choices[0].message  # type: ignore[union-attr]
        message.tool_calls = [
            ChatCompletionMessageToolCall(
                id=block_id(block, position),
                type="function",
                function=Function(name=block_name(block), arguments=block_arguments(block)),
            )
            for position, block in enumerate(content)
            if is_tool_block(block)
        ] or None
        return response

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


_NOT_TOOLS = frozenset({"text", "thinking", "redacted_thinking"})
#: Top-level fields LiteLLM maps under other names: they are not extra_body.
_CONSUMED = frozenset({"system", "stop_sequences", "metadata"})


def _with_texts_placed(body: JSON) -> JSON:
    """A copy of ``body`` for LiteLLM, which drops document and search-result blocks: their
    texts become text blocks where they were, so policies read them in the conversation."""
    placed = copy.deepcopy(body)
    for message in placed.get("messages") or []:
        if isinstance(message, dict) and isinstance(message.get("content"), list):
            message["content"] = _placed_blocks(message["content"])
    return placed


def _placed_blocks(blocks: list[Any]) -> list[Any]:
    out: list[Any] = []
    for block in blocks:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result" and isinstance(block.get("content"), list):
            out.append({**block, "content": _placed_blocks(block["content"])})
        elif kind in ("document", "search_result"):
            out += _text_blocks(block)
        else:
            out.append(block)
    return out


def _text_blocks(block: JSON) -> list[JSON]:
    """A document's or search result's texts: its title, context, source text and content."""
    texts = [block.get(key) for key in ("title", "context")]
    source = block.get("source")
    if block.get("type") == "search_result":
        texts.append(source)
    elif isinstance(source, dict) and source.get("type") == "text":
        texts.append(source.get("data"))
    content = source.get("content") if isinstance(source, dict) else block.get("content")
    texts += [part.get("text") for part in content or [] if isinstance(part, dict)]
    placed = [{"type": "text", "text": text} for text in texts if isinstance(text, str) and text]
    if isinstance(source, dict) and source.get("type") in ("base64", "url", "file"):
        placed.append(block)  # the file itself, which LiteLLM maps
    return placed


def is_tool_block(block: JSON) -> bool:
    """``tool_use``, server and MCP tool use, their results, and any block type still to come."""
    return block.get("type") not in _NOT_TOOLS


def block_id(block: JSON, position: int) -> str:
    value = block.get("id")
    return value if isinstance(value, str) and value else f"block_{position}"


def block_name(block: JSON) -> str:
    name = block.get("name")
    return name if isinstance(name, str) and name else str(block.get("type"))


def block_arguments(block: JSON) -> str:
    """A tool block's input as JSON; a block without one (a tool's result) is its own JSON."""
    if "input" in block:
        return json.dumps(block["input"])
    return json.dumps({k: v for k, v in block.items() if k not in ("type", "id")})


def with_block_arguments(block: JSON, arguments: str) -> JSON:
    """``block`` carrying a policy's arguments for it, in the block's own shape."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError as exc:
        raise FormatError(f"a policy gave a {block.get('type')} block arguments that are not JSON") from exc
    if "input" in block:
        return block if value == block["input"] else {**block, "input": value}
    if not isinstance(value, dict):
        raise FormatError(f"a policy gave a {block.get('type')} block arguments that are not an object")
    return {**value, **{k: block[k] for k in ("type", "id") if k in block}}


def _render_content(original: list[JSON], text: str, tool_calls: list[Any]) -> list[JSON]:
    original_text = "".join(b.get("text", "") for b in original if b.get("type") == "text")
    kept_calls = {call.id: call for call in tool_calls}
    content: list[JSON] = []
    text_placed = text == original_text
    for position, block in enumerate(original):
        kind = block.get("type")
        if kind == "text":
            if text == original_text:
                content.append(block)
            elif not text_placed and text:
                content.append({"type": "text", "text": text})
                text_placed = True
        elif is_tool_block(block):
            call = kept_calls.get(block_id(block, position))
            if call is not None:
                content.append(with_block_arguments(block, call.function.arguments or ""))
        else:
            content.append(block)
    if not text_placed and text:
        content.append({"type": "text", "text": text})
    return content


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
        self._tool_blocks_upstream: dict[int, int] = {}  # content block index -> tool call index
        self._upstream_blocks: dict[str, JSON] = {}  # tool-like blocks by id, as they began
        # What the client has seen:
        self._started = False
        self._open: tuple[int, str] | None = None
        self._next_index = 0
        self._tool_blocks: dict[int, int] = {}
        self._takes_input = True  # the open block is written with input_json_delta events
        self._delta_sent = False
        self._stopped = False
        self._ended = False  # the client has seen the stream end (message_stop or an error)

    def decode(self, event: SSEEvent) -> list[StreamChunk]:
        data = event.json()
        if not isinstance(data, dict):
            return []
        kind = data.get("type", event.event)
        if event.event is not None and kind != event.event:
            # The SDKs dispatch on the event's name and read its data: both must say the same.
            raise MalformedStream(f"an event named {event.event!r} carries a {kind!r}")
        data = {**data, "type": kind}  # the SDKs fill in a missing type from the name
        if kind == "message_start":
            self._message_start = data
            message = data.get("message")
            if isinstance(message, dict) and message.get("content"):
                raise MalformedStream("message_start carries content, which arrives in content blocks")
        elif kind == "message_delta":
            self._upstream_delta = data
        elif kind == "content_block_start":
            return self._block_started(data)
        elif kind == "content_block_delta" and data.get("index") in self._tool_blocks_upstream:
            return [self._tool_delta(data)]
        elif kind == "content_block_delta" and (chunks := self._text_delta(data.get("delta"))) is not None:
            return chunks
        if kind in _STRUCTURAL:
            return []
        return self._parsed(data)

    def unsettled(self) -> list[StreamChunk]:
        return []

    def _text_delta(self, delta: Any) -> list[StreamChunk] | None:
        """The chunks of the most frequent deltas, text and thinking; None for any other."""
        if not isinstance(delta, dict) or delta.get("type") not in ("text_delta", "thinking_delta"):
            return None
        field = "text" if delta["type"] == "text_delta" else "thinking"
        text = delta.get(field)
        if not isinstance(text, str):
            raise MalformedStream(f"a {delta['type']} without its {field}")
        if not text:
            return []
        if field == "text":
            return [self._chunk({"content": text})]
        thinking = [{"type": "thinking", "thinking": text}]
        return [self._chunk({"reasoning_content": text, "thinking_blocks": thinking})]

    def _parsed(self, data: JSON) -> list[StreamChunk]:
        """What LiteLLM's parser makes of the rarer events (a finish reason and usage, a signature,
        redacted thinking), as plain data."""
        parsed = self._parser.chunk_parser(data)
        if parsed is None or not _carries_content(parsed):
            return []
        return [{**self._chunk({}), **chunk_data(parsed)}]

    def _block_started(self, data: JSON) -> list[StreamChunk]:
        block, index = data.get("content_block"), data.get("index")
        if not isinstance(block, dict) or not isinstance(index, int):
            raise MalformedStream("content_block_start without a block and its index")
        if not is_tool_block(block):
            if block.get("type") == "text" and block.get("text"):
                # Text given with the block's start: the SDKs keep it, so the policy sees it.
                return [self._chunk({"content": block["text"]})]
            return self._parsed(data)
        if index in self._tool_blocks_upstream:
            raise MalformedStream(f"content block {index} was started twice")
        tool_index = len(self._tool_blocks_upstream)
        self._tool_blocks_upstream[index] = tool_index
        self._upstream_blocks[block_id(block, index)] = block
        # Arguments given with the start (a tool's input, a server tool's whole result): the
        # SDKs keep them, so the policy sees them.
        initial = "" if block.get("input") == {} else block_arguments(block)
        call: ToolCallDelta = {
            "index": tool_index,
            "id": block_id(block, index),
            "type": "function",
            "function": {"name": block_name(block), "arguments": initial},
        }
        return [self._chunk({"tool_calls": [call]})]

    def _tool_delta(self, data: JSON) -> StreamChunk:
        """A delta of a tool block: its JSON input, or anything else, held with the call."""
        delta = data.get("delta")
        if isinstance(delta, dict) and delta.get("type") in ("text_delta", "thinking_delta"):
            raise MalformedStream(f"a {delta['type']} for the tool block {data['index']}")
        partial = delta.get("partial_json") if isinstance(delta, dict) else None
        call: ToolCallDelta = {
            "index": self._tool_blocks_upstream[data["index"]],
            "type": "function",
            "function": {"arguments": partial if isinstance(partial, str) else ""},
        }
        return self._chunk({"tool_calls": [call]})

    def _chunk(self, delta: ChunkDelta) -> StreamChunk:
        message = (self._message_start or {}).get("message") or {}
        return {
            "id": message.get("id"),
            "created": 0,
            "model": message.get("model"),
            "choices": [{"index": 0, "delta": delta}],
        }

    def is_error(self, event: SSEEvent) -> bool:
        data = event.json()
        return isinstance(data, dict) and data.get("type") == "error"

    @property
    def ended(self) -> bool:
        return self._ended

    def observe_emitted(self, event: SSEEvent) -> None:
        data = event.json()
        if not isinstance(data, dict):
            return
        kind = data.get("type")
        if kind == "message_start":
            self._started = True
        elif kind == "content_block_start":
            block = data["content_block"]
            self._open = (data["index"], block["type"])
            self._next_index = max(self._next_index, data["index"] + 1)
            if is_tool_block(block):
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
        arguments = call.function.arguments or ""
        if call.id:
            out += self._close_open()
            self._tool_blocks[call.index] = self._next_index
            upstream = self._upstream_blocks.get(call.id)
            if upstream is not None and "input" not in upstream:
                # A block without input (a server tool's result) is written whole at its start.
                block = with_block_arguments(upstream, arguments)
                return out + self._start_block(block["type"], block, takes_input=False)
            block = {
                **(upstream or {"type": "tool_use", "id": call.id, "name": call.function.name}),
                "input": {},
            }
            out += self._start_block(block["type"], block)
        open_index = self._open[0] if self._open is not None else None
        if arguments and self._takes_input and open_index == self._tool_blocks.get(call.index):
            out += self._delta({"type": "input_json_delta", "partial_json": arguments})
        return out

    def _ensure_open(self, block_type: str, block: JSON) -> bytes:
        if self._open is not None and self._open[1] == block_type:
            return b""
        return self._close_open() + self._start_block(block_type, block)

    def _start_block(self, block_type: str, block: JSON, takes_input: bool = True) -> bytes:
        index = self._next_index
        self._open = (index, block_type)
        self._takes_input = takes_input
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
