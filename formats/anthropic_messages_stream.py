"""Anthropic Messages streams: the transcoder between ``message_*`` and ``content_block_*``
events and normalised chunks, the API's error object, and how blocks are shown to policies. Plain
data: the data plane imports it without LiteLLM."""

import json
from typing import Any

from controlplane.chunks import ChunkDelta, StreamChunk, ToolCallDelta
from formats.base import JSON, FormatError, MalformedStream, count
from formats.sse import SSEEvent, encode_event

TO_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "compaction": "length",
}
_FROM_FINISH = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    403: "permission_error",
    429: "rate_limit_error",
    503: "overloaded_error",
}
_STRUCTURAL = frozenset({"message_start", "content_block_stop", "message_stop", "ping", "error"})


def anthropic_error_body(status: int, message: str) -> JSON:
    """The error object of the Anthropic API."""
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}}


def stop_reason_for(finish_reason: str | None, upstream_stop_reason: str | None) -> str:
    """Keeps the provider's own stop reason when the policy did not change its meaning."""
    if upstream_stop_reason is not None and TO_FINISH.get(upstream_stop_reason) == finish_reason:
        return upstream_stop_reason
    return _FROM_FINISH.get(finish_reason or "stop", "end_turn")


_NOT_TOOLS = frozenset({"text", "thinking", "redacted_thinking"})


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


class AnthropicTranscoder:
    def __init__(self) -> None:
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
        """The rarer events that carry content: the message's finish reason and usage, a thinking
        block's signature, a redacted thinking block. Others (citations, a ping of a new kind)
        carry none the normalised view holds."""
        kind = data["type"]
        if kind == "message_delta":
            return [self._finish(data)]
        if kind == "content_block_start":
            block = data["content_block"]
            if block.get("type") == "redacted_thinking":
                return [
                    self._chunk(
                        {"thinking_blocks": [{"type": "redacted_thinking", "data": block.get("data")}]}
                    )
                ]
            return []
        delta = data.get("delta") if kind == "content_block_delta" else None
        if isinstance(delta, dict) and delta.get("type") == "signature_delta":
            signature = delta.get("signature")
            if not isinstance(signature, str):
                raise MalformedStream("a signature_delta without its signature")
            if signature:
                block = {"type": "thinking", "thinking": "", "signature": signature}
                return [self._chunk({"reasoning_content": "", "thinking_blocks": [block]})]
        return []

    def _finish(self, data: JSON) -> StreamChunk:
        delta, usage = data.get("delta") or {}, data.get("usage")
        if not isinstance(delta, dict) or not (usage is None or isinstance(usage, dict)):
            raise MalformedStream("a message_delta whose delta or usage is not an object")
        reason = delta.get("stop_reason") or "stop"
        finish = self._chunk({})
        finish["choices"][0]["finish_reason"] = TO_FINISH.get(reason, "stop")
        if usage is not None:
            finish["usage"] = chat_usage(usage)
        return finish

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

    def encode(self, chunk: StreamChunk) -> bytes:
        out = [self._ensure_started()]
        if choices := chunk.get("choices"):
            choice = choices[0]
            delta = choice.get("delta") or {}
            for block in delta.get("thinking_blocks") or []:
                out.append(self._thinking(block))
            if content := delta.get("content"):
                out.append(self._ensure_open("text", {"type": "text", "text": ""}))
                out.append(self._delta({"type": "text_delta", "text": content}))
            for call in delta.get("tool_calls") or []:
                out.append(self._tool_call(call))
            if finish_reason := choice.get("finish_reason"):
                out.append(self._close_open())
                out.append(self._message_delta(finish_reason))
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

    def _thinking(self, block: dict[str, Any]) -> bytes:
        out = self._ensure_open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        if block.get("thinking"):
            out += self._delta({"type": "thinking_delta", "thinking": block["thinking"]})
        if block.get("signature"):
            out += self._delta({"type": "signature_delta", "signature": block["signature"]})
        return out

    def _tool_call(self, call: ToolCallDelta) -> bytes:
        out = b""
        function = call.get("function") or {}
        arguments = function.get("arguments") or ""
        if call_id := call.get("id"):
            out += self._close_open()
            self._tool_blocks[call["index"]] = self._next_index
            upstream = self._upstream_blocks.get(call_id)
            if upstream is not None and "input" not in upstream:
                # A block without input (a server tool's result) is written whole at its start.
                block = with_block_arguments(upstream, arguments)
                return out + self._start_block(block["type"], block, takes_input=False)
            block = {
                **(upstream or {"type": "tool_use", "id": call_id, "name": function.get("name")}),
                "input": {},
            }
            out += self._start_block(block["type"], block)
        open_index = self._open[0] if self._open is not None else None
        if arguments and self._takes_input and open_index == self._tool_blocks.get(call["index"]):
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


def chat_usage(usage: JSON) -> JSON:
    """Anthropic's token counts in Chat Completions' terms, as LiteLLM reckons them: the prompt
    counts cached input, read or written."""
    cache_read = count(usage, "cache_read_input_tokens")
    cache_creation = count(usage, "cache_creation_input_tokens")
    prompt = count(usage, "input_tokens") + cache_read + cache_creation
    completion = count(usage, "output_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cache_read, "cache_creation_tokens": cache_creation},
        "cache_read_input_tokens": cache_read,
        "cache_creation_input_tokens": cache_creation,
    }
