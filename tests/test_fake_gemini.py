"""The fake provider speaks the Gemini API as Google's own SDK (google-genai) expects it: both API
versions, whole and streamed answers (SSE, and the JSON array without ``alt=sse``), function
calls, thoughts, countTokens, the models list and Google-format errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import errors, types

from tests.fake_provider import FakeProvider
from tests.fake_provider.scenarios import DEFAULT_TEXT, MIDSTREAM_WORDS, THINKING_TEXT, words

MODEL = "gemini-2.5-flash"
BASH = types.Tool(
    function_declarations=[
        types.FunctionDeclaration(
            name="bash",
            description="Run a command",
            parameters_json_schema={"type": "object", "properties": {"command": {"type": "string"}}},
        )
    ]
)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(delay=0.001) as provider:
        yield provider


@pytest.fixture(autouse=True)
def _fresh_records(fake: FakeProvider) -> None:
    fake.reset()


@pytest.fixture(scope="module")
def gemini(fake: FakeProvider) -> Iterator[genai.Client]:
    with client(fake) as sdk:
        yield sdk


def client(fake: FakeProvider, version: str = "v1beta") -> genai.Client:
    """Keep a reference while it is used: the SDK closes its connections when the client goes."""
    options = types.HttpOptions(
        base_url=fake.url, api_version=version, retry_options=types.HttpRetryOptions(attempts=1)
    )
    return genai.Client(api_key="AIza-test-key", http_options=options)


@pytest.mark.parametrize("version", ["v1beta", "v1"])
def test_a_whole_answer_on_each_api_version(fake: FakeProvider, version: str) -> None:
    with client(fake, version) as sdk:
        answer = sdk.models.generate_content(model=MODEL, contents="Say hello")
    assert answer.text == DEFAULT_TEXT
    assert answer.candidates is not None and answer.candidates[0].finish_reason == types.FinishReason.STOP
    assert answer.usage_metadata is not None and answer.usage_metadata.candidates_token_count
    assert answer.model_version == MODEL and answer.response_id
    request = fake.requests[-1]
    assert request.path == f"/{version}/models/{MODEL}:generateContent"
    assert request.headers["x-goog-api-key"] == "AIza-test-key"
    assert request.json["contents"] == [{"parts": [{"text": "Say hello"}], "role": "user"}]


def test_a_stream_comes_a_word_per_event_in_crlf_framed_sse(fake: FakeProvider, gemini: genai.Client) -> None:
    pieces = [chunk.text for chunk in gemini.models.generate_content_stream(model=MODEL, contents="Hi")]
    assert pieces == words(DEFAULT_TEXT)
    assert fake.requests[-1].path == f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
    sent = fake.sent()
    assert sent.startswith(b"data: {") and sent.endswith(b"\r\n\r\n") and b"[DONE]" not in sent
    assert sent.count(b"data: ") == len(pieces)
    last = json.loads(sent.split(b"data: ")[-1])
    assert last["candidates"][0]["finishReason"] == "STOP" and "candidatesTokenCount" in last["usageMetadata"]


def test_without_alt_sse_a_stream_is_one_json_array_written_piece_by_piece(fake: FakeProvider) -> None:
    url = f"{fake.url}/v1beta/models/{MODEL}:streamGenerateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}
    with httpx.stream("POST", url, json=body, headers={"x-goog-api-key": "k"}) as response:
        reads = list(response.iter_raw())
    assert len(reads) > 1  # streamed, not written whole
    events = json.loads(b"".join(reads))
    assert (
        "".join(part["text"] for e in events for part in e["candidates"][0]["content"]["parts"])
        == DEFAULT_TEXT
    )
    assert b",\r\n" in b"".join(reads)


@pytest.mark.parametrize("stream", [False, True])
def test_a_function_call_arrives_whole_with_its_signature(
    fake: FakeProvider, gemini: genai.Client, stream: bool
) -> None:
    config = types.GenerateContentConfig(tools=[BASH])
    contents = "List the files [scenario:tool_call rm -rf /tmp/x]"
    if stream:
        chunks = list(gemini.models.generate_content_stream(model=MODEL, contents=contents, config=config))
        calls = [call for chunk in chunks for call in chunk.function_calls or []]
        final = chunks[-1]
    else:
        final = gemini.models.generate_content(model=MODEL, contents=contents, config=config)
        calls = final.function_calls or []
    assert [(call.name, call.args) for call in calls] == [("bash", {"command": "rm -rf /tmp/x"})]
    assert final.candidates is not None and final.candidates[0].finish_reason == types.FinishReason.STOP
    parts = final.candidates[0].content.parts if final.candidates[0].content else None
    assert parts is not None and parts[-1].thought_signature


def test_function_results_are_answered_with_text(fake: FakeProvider, gemini: genai.Client) -> None:
    config = types.GenerateContentConfig(tools=[BASH])
    first = gemini.models.generate_content(model=MODEL, contents="Run it [scenario:tool_call]", config=config)
    assert first.candidates is not None and first.candidates[0].content is not None
    call = (first.function_calls or [])[0]
    result = types.Part.from_function_response(name="bash", response={"output": "total 0"})
    contents: Any = [
        types.Content(role="user", parts=[types.Part.from_text(text="Run it [scenario:tool_call]")]),
        first.candidates[0].content,
        types.Content(role="user", parts=[result]),
    ]
    second = gemini.models.generate_content(model=MODEL, contents=contents, config=config)
    assert call.name == "bash" and second.text == DEFAULT_TEXT and not second.function_calls


def test_thoughts_come_when_asked_for(fake: FakeProvider, gemini: genai.Client) -> None:
    config = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(include_thoughts=True))
    answer = gemini.models.generate_content(model=MODEL, contents="[scenario:thinking]", config=config)
    assert answer.candidates is not None and answer.candidates[0].content is not None
    parts = answer.candidates[0].content.parts or []
    assert [(part.thought, part.text) for part in parts] == [(True, THINKING_TEXT), (None, DEFAULT_TEXT)]
    assert answer.usage_metadata is not None and answer.usage_metadata.thoughts_token_count
    plain = gemini.models.generate_content(model=MODEL, contents="[scenario:thinking]")
    assert plain.text == DEFAULT_TEXT and len(plain.candidates[0].content.parts) == 1  # type: ignore[index, union-attr, arg-type]


def test_count_tokens_and_the_models_list(fake: FakeProvider, gemini: genai.Client) -> None:
    counted = gemini.models.count_tokens(model=MODEL, contents="How many tokens is this?")
    assert counted.total_tokens and counted.total_tokens > 0
    assert fake.requests[-1].path == f"/v1beta/models/{MODEL}:countTokens"
    names = [model.name for model in gemini.models.list()]
    assert f"models/{MODEL}" in names
    assert gemini.models.get(model=MODEL).input_token_limit == 1_048_576
    with pytest.raises(errors.ClientError) as missing:
        gemini.models.get(model="gemini-0")
    assert missing.value.code == 404 and missing.value.status == "NOT_FOUND"
    # A key in the query string (as curl examples do it) is Google's credential too.
    listed = httpx.get(f"{fake.url}/v1/models?key=AIza-test-key").json()
    assert f"models/{MODEL}" in [model["name"] for model in listed["models"]]


@pytest.mark.parametrize(
    ("scenario", "status", "kind"),
    [("error_429", "RESOURCE_EXHAUSTED", errors.ClientError), ("error_500", "INTERNAL", errors.ServerError)],
)
def test_http_errors_are_in_googles_format(
    fake: FakeProvider, gemini: genai.Client, scenario: str, status: str, kind: type[errors.APIError]
) -> None:
    with pytest.raises(kind) as raised:
        gemini.models.generate_content(model=MODEL, contents=f"[scenario:{scenario}]")
    assert raised.value.status == status and raised.value.message


def test_an_error_mid_stream_reaches_the_sdk(fake: FakeProvider, gemini: genai.Client) -> None:
    received: list[str | None] = []
    with pytest.raises(errors.APIError) as raised:
        for chunk in gemini.models.generate_content_stream(
            model=MODEL, contents="[scenario:midstream_error]"
        ):
            received.append(chunk.text)
    assert received == words(DEFAULT_TEXT)[:MIDSTREAM_WORDS]
    assert raised.value.status == "INTERNAL"


def test_an_unknown_scenario_is_a_400_invalid_argument(fake: FakeProvider, gemini: genai.Client) -> None:
    with pytest.raises(errors.ClientError) as raised:
        gemini.models.generate_content(model=MODEL, contents="[scenario:nonesuch]")
    assert raised.value.code == 400 and raised.value.status == "INVALID_ARGUMENT"


async def test_the_async_client_streams_too(fake: FakeProvider, gemini: genai.Client) -> None:
    stream = await gemini.aio.models.generate_content_stream(model=MODEL, contents="Hi")
    assert [chunk.text async for chunk in stream] == words(DEFAULT_TEXT)


def test_json_mode_answers_an_instance_of_the_schema(gemini: genai.Client) -> None:
    """As Gemini CLI's router asks for a complexity score before each prompt."""
    schema = {
        "type": "OBJECT",
        "properties": {
            "reasoning": {"type": "STRING"},
            "score": {"type": "INTEGER"},
            "level": {"type": "string", "enum": ["low", "high"]},
        },
        "required": ["reasoning", "score"],
    }
    config = types.GenerateContentConfig(response_mime_type="application/json", response_json_schema=schema)
    answer = gemini.models.generate_content(
        model=MODEL, contents="Rate this [scenario:tool_call]", config=config
    )
    assert json.loads(answer.text or "") == {"reasoning": "fake", "score": 1, "level": "low"}
    assert not answer.function_calls


def test_the_model_calls_the_shell_tool_the_request_declares(
    fake: FakeProvider, gemini: genai.Client
) -> None:
    shell = types.Tool(
        function_declarations=[types.FunctionDeclaration(name="run_shell_command", description="Run")]
    )
    config = types.GenerateContentConfig(tools=[shell])
    answer = gemini.models.generate_content(model=MODEL, contents="[scenario:tool_call ls]", config=config)
    assert [(call.name, call.args) for call in answer.function_calls or []] == [
        ("run_shell_command", {"command": "ls"})
    ]
