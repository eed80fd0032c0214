"""Stream content the normalised view has no place for reaches the policy, or the stream ends
with an error: an Anthropic delta of another type (``citations_delta``, one still to come), in
a text or a tool block, an event of an unknown type, what a text block's start carries besides
its text. Each reaches policies as a tool call (name: its type, arguments: its JSON); under NoOp
the stream is byte-identical.

In-process: the stream relay and real policies (ToolCallBlocklistPolicy, StringReplacementPolicy)
on the local control plane; tests/test_bypass.py drives citations through a real proxy with the
official SDK."""

import json
from typing import Any

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from controlplane.policies import NoOpPolicy
from controlplane.policies.string_replacement import StringReplacementPolicy
from formats.anthropic_messages_stream import AnthropicTranscoder
from formats.sse import SSEParser, encode_event
from tests.codecs import codec_for
from tests.scripted import anthropic_citation, anthropic_message, sdk_parse
from tests.test_output_items import BLOCKLIST, DANGER, NOTE, chat_stream, events_of, streamed

MESSAGES, CHAT, RESPONSES = "/v1/messages", "/v1/chat/completions", "/v1/responses"
#: Replaces a word of the text, so the stream diverges before what follows it.
REPLACE = StringReplacementPolicy(
    StringReplacementPolicy.Config(replacements=[{"find": "Paris", "replace": "PARIS"}])
)


def delta(index: int, value: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": value}


def text_delta(index: int, text: str) -> dict[str, Any]:
    return delta(index, {"type": "text_delta", "text": text})


def message(events: list[dict[str, Any]], stop: str = "end_turn") -> list[dict[str, Any]]:
    start = {**anthropic_message([]), "stop_reason": None}
    return [
        {"type": "message_start", "message": start},
        *events,
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": 5},
        },
        {"type": "message_stop"},
    ]


