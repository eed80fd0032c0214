"""Anthropic Messages streams: the transcoder between ``message_*`` and ``content_block_*``
events and normalised chunks, the API's error object, and how blocks are shown to policies. Plain
data: the data plane imports it without LiteLLM."""

import json
from dataclasses import dataclass
from typing import Any

from controlplane.chunks import ChunkDelta, StreamChunk, ToolCallDelta
from formats.base import JSON, FormatError, MalformedStream, count, event_object
from formats.sse import SSEEvent, encode_event
from formats.unseen import given_back, holds_content, unseen_call

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


#: What the normalised view holds of each block type's start; the rest of a text or thinking
#: block's start (citations given with it, a field still to come) is unseen content.
_BLOCK_FIELDS = {"text": {"type", "text"}, "thinking": {"type", "thinking", "signature"}}
_EMPTY_BLOCKS: dict[str, JSON] = {
    "text": {"type": "text", "text": ""},
    "thinking": {"type": "thinking", "thinking": "", "signature": ""},
}


def unseen_block_fields(block: JSON) -> JSON:
    """What a text or thinking block carries besides what the normalised view holds of it
    (citations, a field still to come): a tool call to policies, named after the block type."""
    viewed = _BLOCK_FIELDS[str(block.get("type"))]
    return {k: v for k, v in block.items() if k not in viewed and holds_content(v)}


def unseen_call_id(position: int) -> str:
    """The id policies know a block's unseen fields by, in a whole message."""
    return f"luthien_unseen_{position}"


@dataclass(frozen=True)
class _Unseen:
    """Content the normalised view has no place for (a delta of another type, such as
    ``citations_delta``; an event of an unknown type; what a text block's start carries besides
    its text), shown to policies as a tool call whose name is its type and whose arguments are
    its JSON. Kept to write it back, with the policy's arguments, once the stream has diverged."""

    data: JSON  # the event as it came
    block_type: str | None = None  # a delta's or a block start's: the type of its block
    tool_index: int | None = None  # a delta of a tool block: that block's tool call


