"""Provider answers written by hand for tests/test_bypass.py: whole bodies and SSE streams of the
three APIs carrying any output item, any framing; an SSE reader of our own (not the proxy's); and
the official SDKs' stream parsing, to check that what a client got is still a valid stream."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

# --- SSE: writing and reading ----------------------------------------------------------------


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def event_lines(data: Any, name: str | None = None) -> list[str]:
    """One SSE event as its lines (no terminators): ``event:`` when named, then ``data:``."""
    text = data if isinstance(data, str) else dumps(data)
    return ([f"event: {name}"] if name else []) + [f"data: {text}"]


def frame(events: Iterable[list[str]], terminators: Iterator[str] | None = None) -> bytes:
    """Events as bytes: each line and each blank line ends with the next terminator (``\\n`` by
    default)."""
    out = []
    for lines in events:
        for line in [*lines, ""]:
            out.append(line + (next(terminators) if terminators is not None else "\n"))
    return "".join(out).encode()


_LINE = re.compile(r"\r\n|\r|\n")


def parse_sse(body: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) of each event, as the SSE specification reads them: any of the three
    line endings, a leading BOM ignored, comments skipped, multi-line data joined."""
    text = body.decode("utf-8", "replace")
    text = text.removeprefix("\ufeff")
    events: list[tuple[str | None, str]] = []
    name: str | None = None
    data: list[str] | None = None
    lines = _LINE.split(text)
    complete = lines[:-1]  # the last piece has no terminator: not a line yet
    for line in complete:
        if line == "":
            if data is not None:
                events.append((name, "\n".join(data)))
            name, data = None, None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data = [*(data or []), value]
    return events


def sse_json(body: bytes) -> list[tuple[str | None, Any]]:
    """The events whose data is JSON, parsed; ``[DONE]`` is kept as the string."""
    out: list[tuple[str | None, Any]] = []
    for name, data in parse_sse(body):
        if data == "[DONE]":
            out.append((name, data))
            continue
        try:
            out.append((name, json.loads(data)))
        except ValueError:
            out.append((name, data))
    return out


# --- OpenAI Responses ---------------------------------------------------------------------------

#: Per item type: the field streamed as deltas, and the delta and done event names.
RESPONSES_DELTAS: dict[str, tuple[str, str, str]] = {
    "function_call": (
        "arguments",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
    ),
    "custom_tool_call": (
        "input",
        "response.custom_tool_call_input.delta",
        "response.custom_tool_call_input.done",
    ),
    "mcp_call": ("arguments", "response.mcp_call_arguments.delta", "response.mcp_call_arguments.done"),
    "code_interpreter_call": (
        "code",
        "response.code_interpreter_call_code.delta",
        "response.code_interpreter_call_code.done",
    ),
}


def responses_item(kind: str, command: str, item_id: str = "item_x1") -> dict[str, Any]:
    """A Responses output item of ``kind`` that carries ``command`` where that type keeps it."""
    args = dumps({"command": command})
    table: dict[str, dict[str, Any]] = {
        "function_call": {"name": "bash", "call_id": "call_x1", "arguments": args},
        "custom_tool_call": {"name": "apply_patch", "call_id": "call_x1", "input": command},
        "local_shell_call": {
            "call_id": "call_x1",
            "action": {"type": "exec", "command": ["bash", "-lc", command], "env": {}},
        },
        "shell_call": {"call_id": "call_x1", "action": {"commands": [command]}},
        "apply_patch_call": {
            "call_id": "call_x1",
            "operation": {"type": "update_file", "path": "run.sh", "diff": f"@@\n+{command}\n"},
        },
        "computer_call": {
            "call_id": "call_x1",
            "action": {"type": "type", "text": command},
            "pending_safety_checks": [],
        },
        "mcp_call": {"name": "exec", "server_label": "box", "arguments": args},
        "code_interpreter_call": {
            "code": f"import os\nos.system({command!r})",
            "container_id": "cntr_1",
            "outputs": [],
        },
        "web_search_call": {"action": {"type": "search", "query": command}},
        "future_tool_call": {"name": "exec", "payload": command},
    }
    fields = table[kind]
    return {"type": kind, "id": item_id, "status": "completed", **fields}


