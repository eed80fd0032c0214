"""Every call through a real proxy is recorded: what the agent sent, what the provider got, what
the provider answered and what the agent received (streams too), with the policy's decisions,
timings and usage. Secrets never reach the database."""

import uuid
from pathlib import Path

import httpx
import pytest

from controlplane.recording.records import REDACTED, CallOutcome
from tests.conftest import RunningProxy
from tests.fake_provider import FakeProvider, ScriptedReply, matching
from tests.fake_provider.scenarios import DEFAULT_TEXT as FAKE_TEXT
from tests.recorded import recorded
from tests.scripted import chat_chunk, chat_delta, chat_stream_lines, frame
from tests.test_wire_fidelity import ENDPOINTS, body, client_for

pytestmark = pytest.mark.timeout(180)


def tag() -> str:
    """A word only this test's prompts contain, to find its records."""
    return f"tag{uuid.uuid4().hex[:12]}"


async def test_calls_are_recorded_with_both_sides_identical_under_a_noop_policy(noop: RunningProxy) -> None:
    word = tag()
    sent = [
        {"api": "chat", "stream": False, "prompt": f"{word} one", "key": "sk-canary-noop-0001"},
        {"api": "messages", "stream": True, "prompt": f"{word} two"},
        {"api": "responses", "stream": True, "prompt": f"{word} three"},
    ]
    results = noop.sdk(*sent)
    assert all(r["ok"] for r in results), results
    records = await recorded(noop.database_url, word, 3)
    chat, messages, responses = (
        next(r for r in records if r.path.startswith(p))
        for p in ("/v1/chat/completions", "/v1/messages", "/v1/responses")
    )
    for record, result in ((chat, results[0]), (messages, results[1]), (responses, results[2])):
        assert record.outcome is CallOutcome.COMPLETED and record.status == 200
        assert not record.request_modified and not record.response_modified
        assert record.original_request == record.final_request
        assert record.original_output == record.final_output
        assert record.final_output is not None and record.final_output.text == result["text"]
        assert record.ttfb_ms is not None and 0 < record.ttfb_ms <= record.duration_ms
        assert record.usage is not None and record.usage.prompt_tokens and record.usage.completion_tokens
        headers = dict((k.lower(), v) for k, v in record.request_headers)
        credential = headers.get("authorization") or headers.get("x-api-key")
        assert credential == REDACTED
        assert headers["host"] == record.host  # as the client sent them, not the internal hop
        assert not any(name.startswith("x-luthien-") for name in headers)
        assert record.api_key_hash  # who called, without the key
    assert chat.host == "api.openai.com" and chat.model == "gpt-4o" and chat.agent == "OpenAI"
    assert messages.host == "api.anthropic.com" and messages.agent == "Anthropic"
    assert not chat.stream and chat.original_response == chat.final_response
    assert chat.original_events is None
    for streamed in (messages, responses):
        assert streamed.stream and streamed.original_events == streamed.final_events
        assert streamed.original_events and streamed.original_response is None
    assert [e for e, _ in messages.final_events or []][:1] == ["message_start"]


async def test_a_modified_stream_records_different_original_and_final(
    proxies: dict[str, RunningProxy],
) -> None:
    uppercase = proxies["uppercase"]  # upper-cases every second word
    word = tag()
    sent = [
        {"api": api, "stream": True, "prompt": f"{word} hello"} for api in ("chat", "responses", "messages")
    ]
    results = uppercase.sdk(*sent)
    assert all(r["ok"] for r in results), results
    for record in await recorded(uppercase.database_url, word, 3):
        assert record.response_modified and not record.request_modified
        assert record.original_output is not None and record.final_output is not None
        assert record.original_output.text == FAKE_TEXT
        assert record.final_output.text != FAKE_TEXT
        assert record.final_output.text in [r["text"] for r in results]  # what the client got
        assert record.original_events != record.final_events


async def test_a_blocked_request_is_recorded_with_the_decision(proxies: dict[str, RunningProxy]) -> None:
    blocker = proxies["block_requests"]
    word = tag()
    (result,) = blocker.sdk({"api": "messages", "stream": True, "prompt": f"{word} forbidden-word"})
    assert not result["ok"] and result["status"] == 403
    (record,) = await recorded(blocker.database_url, word, 1)
    assert record.outcome is CallOutcome.BLOCKED and record.status == 403
    assert record.final_request is None and record.original_events is None
    (decision,) = record.decisions
    assert decision.stage == "request" and not decision.allowed and decision.reason
    assert record.final_response["error"]["message"].startswith("Request blocked by Luthien policy")


