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
from tests.scripted import sdk_parse
from tests.test_output_items import DANGER, NOTE, events_of, streamed

MESSAGES = "/v1/messages"
#: Replaces a word of the text, so the stream diverges before what follows it.
REPLACE = StringReplacementPolicy(
    StringReplacementPolicy.Config(replacements=[{"find": "Paris", "replace": "PARIS"}])
)


def citation(cited: str) -> dict[str, Any]:
    return {
        "type": "char_location",
        "cited_text": cited,
        "document_index": 0,
        "document_title": "notes",
        "start_char_index": 0,
        "end_char_index": len(cited),
    }


def delta(index: int, value: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": value}


def text_delta(index: int, text: str) -> dict[str, Any]:
    return delta(index, {"type": "text_delta", "text": text})


def message(events: list[dict[str, Any]], stop: str = "end_turn") -> list[dict[str, Any]]:
    start = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 0},
    }
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
    if events and events[-1]["type"] == "error":
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
            0, text_delta(0, "As cited"), delta(0, {"type": "citations_delta", "citation": citation(DANGER)})
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
            0, text_delta(0, "hi"), start={"type": "text", "text": "", "citations": [citation(DANGER)]}
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
                delta(0, {"type": "citations_delta", "citation": citation("the capital")}),
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
    carried = draw(st.sampled_from([DANGER, {"command": DANGER}, [DANGER], citation(DANGER)]))
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
