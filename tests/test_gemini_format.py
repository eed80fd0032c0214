"""The Gemini format's parts in themselves: the JSON-array framing, the request view under either
spelling of each field, and a policy's change to a whole answer mapped back."""

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.llm import ModelResponse
from formats.base import FormatError
from formats.gemini import GeminiCodec, GeminiCountTokensCodec
from formats.gemini_stream import GeminiTranscoder
from formats.json_array import JSONArrayParser
from formats.sse import parse_event

ELEMENTS = [
    {"candidates": [{"content": {"parts": [{"text": 'a "quoted" [bracket] {brace} \\ \u00e9'}]}}]},
    {"candidates": [{"content": {"parts": [{"functionCall": {"name": "bash", "args": {"c": "]}"}}}]}}]},
    {"usageMetadata": {"promptTokenCount": 3}},
]


@given(
    separator=st.sampled_from([b",", b",\r\n", b"\n,\n", b" , "]),
    indent=st.sampled_from([None, 2]),
    cuts=st.lists(st.integers(1, 400), max_size=10),
)
def test_an_array_cut_anywhere_gives_back_its_elements_and_its_bytes(
    separator: bytes, indent: int | None, cuts: list[int]
) -> None:
    data = b"[" + separator.join(json.dumps(e, indent=indent).encode() for e in ELEMENTS) + b"]"
    parser = JSONArrayParser()
    events = []
    edges = sorted({c for c in cuts if c < len(data)})
    for start, end in zip([0, *edges], [*edges, len(data)], strict=True):
        events += parser.feed(data[start:end])
    assert parser.flush() == b""
    assert b"".join(event.raw for event in events) == data
    assert [event.json() for event in events[:-1]] == ELEMENTS
    assert events[-1].data == ""  # the closing bracket


def test_an_array_that_breaks_off_mid_element_leaves_it_unparsed() -> None:
    parser = JSONArrayParser()
    (first,) = parser.feed(b'[{"a": 1},{"b": ')
    assert first.json() == {"a": 1}
    leftover = parser.flush()
    assert leftover == b',{"b": ' and parser.leftover(leftover).json() is None


CAMEL = {
    "systemInstruction": {"parts": [{"text": "be brief"}]},
    "contents": [
        {
            "role": "user",
            "parts": [{"text": "hi"}, {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}],
        },
        {"role": "model", "parts": [{"functionCall": {"name": "bash", "args": {"command": "ls"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "bash", "response": {"out": "a b"}}}]},
    ],
    "generationConfig": {"temperature": 0.5, "maxOutputTokens": 9},
}
SNAKE = {
    "system_instruction": {"parts": [{"text": "be brief"}]},
    "contents": [
        {
            "role": "user",
            "parts": [{"text": "hi"}, {"inline_data": {"mime_type": "image/png", "data": "AAAA"}}],
        },
        {"role": "model", "parts": [{"function_call": {"name": "bash", "args": {"command": "ls"}}}]},
        {"role": "user", "parts": [{"function_response": {"name": "bash", "response": {"out": "a b"}}}]},
    ],
    "generation_config": {"temperature": 0.5, "max_output_tokens": 9},
}


def test_both_spellings_give_the_policy_the_same_conversation() -> None:
    codec = GeminiCodec()
    camel, snake = codec.normalize_request(CAMEL), codec.normalize_request(SNAKE)
    assert camel["messages"] == snake["messages"]
    assert [m["role"] for m in camel["messages"]] == ["system", "user", "assistant", "tool"]
    assert camel["messages"][1]["content"][1]["image_url"]["url"] == "data:image/png;base64,AAAA"
    assert camel["messages"][2]["tool_calls"][0]["function"]["arguments"] == '{"command": "ls"}'
    assert (
        (camel["temperature"], camel["max_tokens"]) == (snake["temperature"], snake["max_tokens"]) == (0.5, 9)
    )


def test_a_changed_parameter_is_written_where_the_body_keeps_it() -> None:
    codec = GeminiCodec()
    before = codec.normalize_request(SNAKE)
    rendered = codec.render_request(SNAKE, before, {**before, "max_tokens": 4})
    assert rendered["generation_config"] == {"temperature": 0.5, "max_output_tokens": 4}


def test_count_tokens_reads_and_rewrites_a_whole_generate_content_request() -> None:
    codec = GeminiCountTokensCodec()
    original = {"generate_content_request": {"contents": CAMEL["contents"], "generationConfig": {"topP": 1}}}
    view = codec.normalize_request(original)
    assert [m["role"] for m in view["messages"]] == ["user", "assistant", "tool"]
    changed = json.loads(json.dumps(view).replace('"hi"', '"hello"'))
    rendered = codec.render_request(original, view, {**changed, "top_p": 0.5})
    assert rendered["generate_content_request"]["contents"][0]["parts"][0]["text"] == "hello"
    assert rendered["generate_content_request"]["generationConfig"] == {"topP": 0.5}


@pytest.mark.parametrize(
    "body",
    [
        {"contents": [{"parts": [{"text": "a"}]}], "systemInstruction": {}, "system_instruction": {}},
        {"contents": [{"parts": [{"text": "a", "inline_data": {"mime_type": "image/png", "data": "A"}}]}]},
        {"contents": [{"parts": [{"inlineData": {"mimeType": "application/pdf", "data": "A"}}]}]},
        {"contents": [{"parts": [{"fileData": {"fileUri": "gs://x"}}]}]},
        {"contents": [{"role": "user", "parts": [], "extra": 1}]},
        {
            "contents": [
                {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}, "more": "x"}}]}
            ]
        },
        {"contents": [{"role": "critic", "parts": [{"text": "a"}]}]},
        {"contents": [], "cachedContent": "cachedContents/1"},
    ],
    ids=["two-spellings", "two-kinds", "pdf", "file", "content-field", "call-field", "role", "cached"],
)
def test_what_the_view_has_no_place_for_is_refused(body: dict[str, object]) -> None:
    with pytest.raises(FormatError):
        GeminiCodec().normalize_request(body)


