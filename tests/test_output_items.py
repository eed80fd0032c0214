"""Every output item reaches tool-call policies as a tool call, whole and streamed, in the three
formats: Responses items of every tool-like type (and an invented one), Chat Completions legacy
function calls, custom tool calls and second choices, Anthropic server, MCP and invented blocks.
A stream that contradicts itself ends with an error instead of passing what was not shown.

In-process: the codecs, the stream relay and a real ToolCallBlocklistPolicy behind either
control plane; tests/test_bypass.py drives the same classes through a real proxy."""

import json
from typing import Any

import pytest

from controlplane.models import RequestMetadata
from controlplane.policies import NoOpPolicy, ToolCallBlocklistPolicy
from formats.sse import SSEParser, encode_event
from tests.codecs import codec_for
from tests.control_planes import Kind, control_plane_for
from tests.test_stream_relay import run_relay

DANGER = "rm -rf /"
BLOCKLIST = ToolCallBlocklistPolicy(ToolCallBlocklistPolicy.Config(patterns=[r"rm\s+-rf"]))
NOTE = "[Luthien] Blocked the tool call"

# --- Responses -----------------------------------------------------------------------------

#: Tool-like Responses items, each carrying the dangerous command where its type keeps it.
RESPONSES_ITEMS: dict[str, dict[str, Any]] = {
    "function_call": {"name": "bash", "call_id": "call_1", "arguments": json.dumps({"command": DANGER})},
    "custom_tool_call": {"name": "apply_patch", "call_id": "call_1", "input": f"*** Begin Patch\n{DANGER}"},
    "mcp_call": {"name": "exec", "server_label": "box", "arguments": json.dumps({"cmd": DANGER})},
    "local_shell_call": {"call_id": "call_1", "action": {"type": "exec", "command": ["bash", "-lc", DANGER]}},
    "shell_call": {"call_id": "call_1", "action": {"commands": [DANGER]}},
    "apply_patch_call": {
        "call_id": "call_1",
        "operation": {"type": "update_file", "path": "a", "diff": DANGER},
    },
    "computer_call": {"call_id": "call_1", "action": {"type": "type", "text": DANGER}},
    "code_interpreter_call": {"code": f"import os; os.system('{DANGER}')", "container_id": "c"},
    "web_search_call": {"action": {"type": "search", "query": DANGER}},
    "future_tool_call": {"payload": DANGER},
}
_STREAMED_TEXT = {"function_call": "arguments", "custom_tool_call": "input", "mcp_call": "arguments"}
_DELTA_EVENT = {
    "function_call": "response.function_call_arguments.delta",
    "custom_tool_call": "response.custom_tool_call_input.delta",
    "mcp_call": "response.mcp_call_arguments.delta",
}


def responses_stream(kind: str, fields: dict[str, Any], *, done: dict[str, Any] | None = None) -> bytes:
    """A Responses stream with one item of ``kind``; ``done`` overrides the item's final form."""
    item = {"type": kind, "id": "item_1", "status": "completed", **fields}
    response = {"id": "resp_1", "object": "response", "status": "in_progress", "model": "m", "output": []}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": response},
    ]
    field = _STREAMED_TEXT.get(kind)
    started = {**item, "status": "in_progress", **({field: ""} if field else {})}
    events.append({"type": "response.output_item.added", "output_index": 0, "item": started})
    if field:
        text = item[field]
        for start in range(0, len(text), 5):
            piece = text[start : start + 5]
            events.append(
                {"type": _DELTA_EVENT[kind], "output_index": 0, "item_id": "item_1", "delta": piece}
            )
    final = done if done is not None else item
    events.append({"type": "response.output_item.done", "output_index": 0, "item": final})
    completed = {**response, "status": "completed", "output": [final]}
    events.append({"type": "response.completed", "response": completed})
    return b"".join(
        encode_event({**event, "sequence_number": number}, event["type"])
        for number, event in enumerate(events)
    )