def text_block(
    index: int, *events: dict[str, Any], start: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    return [
        {
            "type": "content_block_start",
            "index": index,
            "content_block": start or {"type": "text", "text": ""},
        },
        *events,
        {"type": "content_block_stop", "index": index},
    ]


def tool_block(index: int, command: str, *extra: dict[str, Any]) -> list[dict[str, Any]]:
    block = {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {}}
    partial = json.dumps({"command": command})
    return [
        {"type": "content_block_start", "index": index, "content_block": block},
        delta(index, {"type": "input_json_delta", "partial_json": partial[:8]}),
        *extra,
        delta(index, {"type": "input_json_delta", "partial_json": partial[8:]}),
        {"type": "content_block_stop", "index": index},
    ]


def wire(events: list[dict[str, Any]]) -> bytes:
    return b"".join(encode_event(e, e["type"]) for e in events)


def unseen_danger(out: bytes) -> bool:
    """Whether the command reaches the client anywhere but in Luthien's explanation, in a stream
    that did not end with an error."""
    events = events_of(out)
    if events and (events[-1].get("type") == "error" or "error" in events[-1]):
        return False
    shown = [e for e in events if NOTE not in json.dumps(e)]
    return DANGER in json.dumps(shown)


#: Each carries the command where the normalised view had no place for it.
CASES: dict[str, list[dict[str, Any]]] = {
    "unknown delta in a text block": message(
        text_block(0, text_delta(0, "Here: "), delta(0, {"type": "future_delta", "text": DANGER}))
    ),
    "citations_delta": message(
        text_block(
            0,
            text_delta(0, "As cited"),
            delta(0, {"type": "citations_delta", "citation": anthropic_citation(DANGER)}),
        )
    ),
    "input_json_delta in a text block": message(
        text_block(0, delta(0, {"type": "input_json_delta", "partial_json": DANGER}))
    ),
    "unknown delta in a tool block": message(
        tool_block(0, "ls", delta(0, {"type": "future_delta", "payload": DANGER})), "tool_use"
    ),
    "unknown event": message(
        [{"type": "future_event", "payload": {"command": DANGER}}, *text_block(0, text_delta(0, "hi"))]
    ),
    "citations with a text block's start": message(
        text_block(
            0,
            text_delta(0, "hi"),
            start={"type": "text", "text": "", "citations": [anthropic_citation(DANGER)]},
        )
    ),
}


@pytest.mark.parametrize("case", CASES)
async def test_content_with_no_place_in_the_view_reaches_the_tool_call_policy(case: str) -> None:
    data = wire(CASES[case])
    out = await streamed(MESSAGES, data, "local")
    assert not unseen_danger(out), out.decode()
    assert NOTE in out.decode()
    sdk_parse("messages", out)  # still a stream the official SDK accumulates
    assert await streamed(MESSAGES, data, "local", NoOpPolicy()) == data


@pytest.mark.parametrize("case", CASES)
async def test_safe_unseen_content_passes_byte_for_byte_through_the_tool_call_policy(case: str) -> None:
    data = wire(json.loads(json.dumps(CASES[case]).replace(DANGER, "ls")))
    assert await streamed(MESSAGES, data, "local") == data


def test_thinking_given_with_its_block_start_reaches_the_policy_as_reasoning() -> None:
    start = {"type": "thinking", "thinking": DANGER, "signature": "c2ln"}
    event = SSEParser().feed(wire(text_block(0, start=start)))[0]
    (chunk,) = AnthropicTranscoder().decode(event)
    assert chunk["choices"][0]["delta"]["reasoning_content"] == DANGER


async def test_a_citation_after_a_changed_text_is_written_back_where_the_sdk_keeps_it() -> None:
    data = wire(
        message(
            text_block(
                0,
                text_delta(0, "Paris is "),
                delta(0, {"type": "citations_delta", "citation": anthropic_citation("the capital")}),
                text_delta(0, "the capital."),
            )
        )
    )
    out = await streamed(MESSAGES, data, "local", REPLACE)
    final = sdk_parse("messages", out)
    (block,) = final.content
    assert block.text == "PARIS is the capital."
    assert [c.cited_text for c in block.citations] == ["the capital"]


async def test_an_unknown_event_after_a_changed_text_is_written_back_as_it_came() -> None:
    unknown = {"type": "future_event", "payload": {"note": "fine"}}
    data = wire(message([*text_block(0, text_delta(0, "Paris")), unknown]))
    out = await streamed(MESSAGES, data, "local", REPLACE)
    assert unknown in events_of(out)


# --- Property: anywhere in a valid stream -------------------------------------------------

BASE = message(
    [*text_block(0, text_delta(0, "Let me "), text_delta(0, "look.")), *tool_block(1, "ls")], "tool_use"
)
#: (position in BASE, the open block there and its type) for every place an event may go.
_OPEN = {
    n: e.get("index")
    for n, e in enumerate(BASE)
    if e["type"] in ("content_block_delta", "content_block_stop")
}


@st.composite
def with_unseen(draw: st.DrawFn) -> tuple[str, bytes]:
    position = draw(st.integers(1, len(BASE) - 1))
    name = draw(st.from_regex(r"[a-z_]{1,12}", fullmatch=True).filter(lambda n: not n.endswith("_delta")))
    field = draw(st.sampled_from(["text", "payload", "partial_json", "citation"]))
    carried = draw(st.sampled_from([DANGER, {"command": DANGER}, [DANGER], anthropic_citation(DANGER)]))
    if position in _OPEN and draw(st.booleans()):
        kind = draw(st.sampled_from([f"{name}_delta", "citations_delta"]))
        event = delta(_OPEN[position], {"type": kind, field: carried})
    else:
        event = {"type": f"{name}_event", field: carried}
    events = [*BASE[:position], event, *BASE[position:]]
    return json.dumps(event), wire(events)


@settings(max_examples=60, deadline=None)
@given(case=with_unseen())
async def test_an_unseen_event_anywhere_never_passes_the_command_and_noop_stays_byte_identical(
    case: tuple[str, bytes],
) -> None:
    event, data = case
    note(event)
    assert not unseen_danger(await streamed(MESSAGES, data, "local"))
    assert await streamed(MESSAGES, data, "local", NoOpPolicy()) == data


# --- Chat Completions: delta fields the view has no place for ------------------------------

#: Each splits the command across two deltas, as the SDK joins them.
CHAT_CASES: dict[str, list[dict[str, Any]]] = {
    "audio transcript": [
        {"role": "assistant", "audio": {"id": "audio_1", "transcript": "Run rm -"}},
        {"audio": {"transcript": "rf / now"}},
    ],
    "a field still to come": [{"role": "assistant", "future": "rm -"}, {"future": "rf /"}],
    "annotations": [
        {"role": "assistant", "content": "See "},
        {"annotations": [{"type": "url_citation", "url_citation": {"title": DANGER, "url": "https://x"}}]},
    ],
}


@pytest.mark.parametrize("case", CHAT_CASES)
async def test_a_chat_delta_field_the_view_has_no_place_for_reaches_the_tool_call_policy(case: str) -> None:
    data = chat_stream(CHAT_CASES[case], "stop")
    out = await streamed(CHAT, data, "local")
    assert not unseen_danger(out), out.decode()
    assert NOTE in out.decode()
    kept = sdk_parse("chat", out).choices[0].message.model_dump()
    assert NOTE in kept.pop("content") and DANGER not in json.dumps(kept)  # the note names the call
    assert await streamed(CHAT, data, "local", NoOpPolicy()) == data
    safe = chat_stream(
        json.loads(json.dumps(CHAT_CASES[case]).replace("rm -", "l").replace("rf /", "s")), "stop"
    )
    assert await streamed(CHAT, safe, "local") == safe


async def test_a_chat_delta_field_after_a_changed_text_is_written_back() -> None:
    data = chat_stream([{"role": "assistant", "content": "Paris"}, {"future": "fine"}], "stop")
    out = await streamed(CHAT, data, "local", REPLACE)
    final = sdk_parse("chat", out)
    message = final.choices[0].message
    assert message.content == "PARIS" and message.model_dump().get("future") == "fine"


def test_a_chat_message_field_the_view_has_no_place_for_is_a_tool_call_in_a_whole_response() -> None:
    codec = codec_for("POST", CHAT)
    assert codec is not None
    message = {"role": "assistant", "content": "Here.", "audio": {"transcript": DANGER}, "annotations": []}
    body = {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
    }
    response = codec.parse_response(body)
    calls = response.choices[0].message.tool_calls  # type: ignore[union-attr]
    assert calls and BLOCKLIST.match(calls[0].function.name, calls[0].function.arguments) is not None
    assert codec.render_response(body, response)["choices"][0]["message"] == message
    calls.clear()
    assert "audio" not in codec.render_response(body, response)["choices"][0]["message"]


CHAT_BASE: list[dict[str, Any]] = [
    {"role": "assistant", "content": "Let me"},
    {"content": " look."},
    {
        "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "bash", "arguments": ""}}
        ]
    },
    {"tool_calls": [{"index": 0, "function": {"arguments": json.dumps({"command": "ls"})}}]},
]
_VIEWED = {"role", "content", "refusal", "tool_calls", "function_call", "reasoning_content"}