def test_a_removed_call_leaves_the_explanation_and_the_other_parts() -> None:
    codec = GeminiCodec()
    original = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": "thinking", "thought": True},
                        {
                            "functionCall": {"name": "bash", "args": {"command": "rm -rf /"}},
                            "thoughtSignature": "s",
                        },
                        {"functionCall": {"name": "read", "args": {"path": "a"}}},
                    ],
                },
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 3, "totalTokenCount": 5},
    }
    response = codec.parse_response(original)
    message = response.choices[0].message  # type: ignore[union-attr]
    assert [c.function.name for c in message.tool_calls] == ["bash", "read"]
    assert message.reasoning_content == "thinking" and response.choices[0].finish_reason == "tool_calls"
    message.tool_calls = message.tool_calls[1:]
    message.content = "[Luthien] removed bash"
    rendered = codec.render_response(original, ModelResponse(**response.model_dump()))
    assert rendered["candidates"][0]["content"]["parts"] == [
        {"text": "thinking", "thought": True},
        {"functionCall": {"name": "read", "args": {"path": "a"}}},
        {"text": "[Luthien] removed bash"},
    ]
    assert rendered["candidates"][0]["finishReason"] == "STOP"
    assert rendered["usageMetadata"] == original["usageMetadata"]


def test_an_event_without_data_carries_nothing_in_either_framing() -> None:
    """A keep-alive of comments alone in SSE; the closing bracket of an array (which a dry run
    replays as an SSE event of its own)."""
    for transcoder in (GeminiTranscoder(), GeminiTranscoder(json_array=True)):
        assert transcoder.decode(parse_event(b": keep-alive\r\n\r\n")) == []


TWO_CALLS = {
    "contents": [
        {"role": "user", "parts": [{"text": "look around"}]},
        {
            "role": "model",
            "parts": [
                {"functionCall": {"name": "bash", "args": {"command": "ls"}}},
                {"functionCall": {"name": "bash", "args": {"command": "pwd"}}},
            ],
        },
        {"role": "user", "parts": [{"functionResponse": {"name": "bash", "response": {"out": "a"}}}]},
    ]
}


@pytest.mark.parametrize(("body", "key"), [(CAMEL, "functionCall"), (SNAKE, "function_call")])
def test_changed_arguments_in_the_history_are_written_into_their_call(body: dict[str, Any], key: str) -> None:
    codec = GeminiCodec()
    before = codec.normalize_request(body)
    after = copy.deepcopy(before)
    after["messages"][2]["tool_calls"][0]["function"]["arguments"] = '{"command": "ls -la"}'
    rendered = codec.render_request(body, before, after)
    assert codec.normalize_request(rendered) == after
    assert rendered["contents"][1]["parts"][0][key] == {"name": "bash", "args": {"command": "ls -la"}}


def test_of_two_calls_without_ids_only_the_changed_one_changes() -> None:
    codec = GeminiCodec()
    before = codec.normalize_request(TWO_CALLS)
    after = copy.deepcopy(before)
    after["messages"][1]["tool_calls"][1]["function"]["arguments"] = '{"command": "echo"}'
    parts = codec.render_request(TWO_CALLS, before, after)["contents"][1]["parts"]
    assert [p["functionCall"]["args"] for p in parts] == [{"command": "ls"}, {"command": "echo"}]


def test_history_arguments_that_are_not_an_object_are_refused() -> None:
    codec = GeminiCodec()
    before = codec.normalize_request(TWO_CALLS)
    after = copy.deepcopy(before)
    after["messages"][1]["tool_calls"][0]["function"]["arguments"] = "[1]"
    with pytest.raises(FormatError, match="not an object"):
        codec.render_request(TWO_CALLS, before, after)
