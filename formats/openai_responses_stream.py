"""OpenAI Responses streams: the transcoder between ``response.*`` events and normalised chunks."""

import copy
from dataclasses import dataclass
from typing import Any

from controlplane.chunks import ChunkDelta, StreamChunk, ToolCallDelta
from formats.base import JSON, FormatError, MalformedStream, count, event_object
from formats.responses_items import (
    ARGUMENT_DELTAS,
    append_arguments,
    call_id,
    is_tool_item,
    message_item,
    part_text,
    streams_arguments,
    tool_arguments,
    tool_name,
    with_arguments,
)
from formats.sse import SSEEvent, encode_event
from formats.unseen import given_back, unseen_call

_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_TEXT_DELTAS = frozenset({"response.output_text.delta", "response.refusal.delta"})
#: A part's text is done: the field holding its whole text.
_TEXT_DONE = {"response.output_text.done": "text", "response.refusal.done": "refusal"}
_REASONING_DELTAS = frozenset({"response.reasoning_summary_text.delta", "response.reasoning_text.delta"})
#: Events whose content the transcoder shows the policy (or that carry none of their own: a part
#: or an item begun, whose text is settled when it is done), and the events of tool items, held
#: with their item until its final form is judged. Any other event (an annotation, an audio
#: transcript, a type still to come) is unseen content: a tool call of its own.
_KNOWN_EVENTS = frozenset(
    {
        "error",
        "response.created",
        "response.in_progress",
        "response.queued",
        *_FINAL_EVENTS,
        "response.output_item.added",
        "response.output_item.done",
        "response.content_part.added",
        "response.content_part.done",
        *_TEXT_DELTAS,
        *_TEXT_DONE,
        *_REASONING_DELTAS,
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_part.done",
        "response.reasoning_summary_text.done",
        "response.reasoning_text.done",
        *ARGUMENT_DELTAS,
        "response.function_call_arguments.done",
        "response.custom_tool_call_input.done",
        "response.mcp_call_arguments.done",
    }
)
_TOOL_EVENTS = (
    "response.web_search_call.",
    "response.file_search_call.",
    "response.code_interpreter_call.",
    "response.code_interpreter_call_code.",
    "response.image_generation_call.",
    "response.mcp_call.",
    "response.mcp_list_tools.",
)


def _known(kind: str) -> bool:
    return kind in _KNOWN_EVENTS or kind.startswith(_TOOL_EVENTS)


def _position(value: Any) -> int:
    if not isinstance(value, int) or value < 0:
        raise MalformedStream("an event names no output index")
    return value


@dataclass
class _Deferred:
    """A tool item the transcoder writes whole when it closes: its upstream form and the
    arguments the policy let out for it."""

    item: JSON
    arguments: str


@dataclass
class _UpstreamTool:
    """A tool-like output item of the upstream stream, and what the policy was shown of it."""

    index: int  # among the stream's tool calls
    id: str
    name: str
    item: JSON  # the latest view of the item
    seen: str = ""  # the arguments the policy was given so far
    settled: bool = False  # its done event came: its arguments are final


