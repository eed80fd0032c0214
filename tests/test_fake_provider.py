"""The fake provider must be indistinguishable from the real APIs to the official SDKs.

Both SDK clients run with `_strict_response_validation=True`, so every response body and
every stream event is validated against the SDK's pydantic types, not just leniently
constructed: a missing required field fails the test instead of passing silently.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fake_provider import FakeProvider
from tests.fake_provider.scenarios import DEFAULT_TEXT, THINKING_TEXT, words

CLAUDE = "claude-sonnet-4-6"  # any model name works; this one triggers no SDK deprecation warning
COMMAND_SCHEMA = {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}
CHAT_TOOLS: Any = [
    {
        "type": "function",
        "function": {"name": "bash", "description": "Run a command", "parameters": COMMAND_SCHEMA},
    }
]
RESPONSES_TOOLS: Any = [
    {
        "type": "function",
        "name": "bash",
        "description": "Run a command",
        "parameters": COMMAND_SCHEMA,
        "strict": False,
    }
]
ANTHROPIC_TOOLS: Any = [{"name": "bash", "description": "Run a command", "input_schema": COMMAND_SCHEMA}]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    # 1 ms pacing keeps the module fast; the gated/slow tests check pacing explicitly.
    with FakeProvider(delay=0.001) as provider:
        yield provider


@pytest.fixture(autouse=True)
def _fresh_records(fake: FakeProvider) -> None:
    fake.reset()


# Clients are module-scoped: building one (TLS context included) costs tens of milliseconds.
@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def oai(fake: FakeProvider) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=fake.url + "/v1", api_key="sk-test", max_retries=0, _strict_response_validation=True
    ) as client:
        yield client


@pytest.fixture(scope="module")
def ant(fake: FakeProvider) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=fake.url, api_key="sk-ant-test", max_retries=0, _strict_response_validation=True
    ) as client:
        yield client


def chat_messages(marker: str = "") -> Any:
    return [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Old turn [scenario:error_500]"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": f"Please help. {marker}"}]},
    ]


def anthropic_messages(marker: str = "") -> Any:
    return [{"role": "user", "content": [{"type": "text", "text": f"Please help. {marker}"}]}]


def tool_args(arguments: str) -> Any:
    return json.loads(arguments)


# --- Chat Completions -------------------------------------------------------------------


def test_chat_text(oai: openai.OpenAI, fake: FakeProvider) -> None:
    completion = oai.chat.completions.create(model="gpt-4o-mini", messages=chat_messages())
    choice = completion.choices[0]
    assert choice.message.content == DEFAULT_TEXT
    assert choice.finish_reason == "stop"
    assert completion.model == "gpt-4o-mini"
    assert completion.usage is not None
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    # Only the last user message counts: the earlier error_500 marker is ignored.
    assert fake.requests[-1].scenario == "text"


def test_chat_text_stream_one_delta_per_word(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="gpt-4o", messages=chat_messages(), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert deltas == words(DEFAULT_TEXT)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


def test_chat_tool_call(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model="gpt-4o", messages=chat_messages("[scenario:tool_call git status]"), tools=CHAT_TOOLS
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me run that."
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "bash"
    assert tool_args(call.function.arguments) == {"command": "git status"}


def test_chat_stream_helper_tool_call(oai: openai.OpenAI) -> None:
    with oai.chat.completions.stream(
        model="gpt-4o",
        messages=chat_messages("[scenario:tool_call]"),
        tools=CHAT_TOOLS,
        stream_options={"include_usage": True},
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    argument_deltas = [e for e in events if e.type == "tool_calls.function.arguments.delta"]
    assert len(argument_deltas) > 2  # streamed in several fragments
    assert [e.type for e in events].count("tool_calls.function.arguments.done") == 1
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me run that."
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_")
    assert tool_args(call.function.arguments) == {"command": "ls -la"}
    assert final.usage is not None and final.usage.completion_tokens > 0


def test_chat_stream_helper_two_tools(oai: openai.OpenAI) -> None:
    with oai.chat.completions.stream(
        model="gpt-4o", messages=chat_messages("[scenario:two_tools pwd]"), tools=CHAT_TOOLS
    ) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [tool_args(c.function.arguments)["command"] for c in calls] == ["pwd", "echo ok"]
    assert len({c.id for c in calls}) == 2


def test_chat_thinking(oai: openai.OpenAI) -> None:
    with oai.chat.completions.stream(model="o3", messages=chat_messages("[scenario:thinking]")) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.content == DEFAULT_TEXT
    assert (message.model_extra or {}).get("reasoning_content") == THINKING_TEXT


def test_chat_midstream_error_raises(oai: openai.OpenAI) -> None:
    received: list[str] = []
    stream = oai.chat.completions.create(
        model="gpt-4o", messages=chat_messages("[scenario:midstream_error]"), stream=True
    )
    with pytest.raises(openai.APIError, match="The server had an error"):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "Hello from the "


# --- Responses --------------------------------------------------------------------------


def test_responses_text(oai: openai.OpenAI) -> None:
    response = oai.responses.create(model="gpt-4.1", input="Hi", instructions="Be terse.")
    assert response.output_text == DEFAULT_TEXT
    assert response.status == "completed" and response.model == "gpt-4.1"
    assert response.instructions == "Be terse."
    (message,) = response.output
    assert message.type == "message"
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    assert response.usage is not None and response.usage.output_tokens > 0


def test_responses_stream_event_sequence(oai: openai.OpenAI) -> None:
    events = list(oai.responses.create(model="gpt-4.1", input="Hi", stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas == words(DEFAULT_TEXT)


def test_responses_stream_helper_tool_call(oai: openai.OpenAI) -> None:
    items: Any = [
        {"role": "user", "content": [{"type": "input_text", "text": "Go [scenario:tool_call make test]"}]}
    ]
    with oai.responses.stream(model="gpt-4.1", input=items, tools=RESPONSES_TOOLS) as stream:
        types = [event.type for event in stream]
        final = stream.get_final_response()
    assert types.count("response.function_call_arguments.delta") > 2
    assert final.output_text == "Let me run that."
    call = final.output[-1]
    assert call.type == "function_call" and call.name == "bash" and call.status == "completed"
    assert call.call_id.startswith("call_") and (call.id or "").startswith("fc_")
    assert tool_args(call.arguments) == {"command": "make test"}
    assert final.tools[0].type == "function"  # the request's tools are echoed back


def test_responses_two_tools(oai: openai.OpenAI) -> None:
    response = oai.responses.create(model="gpt-4.1", input="[scenario:two_tools]", tools=RESPONSES_TOOLS)
    calls = [item for item in response.output if item.type == "function_call"]
    assert [tool_args(c.arguments)["command"] for c in calls] == ["ls -la", "echo ok"]


def test_responses_thinking(oai: openai.OpenAI) -> None:
    with oai.responses.stream(
        model="o3", input="[scenario:thinking]", reasoning={"summary": "auto"}
    ) as stream:
        types = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.reasoning_summary_text.delta" in types
    reasoning, message = final.output
    assert reasoning.type == "reasoning" and reasoning.summary[0].text == THINKING_TEXT
    assert message.type == "message" and final.output_text == DEFAULT_TEXT
    assert final.usage is not None and final.usage.output_tokens_details.reasoning_tokens > 0
    assert final.reasoning is not None and final.reasoning.summary == "auto"


def test_responses_midstream_error_surfaces(oai: openai.OpenAI) -> None:
    with oai.responses.stream(model="gpt-4.1", input="[scenario:midstream_error]") as stream:
        events = list(stream)
        error = events[-1]
        assert error.type == "error"
        assert error.code == "server_error" and error.sequence_number == len(events) - 1
        with pytest.raises(RuntimeError, match=r"response\.completed"):
            stream.get_final_response()


# --- Anthropic Messages -----------------------------------------------------------------


def test_anthropic_text(ant: anthropic.Anthropic) -> None:
    message = ant.messages.create(model=CLAUDE, max_tokens=1024, messages=anthropic_messages())
    assert message.model == CLAUDE
    assert message.stop_reason == "end_turn"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].type == "text" and message.content[0].text == DEFAULT_TEXT
    assert message.id.startswith("msg_01") and message.usage.output_tokens > 0


def test_anthropic_stream_helper_text(ant: anthropic.Anthropic) -> None:
    with ant.messages.stream(model=CLAUDE, max_tokens=1024, messages=anthropic_messages()) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert texts == words(DEFAULT_TEXT)
    assert final.content[0].type == "text" and final.content[0].text == DEFAULT_TEXT
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 1


def test_anthropic_tool_call_stream(ant: anthropic.Anthropic) -> None:
    with ant.messages.stream(
        model=CLAUDE,
        max_tokens=1024,
        tools=ANTHROPIC_TOOLS,
        messages=anthropic_messages("[scenario:tool_call cat README.md]"),
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    text, tool = final.content
    assert text.type == "text" and text.text == "Let me run that."
    assert tool.type == "tool_use" and tool.name == "bash" and tool.id.startswith("toolu_01")
    assert tool.input == {"command": "cat README.md"}


def test_anthropic_two_tools(ant: anthropic.Anthropic) -> None:
    message = ant.messages.create(
        model=CLAUDE,
        max_tokens=1024,
        tools=ANTHROPIC_TOOLS,
        messages=anthropic_messages("[scenario:two_tools]"),
    )
    inputs = [block.input for block in message.content if block.type == "tool_use"]
    assert inputs == [{"command": "ls -la"}, {"command": "echo ok"}]


def test_anthropic_thinking_with_query_string(ant: anthropic.Anthropic, fake: FakeProvider) -> None:
    # Claude Code sends `?beta=true`; this SDK no longer does, so ask for it explicitly.
    with ant.beta.messages.stream(
        extra_query={"beta": "true"},
        model=CLAUDE,
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=anthropic_messages("[scenario:thinking]"),
    ) as stream:
        final = stream.get_final_message()
    thinking, text = final.content
    assert thinking.type == "thinking" and thinking.thinking == THINKING_TEXT and thinking.signature
    assert text.type == "text" and text.text == DEFAULT_TEXT
    assert fake.requests[-1].path == "/v1/messages?beta=true"


def test_anthropic_midstream_error_raises(ant: anthropic.Anthropic) -> None:
    with ant.messages.stream(
        model=CLAUDE, max_tokens=1024, messages=anthropic_messages("[scenario:midstream_error]")
    ) as stream:
        with pytest.raises(anthropic.APIStatusError, match="overloaded_error") as caught:
            for _ in stream:
                pass
        assert stream.current_message_snapshot.content[0].type == "text"
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
        "request_id": caught.value.response.headers["request-id"],
    }


def test_tool_results_are_answered_with_text(oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    """After a tool round trip the marker is still in the last user message; the fake must not loop."""
    first = oai.chat.completions.create(
        model="gpt-4o", messages=chat_messages("[scenario:tool_call]"), tools=CHAT_TOOLS
    )
    (call,) = first.choices[0].message.tool_calls or []
    history: Any = [
        *chat_messages("[scenario:tool_call]"),
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "total 0"},
    ]
    chat = oai.chat.completions.create(model="gpt-4o", messages=history, tools=CHAT_TOOLS)
    assert chat.choices[0].finish_reason == "stop"

    response = oai.responses.create(model="gpt-4.1", input="[scenario:tool_call]", tools=RESPONSES_TOOLS)
    fc = response.output[-1]
    assert fc.type == "function_call"
    items: Any = [
        {"role": "user", "content": "[scenario:tool_call]"},
        {"type": "function_call", "call_id": fc.call_id, "name": fc.name, "arguments": fc.arguments},
        {"type": "function_call_output", "call_id": fc.call_id, "output": "total 0"},
    ]
    followup = oai.responses.create(model="gpt-4.1", input=items, tools=RESPONSES_TOOLS)
    assert followup.output_text == DEFAULT_TEXT

    message = ant.messages.create(
        model=CLAUDE,
        max_tokens=1024,
        tools=ANTHROPIC_TOOLS,
        messages=anthropic_messages("[scenario:tool_call]"),
    )
    tool_use = message.content[-1]
    assert tool_use.type == "tool_use"
    conversation: Any = [
        *anthropic_messages("[scenario:tool_call]"),
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in message.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "total 0"}],
        },
    ]
    reply = ant.messages.create(model=CLAUDE, max_tokens=1024, tools=ANTHROPIC_TOOLS, messages=conversation)
    assert reply.stop_reason == "end_turn"


def chat_shape(completion: Any) -> Any:
    choice = completion.choices[0]
    calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
    reasoning = (choice.message.model_extra or {}).get("reasoning_content")
    return choice.message.content, calls, choice.finish_reason, reasoning


# Ids and signatures differ per request; the stream helpers add client-side `parsed*` fields.
VOLATILE_KEYS = frozenset({"id", "call_id", "signature", "parsed", "parsed_arguments", "parsed_output"})


def without_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_volatile(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [without_volatile(v) for v in value]
    return value


def responses_shape(response: Any) -> Any:
    return without_volatile([item.model_dump() for item in response.output])


def messages_shape(message: Any) -> Any:
    return without_volatile([block.model_dump() for block in message.content]), message.stop_reason


@pytest.mark.parametrize("scenario", ["text", "tool_call", "two_tools", "thinking"])
def test_streamed_and_complete_answers_agree(
    oai: openai.OpenAI, ant: anthropic.Anthropic, scenario: str
) -> None:
    marker = f"[scenario:{scenario}]"
    chat_args: Any = {"model": "gpt-4o", "messages": chat_messages(marker), "tools": CHAT_TOOLS}
    with oai.chat.completions.stream(**chat_args) as chat_stream:
        streamed_chat = chat_stream.get_final_completion()
    assert chat_shape(streamed_chat) == chat_shape(oai.chat.completions.create(**chat_args))

    responses_args: Any = {"model": "gpt-4.1", "input": marker, "tools": RESPONSES_TOOLS}
    with oai.responses.stream(**responses_args) as responses_stream:
        streamed_response = responses_stream.get_final_response()
    assert responses_shape(streamed_response) == responses_shape(oai.responses.create(**responses_args))

    messages_args: Any = {
        "model": CLAUDE,
        "max_tokens": 1024,
        "tools": ANTHROPIC_TOOLS,
        "messages": anthropic_messages(marker),
    }
    with ant.messages.stream(**messages_args) as messages_stream:
        streamed_message = messages_stream.get_final_message()
    assert messages_shape(streamed_message) == messages_shape(ant.messages.create(**messages_args))


# --- errors, across APIs ----------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("marker", "expected_openai", "expected_anthropic"),
    [
        ("[scenario:error_429]", openai.RateLimitError, anthropic.RateLimitError),
        ("[scenario:error_500]", openai.InternalServerError, anthropic.InternalServerError),
        ("[scenario:no_such_scenario]", openai.BadRequestError, anthropic.BadRequestError),
    ],
)
def test_http_errors(
    oai: openai.OpenAI,
    ant: anthropic.Anthropic,
    stream: bool,
    marker: str,
    expected_openai: type[openai.APIStatusError],
    expected_anthropic: type[anthropic.APIStatusError],
) -> None:
    with pytest.raises(expected_openai) as chat_error:
        oai.chat.completions.create(model="gpt-4o", messages=chat_messages(marker), stream=stream)
    with pytest.raises(expected_openai) as responses_error:
        oai.responses.create(model="gpt-4o", input=marker, stream=stream)
    with pytest.raises(expected_anthropic) as messages_error:
        ant.messages.create(model=CLAUDE, max_tokens=1024, messages=anthropic_messages(marker), stream=stream)
    if marker == "[scenario:error_429]":
        for error in (chat_error.value, responses_error.value):
            assert error.code == "rate_limit_exceeded" and error.type == "tokens"
            assert error.response.headers["retry-after"] == "1"
        assert messages_error.value.response.headers["retry-after"] == "1"
        assert messages_error.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


# --- server mechanics -------------------------------------------------------------------

RAW_REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": "{}"}]}),
    "responses": ("/v1/responses", {"model": "gpt-4.1", "input": "{}"}),
    "messages": (
        "/v1/messages",
        {"model": "claude", "max_tokens": 64, "messages": [{"role": "user", "content": "{}"}]},
    ),
}


def raw_request(api: str, marker: str, stream: bool) -> tuple[str, dict[str, Any]]:
    path, template = RAW_REQUESTS[api]
    body = json.loads(json.dumps(template).replace("{}", marker))
    return path, {**body, "stream": stream}


@pytest.mark.parametrize("api", list(RAW_REQUESTS))
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("scenario", ["text", "two_tools", "thinking", "midstream_error", "error_429"])
def test_sent_matches_received_bytes(
    fake: FakeProvider, http: httpx.Client, api: str, stream: bool, scenario: str
) -> None:
    path, body = raw_request(api, f"[scenario:{scenario}]", stream)
    response = http.post(fake.url + path, json=body)
    assert response.content == fake.sent()
    record = fake.requests[-1]
    assert (record.method, record.path, record.json, record.scenario) == ("POST", path, body, scenario)
    assert record.headers["content-type"] == "application/json"
    if stream and scenario != "error_429":
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.content.endswith(b"\n\n")


@pytest.mark.parametrize("api", list(RAW_REQUESTS))
def test_gated_stream_waits_for_release(fake: FakeProvider, http: httpx.Client, api: str) -> None:
    path, body = raw_request(api, "[scenario:gated]", stream=True)
    received: list[bytes] = []

    def read() -> None:
        with http.stream("POST", fake.url + path, json=body) as response:
            received.extend(response.iter_raw())

    reader = threading.Thread(target=read)
    reader.start()
    fake.wait_for_requests(1)
    deadline = time.monotonic() + 5
    while not received and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # 100x the pacing delay: the rest would have arrived by now if not gated
    first_event = fake.sent()
    assert b"".join(received) == first_event
    assert first_event.count(b"\n\n") == 1
    fake.release()
    reader.join(timeout=10)
    assert b"".join(received) == fake.sent()
    assert len(fake.sent()) > len(first_event)


def test_slow_scenario_paces_events(fake: FakeProvider, http: httpx.Client) -> None:
    path, body = raw_request("messages", "[scenario:slow]", stream=True)
    with http.stream("POST", fake.url + path, json=body) as response:
        chunks = response.iter_raw()
        next(chunks)
        started = time.monotonic()
        next(chunks)
        assert time.monotonic() - started >= 0.15


def test_other_paths_return_a_model_list(oai: openai.OpenAI, fake: FakeProvider) -> None:
    models = oai.models.list()
    assert [m.id for m in models.data][:1] == ["gpt-4o"]
    record = fake.requests[-1]
    assert (record.method, record.path, record.scenario, record.json) == ("GET", "/v1/models", None, None)
    assert record.headers["authorization"] == "Bearer sk-test"


async def test_async_clients(fake: FakeProvider) -> None:
    async with (
        openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="sk-test", max_retries=0) as oai,
        anthropic.AsyncAnthropic(base_url=fake.url, api_key="sk-ant-test", max_retries=0) as ant,
    ):
        async with oai.responses.stream(model="gpt-4.1", input="[scenario:tool_call]") as stream:
            response = await stream.get_final_response()
        async with ant.messages.stream(
            model=CLAUDE, max_tokens=1024, messages=anthropic_messages("[scenario:tool_call]")
        ) as message_stream:
            message = await message_stream.get_final_message()
    assert response.output[-1].type == "function_call"
    assert message.content[-1].type == "tool_use"
    # This SDK version authenticates with a bearer token, not x-api-key.
    assert fake.requests[-1].headers["authorization"] == "Bearer sk-ant-test"
    assert "anthropic-version" in fake.requests[-1].headers