async def test_a_rewritten_request_records_what_the_provider_got(proxies: dict[str, RunningProxy]) -> None:
    rewriter = proxies["rewrite_request"]  # apple -> orange in user text
    word = tag()
    (result,) = rewriter.sdk({"api": "chat", "stream": False, "prompt": f"{word} an apple a day"})
    assert result["ok"], result
    (record,) = await recorded(rewriter.database_url, word, 1)
    assert record.request_modified
    assert record.original_request["messages"][0]["content"] == f"{word} an apple a day"
    assert record.final_request["messages"][0]["content"] == f"{word} an orange a day"


async def test_a_provider_error_is_recorded(noop: RunningProxy) -> None:
    word = tag()
    (result,) = noop.sdk({"api": "chat", "stream": False, "prompt": f"{word} [scenario:error_429]"})
    assert not result["ok"] and result["status"] == 429
    (record,) = await recorded(noop.database_url, word, 1)
    assert record.outcome is CallOutcome.PROVIDER_ERROR and record.status == 429
    assert record.final_response == record.original_response and "error" in record.final_response


async def test_secrets_and_api_keys_never_reach_the_database(proxies: dict[str, RunningProxy]) -> None:
    catalogue = proxies["catalogue"]  # model suffix -secrets: SecretRedactionPolicy
    word = tag()
    openai_key = "sk-proj-" + "Zx3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z" * 2
    aws_key = "AKIA" + "ZXCVBNMLKJHGFDSA"
    api_key = "sk-canary-" + uuid.uuid4().hex
    prompt = f"{word} deploy with OPENAI_API_KEY={openai_key} and aws key {aws_key}"
    sent = [
        {"api": api, "stream": stream, "prompt": prompt, "model": f"{model}-secrets", "key": api_key}
        for api, model in (("chat", "gpt-4o"), ("messages", "claude-sonnet-4-6"))
        for stream in (False, True)
    ]
    assert all(r["ok"] for r in catalogue.sdk(*sent))
    records = await recorded(catalogue.database_url, word, 4)
    for record in records:
        assert "[secret not recorded: openai_api_key]" in str(record.original_request)
        assert "[REDACTED:openai_api_key]" in str(record.final_request)
        assert record.request_modified and record.decisions
    # Everything the database holds, byte for byte (the SQLite file and its write-ahead log).
    database = Path(catalogue.database_url.removeprefix("sqlite://"))
    stored = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    for secret in (openai_key, aws_key, api_key):
        assert secret.encode() not in stored


async def test_a_call_whose_client_left_before_the_answer_is_recorded(
    noop: RunningProxy, fake: FakeProvider
) -> None:
    word = tag()
    with client_for(noop) as client, pytest.raises(httpx.ReadTimeout):
        # The provider holds its answer until released; the client gives up first.
        client.post(
            ENDPOINTS["chat"][0],
            json=body("chat", f"{word} [scenario:gated]", False),
            timeout=httpx.Timeout(10, read=1),
        )
    (record,) = await recorded(noop.database_url, word, 1)
    fake.release(-1)
    # The call was stopped where it was, waiting for the provider's answer; what was sent is kept.
    assert record.outcome is CallOutcome.ERROR and record.status is None
    assert record.error == "the client disconnected before the response was sent"
    assert record.final_request is not None and record.original_output is None


def _chat_text_stream(text: str) -> bytes:
    chunks = [
        chat_chunk([chat_delta(0, {"role": "assistant", "content": ""})]),
        *(chat_chunk([chat_delta(0, {"content": word + " "})]) for word in text.split()),
        chat_chunk([chat_delta(0, {}, "stop")]),
    ]
    return frame(chat_stream_lines(chunks))


async def test_a_stream_whose_client_had_its_end_is_complete_though_the_provider_ends_it_later(
    noop: RunningProxy, fake: FakeProvider
) -> None:
    """The openai SDK stops reading at ``[DONE]`` and closes; the provider's body ends later."""
    word = tag()
    late_end = b": the provider ends its body a while after [DONE]\n\n"
    with fake.scripted():
        fake.script(
            ScriptedReply(
                (_chat_text_stream(f"{word} done"), late_end), content_type="text/event-stream", delay=1.0
            ),
            matching("POST", "/v1/chat/completions"),
        )
        (result,) = noop.sdk({"api": "chat", "stream": True, "prompt": word})
    assert result["ok"] and result["text"] == f"{word} done ", result
    (record,) = await recorded(noop.database_url, word, 1)
    assert record.outcome is CallOutcome.COMPLETED and record.error is None
    assert record.final_output is not None and record.final_output.text == f"{word} done "
    # Its record was on disk before [DONE] reached the client: the provider's late tail is not in it.
    assert record.final_events is not None and record.final_events[-1] == (None, "[DONE]")