def message_item(text: str, item_id: str = "msg_x1") -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def responses_object(
    output: list[dict[str, Any]], status: str = "completed", rid: str = "resp_x1"
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "response",
        "created_at": 1764000000,
        "status": status,
        "model": "gpt-4o",
        "output": output if status == "completed" else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {"input_tokens": 5, "output_tokens": 5, "total_tokens": 10}
        if status == "completed"
        else None,
    }


def responses_events(
    items: list[dict[str, Any]],
    *,
    done_items: list[dict[str, Any]] | None = None,
    completed_output: list[dict[str, Any]] | None = None,
    piece: int = 4,
) -> list[dict[str, Any]]:
    """The events of a Responses stream producing ``items``; ``done_items`` overrides what each
    ``output_item.done`` says, ``completed_output`` what ``response.completed`` says."""
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": responses_object([], "in_progress")},
        {"type": "response.in_progress", "response": responses_object([], "in_progress")},
    ]
    for index, item in enumerate(items):
        kind = item["type"]
        if kind == "message":
            text = item["content"][0]["text"]
            started = {**item, "status": "in_progress", "content": []}
            events.append({"type": "response.output_item.added", "output_index": index, "item": started})
            part = {"type": "output_text", "text": "", "annotations": []}
            base = {"item_id": item["id"], "output_index": index, "content_index": 0}
            events.append({"type": "response.content_part.added", **base, "part": part})
            for start in range(0, len(text), piece):
                events.append(
                    {"type": "response.output_text.delta", **base, "delta": text[start : start + piece]}
                )
            events.append({"type": "response.output_text.done", **base, "text": text})
            events.append({"type": "response.content_part.done", **base, "part": {**part, "text": text}})
        elif kind in RESPONSES_DELTAS:
            field, delta_name, done_name = RESPONSES_DELTAS[kind]
            text = item[field]
            started = {**item, "status": "in_progress", field: ""}
            events.append({"type": "response.output_item.added", "output_index": index, "item": started})
            base = {"item_id": item["id"], "output_index": index}
            for start in range(0, len(text), piece):
                events.append({"type": delta_name, **base, "delta": text[start : start + piece]})
            events.append({"type": done_name, **base, field: text})
        else:
            events.append(
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {**item, "status": "in_progress"},
                }
            )
        done = (done_items or items)[index]
        events.append({"type": "response.output_item.done", "output_index": index, "item": done})
    final = completed_output if completed_output is not None else (done_items or items)
    events.append({"type": "response.completed", "response": responses_object(final)})
    for number, event in enumerate(events):
        event["sequence_number"] = number
    return events


def responses_stream_lines(events: list[dict[str, Any]]) -> list[list[str]]:
    return [event_lines(event, event["type"]) for event in events]


# --- OpenAI Chat Completions --------------------------------------------------------------------


def chat_tool_call(command: str, *, kind: str = "function") -> dict[str, Any]:
    if kind == "custom":
        return {"id": "call_x1", "type": "custom", "custom": {"name": "apply_patch", "input": command}}
    return {
        "id": "call_x1",
        "type": "function",
        "function": {"name": "bash", "arguments": dumps({"command": command})},
    }


def chat_completion(choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-x1",
        "object": "chat.completion",
        "created": 1764000000,
        "model": "gpt-4o",
        "choices": choices,
        "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
    }


def chat_choice(index: int, message: dict[str, Any], finish: str) -> dict[str, Any]:
    return {
        "index": index,
        "message": {"role": "assistant", "content": None, **message},
        "finish_reason": finish,
        "logprobs": None,
    }


def chat_chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-x1",
        "object": "chat.completion.chunk",
        "created": 1764000000,
        "model": "gpt-4o",
        "choices": choices,
        **extra,
    }


