"""Ending a stream with the provider's own kind of error event (Luthien's control plane went away
mid-stream): the official SDKs, reading exactly what the client received, raise their API error,
wherever the stream was cut."""

import asyncio
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from controlplane.chunks import StreamChunk
from formats import transcoder
from formats.base import StreamTranscoder
from formats.sse import SSEEvent, SSEParser
from tests.codecs import codec_for
from tests.test_stream_relay import RENDERERS, client_text, provider_stream

MESSAGE = "control plane unavailable"
CHAT, RESPONSES, MESSAGES = "/v1/chat/completions", "/v1/responses", "/v1/messages"
SCENARIOS = ["text", "tool_call ls -la"]
MODES = ["helper", "stream=True", "async stream=True"]
PROMPT = [{"role": "user", "content": "hi"}]


def transcoder_for(path: str) -> StreamTranscoder:
    codec = codec_for("POST", path)
    assert codec is not None
    return transcoder(codec.wire_format)


def upstream_events(path: str, scenario: str) -> list[SSEEvent]:
    return SSEParser().feed(provider_stream(path, scenario))


def terminal_index(path: str, events: list[SSEEvent]) -> int:
    """Where the stream ends for the client: [DONE], message_stop, response.completed."""
    for i, event in enumerate(events):
        data = event.json()
        if (
            (path == CHAT and event.data == "[DONE]")
            or (path == MESSAGES and isinstance(data, dict) and data.get("type") == "message_stop")
            or (path == RESPONSES and isinstance(data, dict) and data.get("type") == "response.completed")
        ):
            return i
    raise AssertionError(f"no terminal event in the {path} stream")