class OpenAIResponsesTranscoder:
    """Shows the policy every output item of the stream (text, reasoning, and every other item
    as a tool call) and checks that the stream does not contradict itself: what a ``done`` event
    or ``response.completed`` says an item holds must be what its deltas streamed, or begin with
    it (the rest is then shown to the policy too).

    Tracks the output items the client has seen, so a changed stream ends with a
    ``response.completed`` whose ``output`` matches what was streamed."""

    def __init__(self) -> None:
        self._response: JSON = {}
        self._final: JSON | None = None
        # What the upstream has said:
        self._tools: dict[int, _UpstreamTool] = {}  # by output index
        self._tool_calls = 0  # tool calls shown to the policy: tool items and unseen events
        self._unseen: dict[int, JSON] = {}  # unseen events as they came, by tool call index
        self._texts: dict[tuple[int, int], str] = {}  # by output and content index
        # What the client has seen:
        self._sequence = -1
        self._created = False
        self._items: list[JSON] = []
        self._open: int | None = None
        self._tool_items: dict[int, int] = {}
        self._deferred: dict[int, _Deferred] = {}  # items written whole when closed
        self._completed = False

    # -- upstream ---------------------------------------------------------------------------
    def decode(self, event: SSEEvent) -> list[StreamChunk]:
        data = event_object(event)
        if data is None:
            return []
        kind = data.get("type", "")
        if not isinstance(kind, str):
            raise MalformedStream("an event whose type is not a string")
        if not _known(kind):
            return [self._unseen_call(kind, data)]
        if kind in ("response.created", "response.in_progress") and isinstance(data.get("response"), dict):
            self._response = data["response"]
        elif kind in _FINAL_EVENTS and isinstance(data.get("response"), dict):
            self._final = data["response"]
        if self.is_error(event):
            return []
        position, item = data.get("output_index"), data.get("item")
        if kind == "response.output_item.added" and isinstance(item, dict) and is_tool_item(item):
            return [self._start_tool(_position(position), item)]
        if kind == "response.output_item.done" and isinstance(item, dict):
            return self._settle_item(_position(position), item)
        tool = self._tools.get(position) if isinstance(position, int) else None
        if kind in ARGUMENT_DELTAS:
            if tool is None or not streams_arguments(tool.item) or not isinstance(data.get("delta"), str):
                raise MalformedStream(f"{kind} for no tool item the stream began")
            tool.seen += data["delta"]
            return [self._tool_chunk(tool, data["delta"])]
        if tool is not None and (kind in _TEXT_DELTAS or kind in _TEXT_DONE):
            raise MalformedStream(f"{kind} for the tool item at {position}")
        if tool is not None:  # any other event of a tool item waits with it
            return [self._tool_chunk(tool, "")]
        part = (_position(position), data.get("content_index", 0)) if position is not None else None
        if kind in _TEXT_DELTAS:
            return self._text_delta(part, data.get("delta"))
        if kind in _TEXT_DONE:
            return self._settle_text(part, data.get(_TEXT_DONE[kind]))
        if kind == "response.content_part.done":
            return self._settle_text(part, part_text(data.get("part")))
        if kind in ("response.completed", "response.incomplete"):
            return [*self._settle_output(data["response"].get("output")), self._finish_chunk(data)]
        if kind in _REASONING_DELTAS:
            # Both reach the policy as reasoning (LiteLLM's parser drops the raw reasoning text).
            if not isinstance(data.get("delta"), str):
                raise MalformedStream(f"{kind} without its text")
            return [self._chunk({"reasoning_content": data["delta"]} if data["delta"] else {})]
        return []

    def unsettled(self) -> list[StreamChunk]:
        """Items shown whole with their start that never got a done event: their content as the
        client saw it, which the policy has not judged yet."""
        chunks = []
        for tool in self._tools.values():
            if not tool.settled and not streams_arguments(tool.item) and not tool.seen:
                tool.seen = tool_arguments(tool.item)
                if tool.seen:
                    chunks.append(self._tool_chunk(tool, tool.seen))
        return chunks

    def is_error(self, event: SSEEvent) -> bool:
        data = event.json()
        return isinstance(data, dict) and data.get("type") in (
            "error",
            "response.failed",
        )

    def _chunk(self, delta: ChunkDelta, finish_reason: str | None = None) -> StreamChunk:
        return {
            "id": self._response.get("id"),
            "created": self._response.get("created_at"),
            "model": self._response.get("model"),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    def _start_tool(self, position: int, item: JSON) -> StreamChunk:
        if position in self._tools:
            raise MalformedStream(f"the output item at {position} was begun twice")
        tool = _UpstreamTool(self._next_tool_call(), call_id(item, position), tool_name(item), item)
        # Text arguments stream in deltas; an item with JSON arguments is final at its done event
        # (what it shows when it begins is judged then, or by unsettled() if none comes).
        tool.seen = tool_arguments(item) if streams_arguments(item) else ""
        self._tools[position] = tool
        call: ToolCallDelta = {
            "index": tool.index,
            "id": tool.id,
            "type": "function",
            "function": {"name": tool.name, "arguments": tool.seen},
        }
        return self._chunk({"tool_calls": [call]})

    def _next_tool_call(self) -> int:
        self._tool_calls += 1
        return self._tool_calls - 1

    def _unseen_call(self, kind: str, data: JSON) -> StreamChunk:
        """An event the view has no place for, as a tool call whole in one chunk: its name is
        the event's type, its arguments its JSON."""
        index = self._next_tool_call()
        self._unseen[index] = data
        content = {k: v for k, v in data.items() if k not in ("type", "sequence_number")}
        return self._chunk({"tool_calls": [unseen_call(index, kind, content)]})

    def _unseen_written(self, data: JSON, arguments: str) -> bytes:
        """An unseen event the policy let through, once the stream has diverged: with the next
        sequence number, and one that names an output item (an annotation) in the item the
        client has open (the client's items are the transcoder's); with none open, it cannot be
        written, and the stream ends with an error."""
        content = given_back(arguments, f"a {data['type']} event")
        if "output_index" in content:
            if self._open is None:
                raise FormatError(f"a {data['type']} event for an output item the client does not have open")
            content["output_index"] = self._open
            if "item_id" in content:
                content["item_id"] = self._items[self._open].get("id")
        return self._emit({**content, "type": data["type"]})

    def _tool_chunk(self, tool: _UpstreamTool, arguments: str) -> StreamChunk:
        call: ToolCallDelta = {"index": tool.index, "type": "function", "function": {"arguments": arguments}}
        return self._chunk({"tool_calls": [call]})

    def _settle_item(self, position: int, item: JSON) -> list[StreamChunk]:
        """An item's final form (its done event, or its place in ``response.completed``)."""
        if item.get("type") == "message":
            return [
                chunk
                for index, part in enumerate(item.get("content") or [])
                for chunk in self._settle_text((position, index), part_text(part))
            ]
        if not is_tool_item(item):
            return []
        chunks = []
        tool = self._tools.get(position)
        if tool is None:  # never begun: the client gets it whole
            chunks.append(self._start_tool(position, item))
            tool = self._tools[position]
        if tool_name(item) != tool.name:
            raise MalformedStream(f"the tool item at {position} changed its name")
        final = tool_arguments(item)
        if not final.startswith(tool.seen) or (tool.settled and final != tool.seen):
            raise MalformedStream(f"the tool item at {position} ends with arguments its deltas did not carry")
        if rest := final[len(tool.seen) :]:
            chunks.append(self._tool_chunk(tool, rest))
        tool.seen, tool.item, tool.settled = final, item, True
        return chunks

    def _settle_output(self, output: Any) -> list[StreamChunk]:
        if not isinstance(output, list):
            return []
        return [
            chunk
            for position, item in enumerate(output)
            if isinstance(item, dict)
            for chunk in self._settle_item(position, item)
        ]

    def _text_delta(self, part: tuple[int, Any] | None, delta: Any) -> list[StreamChunk]:
        if part is None or not isinstance(delta, str):
            raise MalformedStream("a text delta for no output item")
        self._texts[part] = self._texts.get(part, "") + delta
        return [self._chunk({"content": delta})] if delta else []

    def _settle_text(self, part: tuple[int, Any] | None, final: Any) -> list[StreamChunk]:
        if part is None or not isinstance(final, str):
            return []
        seen = self._texts.get(part, "")
        if not final.startswith(seen):
            raise MalformedStream(f"the text of output item {part[0]} ends other than its deltas streamed it")
        self._texts[part] = final
        rest = final[len(seen) :]
        return [self._chunk({"content": rest})] if rest else []

    def _finish_chunk(self, data: JSON) -> StreamChunk:
        """The finish reason and usage of ``response.completed`` (or ``incomplete``)."""
        reason = "length" if data["response"].get("status") == "incomplete" else "stop"
        finish = self._chunk({}, "tool_calls" if self._tools and reason == "stop" else reason)
        usage = data["response"].get("usage")
        finish["usage"] = chat_usage(usage) if isinstance(usage, dict) and usage else None
        return finish

    # -- the client's view ------------------------------------------------------------------
    @property
    def ended(self) -> bool:
        return self._completed

    def observe_emitted(self, event: SSEEvent) -> None:
        data = event.json()
        if not isinstance(data, dict):
            return
        self._sequence = max(self._sequence, data.get("sequence_number", self._sequence))
        kind = data.get("type", "")
        index: int = data.get("output_index", -1)
        if kind in ("response.created", "response.in_progress"):
            self._created = True
        elif kind == "response.output_item.added":
            item = copy.deepcopy(data["item"])
            self._place_item(index, item)
            self._open = index
            if is_tool_item(item):
                self._tool_items[len(self._tool_items)] = index
        elif kind == "response.content_part.added":
            self._items[index].setdefault("content", []).append(copy.deepcopy(data["part"]))
        elif kind in _TEXT_DELTAS:
            key = "text" if kind == "response.output_text.delta" else "refusal"
            part = self._items[index]["content"][data.get("content_index", 0)]
            part[key] = part.get(key, "") + data["delta"]
        elif kind in ARGUMENT_DELTAS:
            append_arguments(self._items[index], data["delta"])
        elif kind == "response.output_item.done":
            self._place_item(index, copy.deepcopy(data["item"]))
            self._open = None
        elif kind in _FINAL_EVENTS or kind == "error":
            self._completed = True  # nothing follows a final event or the provider's error

    def _place_item(self, index: int, item: JSON) -> None:
        while len(self._items) <= index:
            self._items.append({})
        self._items[index] = item

    # -- synthesis --------------------------------------------------------------------------
    def encode(self, chunk: StreamChunk) -> bytes:
        out = [self._ensure_created()]
        if choices := chunk.get("choices"):
            choice = choices[0]
            delta = choice.get("delta") or {}
            if reasoning := delta.get("reasoning_content"):
                out.append(self._reasoning(reasoning))
            if content := delta.get("content"):
                out.append(self._text(content))
            for call in delta.get("tool_calls") or []:
                out.append(self._tool_call(call))
            if finish_reason := choice.get("finish_reason"):
                out.append(self._complete(finish_reason))
        return b"".join(out)

    def finish(self) -> bytes:
        if self._completed:
            return b""
        return self._ensure_created() + self._complete("stop")

    def error_event(self, message: str) -> bytes:
        """An ``error`` event with the next sequence number. It carries the fields both flat, as the
        API reference documents them (``ResponseErrorEvent``), and nested under ``error``, as the
        live API sends them: the openai SDK's Stream raises ``openai.APIError`` only on the nested
        form. Nothing follows it: no ``response.failed``, no open item closed."""
        if self._completed:
            return b""
        self._completed = True
        self._open = None
        error = {"type": "server_error", "code": "server_error", "message": message, "param": None}
        return self._emit(
            {"type": "error", "code": "server_error", "message": message, "param": None, "error": error}
        )

    def _emit(self, payload: JSON) -> bytes:
        self._sequence += 1
        payload["sequence_number"] = self._sequence
        return encode_event(payload, payload["type"])

    def _ensure_created(self) -> bytes:
        if self._created:
            return b""
        self._created = True
        response = {**self._response, "status": "in_progress", "output": []}
        return self._emit({"type": "response.created", "response": response}) + self._emit(
            {"type": "response.in_progress", "response": response}
        )

    def _open_item(self, kind: str) -> tuple[int, JSON] | None:
        if self._open is not None and self._items[self._open].get("type") == kind:
            return self._open, self._items[self._open]
        return None

    def _add_item(self, item: JSON) -> bytes:
        out = self._close_open()
        self._items.append(item)
        self._open = len(self._items) - 1
        return out + self._emit(
            {
                "type": "response.output_item.added",
                "output_index": self._open,
                "item": copy.deepcopy(item),
            }
        )

    def _text(self, text: str) -> bytes:
        out = b""
        if (opened := self._open_item("message")) is None:
            out += self._add_item(message_item(f"msg_luthien_{len(self._items)}", "", "in_progress"))
            opened = self._open_item("message")
        assert opened is not None
        index, item = opened
        if not item.get("content"):
            item["content"] = [{"type": "output_text", "text": "", "annotations": []}]
            out += self._emit(
                {
                    "type": "response.content_part.added",
                    "item_id": item["id"],
                    "output_index": index,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []},
                }
            )
        part_index = len(item["content"]) - 1
        item["content"][part_index]["text"] += text
        return out + self._emit(
            {
                "type": "response.output_text.delta",
                "item_id": item["id"],
                "output_index": index,
                "content_index": part_index,
                "delta": text,
                "logprobs": [],
            }
        )

    def _reasoning(self, text: str) -> bytes:
        out = b""
        if (opened := self._open_item("reasoning")) is None:
            out += self._add_item(
                {
                    "type": "reasoning",
                    "id": f"rs_luthien_{len(self._items)}",
                    "summary": [],
                }
            )
            opened = self._open_item("reasoning")
        assert opened is not None
        index, item = opened
        if not item["summary"]:
            item["summary"].append({"type": "summary_text", "text": ""})
            out += self._emit(
                {
                    "type": "response.reasoning_summary_part.added",
                    "item_id": item["id"],
                    "output_index": index,
                    "summary_index": 0,
                    "part": {"type": "summary_text", "text": ""},
                }
            )
        item["summary"][-1]["text"] += text
        return out + self._emit(
            {
                "type": "response.reasoning_summary_text.delta",
                "item_id": item["id"],
                "output_index": index,
                "summary_index": len(item["summary"]) - 1,
                "delta": text,
            }
        )

    def _tool_call(self, call: ToolCallDelta) -> bytes:
        out = b""
        function = call.get("function") or {}
        arguments = function.get("arguments") or ""
        if (unseen := self._unseen.get(call["index"])) is not None:
            return self._unseen_written(unseen, arguments)
        if call_id := call.get("id"):
            upstream = next((t.item for t in self._tools.values() if t.id == call_id), {})
            if upstream and upstream.get("type") != "function_call":
                # Another kind of item: written whole, with its arguments, when it closes.
                out += self._close_open()
                self._items.append(upstream)
                self._open = len(self._items) - 1
                self._deferred[self._open] = _Deferred(upstream, arguments)
                self._tool_items[call["index"]] = self._open
                return out
            item = {
                "type": "function_call",
                "id": upstream.get("id", call_id),
                "call_id": upstream.get("call_id", call_id),
                "name": function.get("name"),
                "arguments": "",
                "status": "in_progress",
            }
            out += self._add_item(item)
            self._tool_items[call["index"]] = len(self._items) - 1
        index = self._tool_items.get(call["index"])
        if index is not None and index == self._open and index in self._deferred:
            self._deferred[index].arguments += arguments
            return out
        if arguments and index is not None and index == self._open:
            self._items[index]["arguments"] += arguments
            out += self._emit(
                {
                    "type": "response.function_call_arguments.delta",
                    "item_id": self._items[index]["id"],
                    "output_index": index,
                    "delta": arguments,
                }
            )
        return out

    def _close_open(self) -> bytes:
        if self._open is None:
            return b""
        index, self._open = self._open, None
        if (deferred := self._deferred.pop(index, None)) is not None:
            return self._write_whole(index, deferred)
        item = self._items[index]
        out = b""
        kind = item.get("type")
        if kind == "message":
            for part_index, part in enumerate(item.get("content") or []):
                out += self._emit(
                    {
                        "type": "response.output_text.done",
                        "item_id": item["id"],
                        "output_index": index,
                        "content_index": part_index,
                        "text": part["text"],
                        "logprobs": [],
                    }
                )
                out += self._emit(
                    {
                        "type": "response.content_part.done",
                        "item_id": item["id"],
                        "output_index": index,
                        "content_index": part_index,
                        "part": part,
                    }
                )
        elif kind == "function_call":
            out += self._emit(
                {
                    "type": "response.function_call_arguments.done",
                    "item_id": item["id"],
                    "output_index": index,
                    "arguments": item.get("arguments", ""),
                }
            )
        elif kind == "reasoning":
            for summary_index, part in enumerate(item.get("summary") or []):
                out += self._emit(
                    {
                        "type": "response.reasoning_summary_text.done",
                        "item_id": item["id"],
                        "output_index": index,
                        "summary_index": summary_index,
                        "text": part["text"],
                    }
                )
                out += self._emit(
                    {
                        "type": "response.reasoning_summary_part.done",
                        "item_id": item["id"],
                        "output_index": index,
                        "summary_index": summary_index,
                        "part": part,
                    }
                )
        if "status" in item:
            item["status"] = "completed"
        return out + self._emit(
            {
                "type": "response.output_item.done",
                "output_index": index,
                "item": copy.deepcopy(item),
            }
        )

    def _write_whole(self, index: int, deferred: "_Deferred") -> bytes:
        item = copy.deepcopy(with_arguments(deferred.item, deferred.arguments))
        if "status" in item:
            item["status"] = "completed"
        self._items[index] = item
        added = {"type": "response.output_item.added", "output_index": index, "item": item}
        done = {"type": "response.output_item.done", "output_index": index, "item": item}
        return self._emit(added) + self._emit(done)

    def _complete(self, finish_reason: str) -> bytes:
        out = self._close_open()
        self._completed = True
        final = self._final or {**self._response, "status": "completed"}
        kind = (
            "response.incomplete"
            if final.get("status") == "incomplete" and finish_reason == "length"
            else "response.completed"
        )
        status = "incomplete" if kind == "response.incomplete" else "completed"
        response = {
            **final,
            "status": status,
            "output": [copy.deepcopy(i) for i in self._items if i],
        }
        return out + self._emit({"type": kind, "response": response})


def chat_usage(usage: JSON) -> JSON:
    """The Responses API's token counts in Chat Completions' terms, as LiteLLM reckons them."""
    prompt, completion = count(usage, "input_tokens"), count(usage, "output_tokens")
    counts: JSON = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if isinstance(details := usage.get("input_tokens_details"), dict):
        counts["prompt_tokens_details"] = {"cached_tokens": details.get("cached_tokens")}
    if isinstance(details := usage.get("output_tokens_details"), dict):
        counts["completion_tokens_details"] = {"reasoning_tokens": details.get("reasoning_tokens")}
    return counts