@st.composite
def chat_with_unseen(draw: st.DrawFn) -> tuple[str, bytes]:
    name = draw(st.from_regex(r"[a-z_]{1,10}", fullmatch=True).filter(lambda n: n not in _VIEWED))
    first = draw(st.integers(0, len(CHAT_BASE) - 1))
    split = draw(st.integers(1, len(DANGER) - 1)) if first < len(CHAT_BASE) - 1 and draw(st.booleans()) else 0
    nested = draw(st.booleans())
    pieces = [DANGER[:split], DANGER[split:]] if split else [DANGER]
    deltas = json.loads(json.dumps(CHAT_BASE))
    for offset, piece in enumerate(pieces):
        deltas[first + offset][name] = {"transcript": piece} if nested else piece
    return f"{name} at {first}, split at {split}", chat_stream(deltas, "tool_calls")


@settings(max_examples=60, deadline=None)
@given(case=chat_with_unseen())
async def test_an_unseen_chat_field_anywhere_never_passes_the_command_and_noop_stays_byte_identical(
    case: tuple[str, bytes],
) -> None:
    where, data = case
    note(where)
    out = await streamed(CHAT, data, "local")
    assert not unseen_danger(out), out.decode()
    kept = sdk_parse("chat", out).choices[0].message.model_dump()
    assert DANGER not in json.dumps({k: v for k, v in kept.items() if k != "content"})
    assert await streamed(CHAT, data, "local", NoOpPolicy()) == data


# --- Responses: events of a kind the view has no place for ---------------------------------