def events_of(data: bytes) -> list[dict[str, Any]]:
    return [e.json() for e in SSEParser().feed(data) if isinstance(e.json(), dict)]


async def streamed(path: str, data: bytes, kind: Kind, policy: Any = BLOCKLIST) -> bytes:
    async with control_plane_for(policy, kind) as control_plane:
        return await run_relay(control_plane, path, [data], RequestMetadata(call_id="c", host="h", path=path))


@pytest.mark.parametrize("item_type", RESPONSES_ITEMS)
async def test_every_responses_item_is_a_tool_call_in_a_stream(
    item_type: str, control_plane_kind: Kind
) -> None:
    out = await streamed(
        "/v1/responses", responses_stream(item_type, RESPONSES_ITEMS[item_type]), control_plane_kind
    )
    events = events_of(out)
    assert not any((e.get("item") or {}).get("type") == item_type for e in events), item_type
    final = events[-1]
    assert final["type"] == "response.completed"
    assert [i["type"] for i in final["response"]["output"]] == ["message"]
    assert NOTE in final["response"]["output"][0]["content"][0]["text"]


@pytest.mark.parametrize("item_type", RESPONSES_ITEMS)
async def test_a_safe_responses_item_passes_byte_for_byte(item_type: str, control_plane_kind: Kind) -> None:
    safe = json.loads(json.dumps(RESPONSES_ITEMS[item_type]).replace(DANGER, "ls"))
    stream = responses_stream(item_type, safe)
    assert await streamed("/v1/responses", stream, control_plane_kind) == stream


@pytest.mark.parametrize("item_type", RESPONSES_ITEMS)
def test_every_responses_item_is_a_tool_call_in_a_whole_response(item_type: str) -> None:
    codec = codec_for("POST", "/v1/responses")
    assert codec is not None
    item = {"type": item_type, "id": "item_1", "status": "completed", **RESPONSES_ITEMS[item_type]}
    body = {"id": "resp_1", "object": "response", "status": "completed", "model": "m", "output": [item]}
    response = codec.parse_response(body)
    calls = response.choices[0].message.tool_calls  # type: ignore[union-attr]
    assert calls and len(calls) == 1
    assert BLOCKLIST.match(calls[0].function.name, calls[0].function.arguments) is not None
    rendered = codec.render_response(body, response)
    assert rendered["output"] == [item]  # unchanged, it renders back as it was
    calls.clear()
    assert codec.render_response(body, response)["output"] == []


async def test_a_done_item_that_contradicts_its_deltas_ends_the_stream(control_plane_kind: Kind) -> None:
    safe = {"name": "bash", "call_id": "call_1", "arguments": json.dumps({"command": "ls"})}
    evil = {"type": "function_call", "id": "item_1", "status": "completed", **safe}
    evil["arguments"] = json.dumps({"command": DANGER})
    out = await streamed(
        "/v1/responses", responses_stream("function_call", safe, done=evil), control_plane_kind, NoOpPolicy()
    )
    events = events_of(out)
    assert events[-1]["type"] == "error"
    assert DANGER not in out.decode()


async def test_a_completed_output_with_an_item_never_streamed_is_policed(control_plane_kind: Kind) -> None:
    stream = responses_stream("message", {"role": "assistant", "content": []})
    hidden = {"type": "local_shell_call", "id": "x", "call_id": "c", "action": {"command": [DANGER]}}
    data = stream.replace(
        b'"output":[{"type":"message"', b'"output":[' + json.dumps(hidden).encode() + b',{"type":"message"'
    )
    out = await streamed("/v1/responses", data, control_plane_kind)
    assert not any((e.get("item") or {}).get("type") == "local_shell_call" for e in events_of(out))
    final = events_of(out)[-1]
    assert all(item["type"] != "local_shell_call" for item in final["response"]["output"])