class AnthropicTranscoder:
    """Every event reaches the policy: what the normalised view has no place for arrives as a
    tool call (``_Unseen``), which is forwarded as it came when the policy gives it back, and
    removed, with the policy's explanation, when it removes it. A NoOp stream is unaffected:
    the passive path forwards every event as it came, so an event type Anthropic adds tomorrow
    still passes there, and is judged wherever a policy inspects the stream."""

    def __init__(self) -> None:
        self._message_start: JSON | None = None
        self._upstream_delta: JSON = {}
        self._tool_calls = 0  # tool calls shown to the policy: tool blocks and unseen content
        self._tool_blocks_upstream: dict[int, int] = {}  # content block index -> tool call index
        self._upstream_types: dict[int, str] = {}  # content block index -> its block type
        self._upstream_blocks: dict[str, JSON] = {}  # tool-like blocks by id, as they began
        self._unseen: dict[int, _Unseen] = {}  # by tool call index
        # What the client has seen:
        self._started = False
        self._open: tuple[int, str] | None = None
        self._next_index = 0
        self._tool_blocks: dict[int, int] = {}  # tool call index -> the client's block index
        self._takes_input = True  # the open block is written with input_json_delta events
        self._delta_sent = False
        self._stopped = False
        self._ended = False  # the client has seen the stream end (message_stop or an error)

    def decode(self, event: SSEEvent) -> list[StreamChunk]:
        data = event_object(event)
        if data is None:
            return []
        kind = data.get("type", event.event)
        if event.event is not None and kind != event.event:
            # The SDKs dispatch on the event's name and read its data: both must say the same.
            raise MalformedStream(f"an event named {event.event!r} carries a {kind!r}")
        if not isinstance(kind, str):
            raise MalformedStream("an event whose type is not a string")
        data = {**data, "type": kind}  # the SDKs fill in a missing type from the name
        if kind == "message_start":
            self._message_start = data
            message = data.get("message")
            if isinstance(message, dict) and message.get("content"):
                raise MalformedStream("message_start carries content, which arrives in content blocks")
            return []
        if kind == "message_delta":
            self._upstream_delta = data
            return [self._finish(data)]
        if kind == "content_block_start":
            return self._block_started(data)
        if kind == "content_block_delta":
            return self._block_delta(data)
        if kind in _STRUCTURAL:
            return []
        return [self._unseen_call(kind, _without(data, "type"), _Unseen(data))]

    def unsettled(self) -> list[StreamChunk]:
        return []

    def _block_delta(self, data: JSON) -> list[StreamChunk]:
        index, delta = data.get("index"), data.get("delta")
        if not isinstance(delta, dict) or not isinstance(delta.get("type"), str):
            raise MalformedStream("a content_block_delta without a typed delta")
        kind = delta["type"]
        tool_index = self._tool_blocks_upstream.get(index) if isinstance(index, int) else None
        if tool_index is not None:
            if kind in ("text_delta", "thinking_delta"):
                raise MalformedStream(f"a {kind} for the tool block {index}")
            if kind == "input_json_delta":
                return [self._tool_delta(tool_index, delta)]
        elif kind in ("text_delta", "thinking_delta"):
            return self._text_delta(kind, delta)
        elif kind == "signature_delta":
            return self._signature(delta)
        block_type = self._upstream_types.get(index) if isinstance(index, int) else None
        return [self._unseen_call(kind, _without(delta, "type"), _Unseen(data, block_type, tool_index))]

    def _text_delta(self, kind: str, delta: JSON) -> list[StreamChunk]:
        """The chunks of the most frequent deltas, text and thinking."""
        field = "text" if kind == "text_delta" else "thinking"
        text = delta.get(field)
        if not isinstance(text, str):
            raise MalformedStream(f"a {kind} without its {field}")
        if not text:
            return []
        if field == "text":
            return [self._chunk({"content": text})]
        thinking = [{"type": "thinking", "thinking": text}]
        return [self._chunk({"reasoning_content": text, "thinking_blocks": thinking})]

    def _signature(self, delta: JSON) -> list[StreamChunk]:
        signature = delta.get("signature")
        if not isinstance(signature, str):
            raise MalformedStream("a signature_delta without its signature")
        if not signature:
            return []
        block = {"type": "thinking", "thinking": "", "signature": signature}
        return [self._chunk({"reasoning_content": "", "thinking_blocks": [block]})]

    def _unseen_call(self, name: str, content: JSON, unseen: _Unseen) -> StreamChunk:
        """The content as a tool call of its own, whole in one chunk."""
        tool_index = self._next_tool_call()
        self._unseen[tool_index] = unseen
        return self._chunk({"tool_calls": [unseen_call(tool_index, name, content)]})

    def _next_tool_call(self) -> int:
        self._tool_calls += 1
        return self._tool_calls - 1

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
        if index in self._upstream_types:
            raise MalformedStream(f"content block {index} was started twice")
        kind = str(block.get("type"))
        self._upstream_types[index] = kind
        if kind == "redacted_thinking":
            return [
                self._chunk({"thinking_blocks": [{"type": "redacted_thinking", "data": block.get("data")}]})
            ]
        if not is_tool_block(block):
            return self._text_block_started(data, kind, block)
        tool_index = self._next_tool_call()
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

    def _text_block_started(self, data: JSON, kind: str, block: JSON) -> list[StreamChunk]:
        """Text or thinking given with a block's start, which the SDKs keep, as the deltas would
        give it; the rest of the start (non-empty citations, say) is unseen content, first, so
        that it is written back as the start of the block the text goes in."""
        rest = unseen_block_fields(block)
        chunks = [self._unseen_call(kind, rest, _Unseen(data, kind))] if rest else []
        field = "text" if kind == "text" else "thinking"
        text, signature = block.get(field) or "", block.get("signature") or ""
        if not isinstance(text, str) or not isinstance(signature, str):
            raise MalformedStream(f"a {kind} block whose {field} or signature is not text")
        if kind == "text" and text:
            chunks.append(self._chunk({"content": text}))
        elif text or signature:
            thinking = {"type": "thinking", "thinking": text, "signature": signature}
            chunks.append(self._chunk({"reasoning_content": text, "thinking_blocks": [thinking]}))
        return chunks

    def _tool_delta(self, tool_index: int, delta: JSON) -> StreamChunk:
        """A tool block's JSON input, in pieces."""
        partial = delta.get("partial_json")
        if not isinstance(partial, str):
            raise MalformedStream("an input_json_delta without its partial_json")
        call: ToolCallDelta = {"index": tool_index, "type": "function", "function": {"arguments": partial}}
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
                self._tool_blocks[self._tool_blocks_upstream[data["index"]]] = data["index"]
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
        if (unseen := self._unseen.get(call["index"])) is not None:
            return self._unseen_written(unseen, arguments)
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

    def _unseen_written(self, unseen: _Unseen, arguments: str) -> bytes:
        """Unseen content the policy let through, written back with its arguments where the
        client's stream has a place for it (raises FormatError where it has none)."""
        data = unseen.data
        content = given_back(arguments, f"unseen {data['type']}")
        if data["type"] == "content_block_start":
            assert unseen.block_type is not None
            block = {**content, **_EMPTY_BLOCKS[unseen.block_type]}
            return self._close_open() + self._start_block(unseen.block_type, block)
        if data["type"] != "content_block_delta":
            return encode_event({**content, "type": data["type"]}, data["type"])
        delta = {**content, "type": data["delta"]["type"]}
        if unseen.tool_index is not None:
            if self._open is None or self._open[0] != self._tool_blocks.get(unseen.tool_index):
                raise FormatError(f"a {delta['type']} for a tool block the client no longer has open")
            return self._delta(delta)
        if unseen.block_type not in _EMPTY_BLOCKS:
            raise FormatError(f"a {delta['type']} for a {unseen.block_type} block cannot be written")
        return self._ensure_open(unseen.block_type, _EMPTY_BLOCKS[unseen.block_type]) + self._delta(delta)

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


def _without(data: JSON, key: str) -> JSON:
    return {k: v for k, v in data.items() if k != key}


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