def responses_text(text: str) -> list[dict[str, Any]]:
    """A Responses stream answering ``text`` in two deltas."""
    response = {"id": "resp_1", "object": "response", "status": "in_progress", "model": "m", "output": []}
    item = {"type": "message", "id": "msg_1", "status": "in_progress", "role": "assistant", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    done_part = {**part, "text": text}
    done = {**item, "status": "completed", "content": [done_part]}
    where = {"output_index": 0, "item_id": "msg_1", "content_index": 0}
    half = len(text) // 2
    return [
        {"type": "response.created", "response": response},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", **where, "part": part},
        {"type": "response.output_text.delta", **where, "delta": text[:half]},
        {"type": "response.output_text.delta", **where, "delta": text[half:]},
        {"type": "response.output_text.done", **where, "text": text},
        {"type": "response.content_part.done", **where, "part": done_part},
        {"type": "response.output_item.done", "output_index": 0, "item": done},
        {"type": "response.completed", "response": {**response, "status": "completed", "output": [done]}},
    ]


def responses_wire(events: list[dict[str, Any]]) -> bytes:
    return b"".join(encode_event({**e, "sequence_number": n}, e["type"]) for n, e in enumerate(events))


def annotation(title: str) -> dict[str, Any]:
    return {
        "type": "response.output_text.annotation.added",
        "output_index": 0,
        "item_id": "msg_1",
        "content_index": 0,
        "annotation_index": 0,
        "annotation": {
            "type": "url_citation",
            "title": title,
            "url": "https://x",
            "start_index": 0,
            "end_index": 1,
        },
    }


RESPONSES_CASES = {
    "unknown text event": {
        "type": "response.future_text.delta",
        "output_index": 0,
        "item_id": "msg_1",
        "content_index": 0,
        "delta": DANGER,
    },
    "annotation": annotation(DANGER),
    "audio transcript": {"type": "response.audio.transcript.delta", "delta": DANGER},
}


@pytest.mark.parametrize("case", RESPONSES_CASES)
async def test_a_responses_event_the_view_has_no_place_for_reaches_the_tool_call_policy(case: str) -> None:
    events = responses_text("Hello there")
    data = responses_wire([*events[:4], RESPONSES_CASES[case], *events[4:]])
    out = await streamed(RESPONSES, data, "local")
    assert not unseen_danger(out), out.decode()
    assert NOTE in out.decode()
    sdk_parse("responses", out)
    assert await streamed(RESPONSES, data, "local", NoOpPolicy()) == data
    safe = data.replace(DANGER.encode(), b"ls")
    assert await streamed(RESPONSES, safe, "local") == safe


async def test_an_annotation_after_a_changed_text_is_written_into_the_open_item() -> None:
    events = responses_text("Paris is fine")
    out = await streamed(
        RESPONSES, responses_wire([*events[:4], annotation("notes"), *events[4:]]), "local", REPLACE
    )
    (written,) = [e for e in events_of(out) if e["type"] == "response.output_text.annotation.added"]
    added = next(e for e in events_of(out) if e["type"] == "response.output_item.added")
    assert written["annotation"]["title"] == "notes" and written["item_id"] == added["item"]["id"]
    assert "PARIS" in json.dumps(events_of(out)[-1])


RESPONSES_BASE = responses_text("Hello there")
#: The ``response.*.delta`` events that exist (a tool item's are held with their item).
_RESPONSES_DELTAS = {
    "output_text",
    "refusal",
    "reasoning_text",
    "reasoning_summary_text",
    "function_call_arguments",
    "custom_tool_call_input",
    "mcp_call_arguments",
}


@st.composite
def responses_with_unseen(draw: st.DrawFn) -> tuple[str, bytes]:
    position = draw(st.integers(1, len(RESPONSES_BASE) - 1))
    name = draw(st.from_regex(r"[a-z_]{1,10}", fullmatch=True).filter(lambda n: n not in _RESPONSES_DELTAS))
    field = draw(st.sampled_from(["delta", "text", "payload"]))
    carried = draw(st.sampled_from([DANGER, {"command": DANGER}, [DANGER]]))
    scoped = {"output_index": 0, "item_id": "msg_1", "content_index": 0} if draw(st.booleans()) else {}
    event = {"type": f"response.{name}.delta", **scoped, field: carried}
    return json.dumps(event), responses_wire([*RESPONSES_BASE[:position], event, *RESPONSES_BASE[position:]])


@settings(max_examples=60, deadline=None)
@given(case=responses_with_unseen())
async def test_an_unseen_responses_event_anywhere_never_passes_the_command_and_noop_stays_byte_identical(
    case: tuple[str, bytes],
) -> None:
    event, data = case
    note(event)
    assert not unseen_danger(await streamed(RESPONSES, data, "local"))
    assert await streamed(RESPONSES, data, "local", NoOpPolicy()) == data


def test_an_anthropic_text_blocks_citations_are_a_tool_call_in_a_whole_response() -> None:
    codec = codec_for("POST", MESSAGES)
    assert codec is not None
    block = {"type": "text", "text": "As cited.", "citations": [anthropic_citation(DANGER)]}
    body = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [block, {"type": "text", "text": " Done.", "citations": None}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }
    response = codec.parse_response(body)
    (call,) = response.choices[0].message.tool_calls  # type: ignore[union-attr]
    assert BLOCKLIST.match(call.function.name, call.function.arguments) is not None
    assert codec.render_response(body, response)["content"] == body["content"]
    response.choices[0].message.tool_calls = None  # type: ignore[union-attr]
    assert codec.render_response(body, response)["content"][0] == {"type": "text", "text": "As cited."}


@pytest.mark.parametrize(
    ("fields", "calls"),
    [
        ({"provider_specific_fields": {"citations": None, "thinking_blocks": None}}, 0),
        ({"annotations": [], "audio": None}, 0),
        ({"provider_specific_fields": {"citations": [{"cited_text": DANGER}]}}, 1),
    ],
)
def test_a_chat_field_that_holds_nothing_is_no_call(fields: dict[str, Any], calls: int) -> None:
    codec = codec_for("POST", "/v1/chat/completions")
    assert codec is not None
    message = {"role": "assistant", "content": "hi", **fields}
    body = {
        "id": "c",
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": message}],
    }
    seen = codec.parse_response(body).choices[0].message.tool_calls or []  # type: ignore[union-attr]
    assert len(seen) == calls