def chat_delta(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}


def chat_stream_chunks(
    kind: str, command: str, *, choice: int = 0, piece: int = 4, extra: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """A Chat Completions stream whose choice ``choice`` calls a tool with ``command``: ``kind``
    ``function`` (tool_calls), ``custom`` (a custom tool call) or ``legacy`` (delta.function_call).
    With ``choice`` 1, choice 0 says some text alongside."""
    extra = extra or {}
    chunks = []
    choices = range(choice + 1)
    chunks.append(
        chat_chunk(
            [chat_delta(i, {"role": "assistant", "content": None if i == choice else ""}) for i in choices],
            **extra,
        )
    )
    if choice:
        for word in ["Sure", ", ", "done."]:
            chunks.append(chat_chunk([chat_delta(0, {"content": word})], **extra))
    if kind == "legacy":
        args = dumps({"command": command})
        chunks.append(
            chat_chunk([chat_delta(choice, {"function_call": {"name": "bash", "arguments": ""}})], **extra)
        )
        for start in range(0, len(args), piece):
            chunks.append(
                chat_chunk(
                    [chat_delta(choice, {"function_call": {"arguments": args[start : start + piece]}})],
                    **extra,
                )
            )
        finish = "function_call"
    else:
        call = chat_tool_call(command, kind=kind)
        field = "input" if kind == "custom" else "arguments"
        text = call[kind][field]
        head = {"index": 0, "id": call["id"], "type": kind, kind: {"name": call[kind]["name"], field: ""}}
        chunks.append(chat_chunk([chat_delta(choice, {"tool_calls": [head]})], **extra))
        for start in range(0, len(text), piece):
            part = {"index": 0, kind: {field: text[start : start + piece]}}
            chunks.append(chat_chunk([chat_delta(choice, {"tool_calls": [part]})], **extra))
        finish = "tool_calls"
    finals = [chat_delta(i, {}, finish if i == choice else "stop") for i in choices]
    chunks.append(chat_chunk(finals, **extra))
    return chunks


def chat_stream_lines(chunks: list[dict[str, Any]]) -> list[list[str]]:
    return [event_lines(chunk) for chunk in chunks] + [event_lines("[DONE]")]


# --- Anthropic Messages -------------------------------------------------------------------------


def anthropic_block(kind: str, command: str) -> dict[str, Any]:
    blocks: dict[str, dict[str, Any]] = {
        "tool_use": {"type": "tool_use", "id": "toolu_x1", "name": "bash", "input": {"command": command}},
        "server_tool_use": {
            "type": "server_tool_use",
            "id": "srvtoolu_x1",
            "name": "bash_code_execution",
            "input": {"command": command},
        },
        "mcp_tool_use": {
            "type": "mcp_tool_use",
            "id": "mcptoolu_x1",
            "name": "exec",
            "server_name": "box",
            "input": {"command": command},
        },
        "future_tool_use": {"type": "future_tool_use", "id": "ftu_x1", "name": "exec", "payload": command},
    }
    return blocks[kind]


def anthropic_message(content: list[dict[str, Any]], stop: str = "tool_use") -> dict[str, Any]:
    return {
        "id": "msg_x1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 5},
    }


def anthropic_citation(cited: str) -> dict[str, Any]:
    """A citation of a document's characters, as a ``citations_delta`` or a text block carries it."""
    return {
        "type": "char_location",
        "cited_text": cited,
        "document_index": 0,
        "document_title": "notes",
        "start_char_index": 0,
        "end_char_index": len(cited),
    }


def anthropic_events(
    blocks: list[dict[str, Any]], *, stop: str = "tool_use", piece: int = 4, prefilled: bool = False
) -> list[dict[str, Any]]:
    """A Messages stream producing ``blocks``: text as text deltas, blocks with ``input`` as
    input_json deltas (``prefilled``: the input already in content_block_start, and no deltas),
    other blocks whole in their content_block_start."""
    start = {**anthropic_message([]), "stop_reason": None}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            events.append(
                {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}
            )
            text = block["text"]
            for s in range(0, len(text), piece):
                events.append(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": text[s : s + piece]},
                    }
                )
        elif "input" in block and not prefilled:
            events.append(
                {"type": "content_block_start", "index": index, "content_block": {**block, "input": {}}}
            )
            args = dumps(block["input"])
            for s in range(0, len(args), piece):
                events.append(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": args[s : s + piece]},
                    }
                )
        else:
            events.append({"type": "content_block_start", "index": index, "content_block": block})
        events.append({"type": "content_block_stop", "index": index})
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": 5},
        }
    )
    events.append({"type": "message_stop"})
    return events