# --- Chat Completions ----------------------------------------------------------------------


def chat_stream(deltas: list[dict[str, Any]], finish: str, choice: int = 0) -> bytes:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    events = [
        {**base, "choices": [{"index": choice, "delta": delta, "logprobs": None, "finish_reason": None}]}
        for delta in deltas
    ]
    events.append(
        {**base, "choices": [{"index": choice, "delta": {}, "logprobs": None, "finish_reason": finish}]}
    )
    return b"".join(encode_event(e) for e in events) + encode_event("[DONE]")


LEGACY = [
    {"role": "assistant", "content": None, "function_call": {"name": "bash", "arguments": ""}},
    {"function_call": {"arguments": json.dumps({"command": DANGER})}},
]
CUSTOM = [
    {
        "role": "assistant",
        "tool_calls": [
            {"index": 0, "id": "call_1", "type": "custom", "custom": {"name": "apply_patch", "input": ""}}
        ],
    },
    {"tool_calls": [{"index": 0, "type": "custom", "custom": {"input": DANGER}}]},
]


@pytest.mark.parametrize(
    ("deltas", "finish"), [(LEGACY, "function_call"), (CUSTOM, "tool_calls")], ids=["legacy", "custom"]
)
async def test_chat_legacy_and_custom_calls_are_tool_calls(
    deltas: list[dict[str, Any]], finish: str, control_plane_kind: Kind
) -> None:
    out = await streamed("/v1/chat/completions", chat_stream(deltas, finish), control_plane_kind)
    text = "".join(
        (c.get("delta") or {}).get("content") or "" for e in events_of(out) for c in e.get("choices") or []
    )
    assert NOTE in text
    for event in events_of(out):
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            assert not delta.get("function_call") and not delta.get("tool_calls"), delta
    safe = chat_stream(json.loads(json.dumps(deltas).replace(DANGER, "ls")), finish)
    assert await streamed("/v1/chat/completions", safe, control_plane_kind) == safe


async def test_a_second_choice_is_policed_on_its_own(control_plane_kind: Kind) -> None:
    """The second choice's call begins, the first choice finishes, then the call's arguments end:
    the call is judged whole, with the second choice's own state (one shared state released it at
    the first choice's finish, half judged)."""
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return encode_event({**base, "choices": [{"index": index, "delta": delta, "finish_reason": finish}]})

    start = {
        "index": 0,
        "id": "call_2",
        "type": "function",
        "function": {"name": "bash", "arguments": '{"command": "rm'},
    }
    rest = {"index": 0, "function": {"arguments": ' -rf /"}'}}
    data = (
        chunk(0, {"role": "assistant", "content": "fine"})
        + chunk(1, {"role": "assistant", "tool_calls": [start]})
        + chunk(0, {}, "stop")
        + chunk(1, {"tool_calls": [rest]})
        + chunk(1, {}, "tool_calls")
        + encode_event("[DONE]")
    )
    out = await streamed("/v1/chat/completions", data, control_plane_kind)
    texts: dict[int, str] = {}
    for event in events_of(out):
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            assert not delta.get("tool_calls"), choice
            texts[choice["index"]] = texts.get(choice["index"], "") + (delta.get("content") or "")
    assert texts[0] == "fine" and NOTE in texts[1]


def test_chat_whole_responses_show_legacy_and_custom_calls() -> None:
    codec = codec_for("POST", "/v1/chat/completions")
    assert codec is not None
    legacy = {
        "role": "assistant",
        "content": None,
        "function_call": {"name": "bash", "arguments": json.dumps({"command": DANGER})},
    }
    custom = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c", "type": "custom", "custom": {"name": "apply_patch", "input": DANGER}}],
    }
    for message, finish in ((legacy, "function_call"), (custom, "tool_calls")):
        body = {
            "id": "x",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        }
        response = codec.parse_response(body)
        calls = response.choices[0].message.tool_calls  # type: ignore[union-attr]
        assert calls and BLOCKLIST.match(calls[0].function.name, calls[0].function.arguments) is not None
        assert codec.render_response(body, response)["choices"][0]["message"] == {**message}