def cut_points(path: str, scenario: str) -> list[int]:
    """After no event, one, a few, half, and everything but the terminal event."""
    last = terminal_index(path, upstream_events(path, scenario))
    return sorted({0, 1, 3, last // 2, last})


CASES = [
    (path, scenario, cut)
    for path in RENDERERS
    for scenario in SCENARIOS
    for cut in cut_points(path, scenario)
]


def forward(path: str, events: list[SSEEvent]) -> tuple[bytes, StreamTranscoder]:
    """What the relay sends for upstream events forwarded verbatim, and the transcoder that saw it."""
    transcoder = transcoder_for(path)
    out = bytearray()
    for event in events:
        transcoder.decode(event)
        transcoder.observe_emitted(event)
        out += event.raw
    return bytes(out), transcoder


# -- the official SDKs, reading a canned response ------------------------------------------------
def sse_headers() -> dict[str, str]:
    return {"content-type": "text/event-stream"}


def openai_client(body: bytes) -> openai.OpenAI:
    transport = httpx.MockTransport(lambda _: httpx.Response(200, content=body, headers=sse_headers()))
    return openai.OpenAI(api_key="sk-test", max_retries=0, http_client=httpx.Client(transport=transport))


def async_openai_client(body: bytes) -> openai.AsyncOpenAI:
    transport = httpx.MockTransport(lambda _: httpx.Response(200, content=body, headers=sse_headers()))
    return openai.AsyncOpenAI(
        api_key="sk-test", max_retries=0, http_client=httpx.AsyncClient(transport=transport)
    )


def anthropic_client(body: bytes) -> anthropic.Anthropic:
    # This anthropic SDK runs on httpx2, whose objects are not interchangeable with httpx's.
    transport = httpx2.MockTransport(lambda _: httpx2.Response(200, content=body, headers=sse_headers()))
    return anthropic.Anthropic(
        api_key="sk-ant-test", max_retries=0, http_client=httpx2.Client(transport=transport)
    )


def async_anthropic_client(body: bytes) -> anthropic.AsyncAnthropic:
    transport = httpx2.MockTransport(lambda _: httpx2.Response(200, content=body, headers=sse_headers()))
    return anthropic.AsyncAnthropic(
        api_key="sk-ant-test", max_retries=0, http_client=httpx2.AsyncClient(transport=transport)
    )


def read_with_sdk(path: str, mode: str, body: bytes, seen: list[Any]) -> None:
    """Consumes ``body`` as the response to a streaming call, appending what the SDK yields."""
    if mode == "async stream=True":
        asyncio.run(_read_async(path, body, seen))
    elif path == CHAT:
        client = openai_client(body)
        if mode == "helper":
            with client.chat.completions.stream(model="m", messages=PROMPT) as stream:  # type: ignore[arg-type]
                seen.extend(stream)
        else:
            seen.extend(client.chat.completions.create(model="m", messages=PROMPT, stream=True))  # type: ignore[arg-type]
    elif path == RESPONSES:
        client = openai_client(body)
        if mode == "helper":
            with client.responses.stream(model="m", input="hi") as stream:
                seen.extend(stream)
        else:
            seen.extend(client.responses.create(model="m", input="hi", stream=True))
    else:
        messages = anthropic_client(body).messages
        if mode == "helper":
            with messages.stream(model="m", max_tokens=10, messages=PROMPT) as stream:  # type: ignore[arg-type]
                seen.extend(stream)
        else:
            seen.extend(messages.create(model="m", max_tokens=10, messages=PROMPT, stream=True))  # type: ignore[arg-type]


async def _read_async(path: str, body: bytes, seen: list[Any]) -> None:
    if path == CHAT:
        stream: Any = await async_openai_client(body).chat.completions.create(
            model="m",
            messages=PROMPT,  # type: ignore[arg-type]
            stream=True,
        )
    elif path == RESPONSES:
        stream = await async_openai_client(body).responses.create(model="m", input="hi", stream=True)
    else:
        stream = await async_anthropic_client(body).messages.create(
            model="m",
            max_tokens=10,
            messages=PROMPT,  # type: ignore[arg-type]
            stream=True,
        )
    async for item in stream:
        seen.append(item)


def sdk_text(path: str, seen: list[Any]) -> str:
    """The assistant text the SDK handed the application before it raised."""
    texts = []
    for item in seen:
        kind = getattr(item, "type", None)
        if path == CHAT:
            if kind == "content.delta":  # the helper's own event
                texts.append(item.delta)
            elif kind is None and item.choices:  # a plain ChatCompletionChunk
                texts.append(item.choices[0].delta.content or "")
        elif path == RESPONSES and kind == "response.output_text.delta":
            texts.append(item.delta)
        elif path == MESSAGES and kind == "content_block_delta" and item.delta.type == "text_delta":
            texts.append(item.delta.text)
    return "".join(texts)


def assert_raises_api_error(path: str, read: Callable[[], None]) -> None:
    """The SDK raises its API error, carrying Luthien's message."""
    if path == MESSAGES:
        with pytest.raises(anthropic.APIStatusError) as anthropic_error:
            read()
        assert type(anthropic_error.value) is anthropic.APIStatusError
        assert anthropic_error.value.status_code == 200
        assert anthropic_error.value.body == {
            "type": "error",
            "error": {"type": "api_error", "message": MESSAGE},
        }
        assert MESSAGE in str(anthropic_error.value)
    else:
        with pytest.raises(openai.APIError) as openai_error:
            read()
        assert type(openai_error.value) is openai.APIError  # raised mid-stream, not an HTTP status
        assert openai_error.value.message == MESSAGE
        assert openai_error.value.type == "server_error"


# -- the tests ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("path", "scenario", "cut"), CASES)
def test_the_sdk_raises_its_api_error_wherever_the_stream_is_cut(
    path: str, scenario: str, cut: int, mode: str
) -> None:
    forwarded, transcoder = forward(path, upstream_events(path, scenario)[:cut])
    body = forwarded + transcoder.error_event(MESSAGE)
    seen: list[Any] = []
    assert_raises_api_error(path, lambda: read_with_sdk(path, mode, body, seen))
    # Everything before the error reached the application first.
    assert sdk_text(path, seen) == client_text(path, forwarded)
    if cut and mode != "helper":
        assert seen


@pytest.mark.parametrize(("path", "scenario", "cut"), CASES)
def test_the_error_ends_the_stream(path: str, scenario: str, cut: int) -> None:
    forwarded, transcoder = forward(path, upstream_events(path, scenario)[:cut])
    error = transcoder.error_event(MESSAGE)
    events = SSEParser().feed(error)
    assert len(events) == 1 and b"".join(e.raw for e in events) == error
    assert transcoder.finish() == b""
    assert transcoder.error_event(MESSAGE) == b""  # ended once
    data = events[0].json()
    if path == CHAT:
        assert events[0].event is None
        assert data == {"error": {"message": MESSAGE, "type": "server_error", "param": None, "code": None}}
    elif path == MESSAGES:
        assert events[0].event == "error"
        assert data == {"type": "error", "error": {"type": "api_error", "message": MESSAGE}}
    else:
        sent = [e.json()["sequence_number"] for e in SSEParser().feed(forwarded)]
        assert sent == list(range(cut))
        assert events[0].event == "error"
        assert data == {
            "type": "error",
            "code": "server_error",
            "message": MESSAGE,
            "param": None,
            "error": {"type": "server_error", "code": "server_error", "message": MESSAGE, "param": None},
            "sequence_number": cut,  # the next one after what the client has seen
        }


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", RENDERERS)
def test_an_error_after_a_rewritten_stream_continues_from_what_the_client_saw(path: str, mode: str) -> None:
    """The policy changed a chunk (the transcoder wrote it), then the control plane went away."""
    events = upstream_events(path, "text")
    cut = terminal_index(path, events) // 2
    forwarded, transcoder = forward(path, events[:cut])
    rewritten: StreamChunk = {"choices": [{"index": 0, "delta": {"content": " [changed]"}}]}
    synthesised = transcoder.encode(rewritten)
    assert synthesised
    body = forwarded + synthesised + transcoder.error_event(MESSAGE)
    seen: list[Any] = []
    assert_raises_api_error(path, lambda: read_with_sdk(path, mode, body, seen))
    assert sdk_text(path, seen) == client_text(path, forwarded) + " [changed]"
    assert client_text(path, forwarded)  # the cut is mid-text
    if path == RESPONSES:
        numbers = [e.json()["sequence_number"] for e in SSEParser().feed(body)]
        assert numbers == list(range(len(numbers)))


@pytest.mark.parametrize("path", RENDERERS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_nothing_is_added_once_the_client_has_seen_the_stream_end(path: str, scenario: str) -> None:
    events = upstream_events(path, scenario)
    _, transcoder = forward(path, events[: terminal_index(path, events) + 1])
    assert transcoder.error_event(MESSAGE) == b""
    assert transcoder.finish() == b""


@pytest.mark.parametrize("path", RENDERERS)
def test_nothing_is_added_after_the_providers_own_error(path: str) -> None:
    forwarded, transcoder = forward(path, upstream_events(path, "midstream_error"))
    assert transcoder.is_error(SSEParser().feed(forwarded)[-1])
    assert transcoder.error_event(MESSAGE) == b""
    assert transcoder.finish() == b""


@pytest.mark.parametrize("path", RENDERERS)
def test_finish_still_closes_a_stream_that_did_not_end(path: str) -> None:
    """The guard is not a blanket one: a stream cut short is closed as before."""
    events = upstream_events(path, "text")
    _, transcoder = forward(path, events[: terminal_index(path, events) // 2])
    closing = SSEParser().feed(transcoder.finish())
    assert closing
    assert terminal_index(path, closing) == len(closing) - 1
    assert transcoder.error_event(MESSAGE) == b""