def anthropic_stream_lines(
    events: list[dict[str, Any]], names: dict[int, str] | None = None
) -> list[list[str]]:
    """``names`` gives some events (by position) another ``event:`` name than their type."""
    names = names or {}
    return [event_lines(event, names.get(n, event["type"])) for n, event in enumerate(events)]


# --- The official SDKs' stream parsing -----------------------------------------------------------


def sdk_parse(api: str, body: bytes) -> Any:
    """Parses ``body`` as the official SDK does for ``api`` (``chat``, ``responses``,
    ``messages``), accumulating the events into the final object; raises what the SDK raises
    (an error event, an event out of place, a stream without its terminal event)."""
    if api == "messages":
        from anthropic._models import construct_type as anthropic_construct
        from anthropic._streaming import SSEDecoder as AnthropicDecoder
        from anthropic.lib.streaming._messages import accumulate_event
        from anthropic.types import RawMessageStreamEvent

        snapshot = None
        stopped = False
        json_bufs: dict[int, bytes] = {}
        for message_sse in AnthropicDecoder().iter_bytes(iter([body])):
            if message_sse.event in ("ping", None) or not message_sse.data:
                continue
            if message_sse.event == "error":
                raise RuntimeError(f"error event: {message_sse.data}")
            event = anthropic_construct(type_=RawMessageStreamEvent, value=message_sse.json())
            snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)  # type: ignore[arg-type]
            stopped = stopped or getattr(event, "type", None) == "message_stop"
        if not stopped:
            raise RuntimeError("the stream ended without message_stop")
        return snapshot
    from openai import omit
    from openai._models import construct_type
    from openai._streaming import SSEDecoder

    done = False
    if api == "chat":
        from openai.lib.streaming.chat._completions import ChatCompletionStreamState
        from openai.types.chat import ChatCompletionChunk

        chat_state = ChatCompletionStreamState()
        for sse in SSEDecoder().iter_bytes(iter([body])):
            if sse.data.startswith("[DONE]"):
                done = True
                break
            data = sse.json()
            if isinstance(data, dict) and data.get("error"):
                raise RuntimeError(f"error event: {data}")
            chat_state.handle_chunk(construct_type(type_=ChatCompletionChunk, value=data))  # type: ignore[arg-type]
        if not done:
            raise RuntimeError("the stream ended without [DONE]")
        return chat_state.current_completion_snapshot
    from openai.lib.streaming.responses._responses import ResponseStreamState
    from openai.types.responses import ResponseStreamEvent

    state: Any = ResponseStreamState(input_tools=omit, text_format=omit)
    final = None
    for sse in SSEDecoder().iter_bytes(iter([body])):
        if sse.data.startswith("[DONE]"):
            break
        data = sse.json()
        if isinstance(data, dict) and data.get("error"):
            raise RuntimeError(f"error event: {data}")
        event = construct_type(type_=ResponseStreamEvent, value=data)  # type: ignore[arg-type]
        state.handle_event(event)
        if getattr(event, "type", None) in ("response.completed", "response.incomplete", "response.failed"):
            final = event
    if final is None:
        raise RuntimeError("the stream ended without response.completed")
    return final