# --- Anthropic -----------------------------------------------------------------------------

ANTHROPIC_BLOCKS: dict[str, dict[str, Any]] = {
    "tool_use": {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"command": DANGER}},
    "server_tool_use": {
        "type": "server_tool_use",
        "id": "srvtoolu_1",
        "name": "bash_code_execution",
        "input": {"command": DANGER},
    },
    "mcp_tool_use": {
        "type": "mcp_tool_use",
        "id": "mcptoolu_1",
        "name": "exec",
        "server_name": "box",
        "input": {"cmd": DANGER},
    },
    "future_block": {"type": "future_block", "payload": DANGER},
}


def anthropic_stream(block: dict[str, Any]) -> bytes:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 0},
    }
    events: list[dict[str, Any]] = [{"type": "message_start", "message": message}]
    if "input" in block:
        events.append({"type": "content_block_start", "index": 0, "content_block": {**block, "input": {}}})
        text = json.dumps(block["input"])
        for start in range(0, len(text), 6):
            events.append(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": text[start : start + 6]},
                }
            )
    else:
        events.append({"type": "content_block_start", "index": 0, "content_block": block})
    events.append({"type": "content_block_stop", "index": 0})
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 5},
        }
    )
    events.append({"type": "message_stop"})
    return b"".join(encode_event(e, e["type"]) for e in events)


@pytest.mark.parametrize("block_type", ANTHROPIC_BLOCKS)
async def test_every_anthropic_block_is_a_tool_call_in_a_stream(
    block_type: str, control_plane_kind: Kind
) -> None:
    out = await streamed("/v1/messages", anthropic_stream(ANTHROPIC_BLOCKS[block_type]), control_plane_kind)
    events = events_of(out)
    assert not any((e.get("content_block") or {}).get("type") == block_type for e in events)
    assert events[-1]["type"] == "message_stop"
    safe = anthropic_stream(json.loads(json.dumps(ANTHROPIC_BLOCKS[block_type]).replace(DANGER, "ls")))
    assert await streamed("/v1/messages", safe, control_plane_kind) == safe


@pytest.mark.parametrize("block_type", ANTHROPIC_BLOCKS)
def test_every_anthropic_block_is_a_tool_call_in_a_whole_response(block_type: str) -> None:
    codec = codec_for("POST", "/v1/messages")
    assert codec is not None
    block = ANTHROPIC_BLOCKS[block_type]
    body = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [block],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }
    response = codec.parse_response(body)
    calls = response.choices[0].message.tool_calls  # type: ignore[union-attr]
    assert calls and BLOCKLIST.match(calls[0].function.name, calls[0].function.arguments) is not None
    calls.clear()
    assert codec.render_response(body, response)["content"] == []


async def test_a_tool_input_given_with_the_block_start_is_seen(control_plane_kind: Kind) -> None:
    block = ANTHROPIC_BLOCKS["tool_use"]
    data = anthropic_stream({"type": "text", "text": ""}).replace(
        b'"content_block":{"type":"text","text":""}',
        b'"content_block":' + json.dumps(block, separators=(",", ":")).encode(),
    )
    out = await streamed("/v1/messages", data, control_plane_kind)
    assert not any((e.get("content_block") or {}).get("type") == "tool_use" for e in events_of(out))


async def test_an_event_whose_name_and_type_disagree_ends_the_stream(control_plane_kind: Kind) -> None:
    data = anthropic_stream(ANTHROPIC_BLOCKS["tool_use"]).replace(
        b"event: content_block_delta", b"event: ping", 1
    )
    out = await streamed("/v1/messages", data, control_plane_kind, NoOpPolicy())
    assert events_of(out)[-1]["type"] == "error"
