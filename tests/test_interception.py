"""End to end: the official SDKs, unmodified, through a real proxy process to the fake provider."""

import json

import pytest

from tests.conftest import RunningProxy
from tests.fake_provider import FakeProvider

APIS = ["chat", "responses", "messages"]
FAKE_TEXT = "Hello from the fake provider. The quick brown fox jumps over the lazy dog."
TOOL_STOP = {"chat": "tool_calls", "responses": "completed", "messages": "tool_use"}
TEXT_STOP = {"chat": "stop", "responses": "completed", "messages": "end_turn"}


def calls(prompt: str, **extra: object) -> list[dict[str, object]]:
    return [
        {"api": api, "stream": stream, "prompt": prompt, **extra} for api in APIS for stream in (False, True)
    ]


def test_sdks_get_text_through_the_proxy(noop: RunningProxy) -> None:
    for result in noop.sdk(*calls("Say hello")):
        assert result["ok"], result
        assert result["text"] == FAKE_TEXT


def test_sdks_get_tool_calls_through_the_proxy(noop: RunningProxy) -> None:
    for call, result in zip(
        calls("[scenario:tool_call git status]"),
        noop.sdk(*calls("[scenario:tool_call git status]")),
        strict=True,
    ):
        assert result["ok"], result
        assert [c["name"] for c in result["tool_calls"]] == ["bash"]
        assert json.loads(result["tool_calls"][0]["arguments"]) == {"command": "git status"}
        assert result["stop_reason"] == TOOL_STOP[call["api"]]


def test_thinking_reaches_the_client(noop: RunningProxy) -> None:
    prompt = "[scenario:thinking]"
    results = noop.sdk(*[c for c in calls(prompt) if c["api"] != "chat"])
    for result in results:
        assert result["ok"], result
        assert result["thinking"], result
        assert result["text"] == FAKE_TEXT


def test_a_blocked_request_never_reaches_the_provider(
    proxies: dict[str, RunningProxy], fake: FakeProvider
) -> None:
    before = len(fake.requests)
    results = proxies["block_requests"].sdk(*calls("please use the forbidden-word now"))
    for result in results:
        assert not result["ok"]
        assert result["error_type"] == "PermissionDeniedError"
        assert result["status"] == 403
        assert "the prompt mentions forbidden-word" in result["message"]
    assert not any(b"forbidden-word" in r.body for r in fake.requests[before:])


def test_allowed_requests_pass_a_blocking_policy(proxies: dict[str, RunningProxy]) -> None:
    for result in proxies["block_requests"].sdk(*calls("an innocent prompt")):
        assert result["ok"], result


@pytest.mark.parametrize("api", APIS)
def test_blocklist_removes_a_dangerous_tool_call(proxies: dict[str, RunningProxy], api: str) -> None:
    prompt = "[scenario:tool_call rm -rf /]"
    for result in proxies["blocklist"].sdk(*[c for c in calls(prompt) if c["api"] == api]):
        assert result["ok"], result
        assert result["tool_calls"] == []
        assert "Blocked the tool call `bash`" in result["text"]
        assert "rm\\s+-rf" in result["text"]
        assert result["text"].startswith("Let me run that.")
        assert result["stop_reason"] == TEXT_STOP[api]


@pytest.mark.parametrize("api", APIS)
def test_blocklist_keeps_the_safe_call_next_to_a_blocked_one(
    proxies: dict[str, RunningProxy], api: str
) -> None:
    prompt = "[scenario:two_tools rm -rf ~]"
    for result in proxies["blocklist"].sdk(*[c for c in calls(prompt) if c["api"] == api]):
        assert result["ok"], result
        assert [json.loads(c["arguments"]) for c in result["tool_calls"]] == [{"command": "echo ok"}]
        assert "Blocked the tool call `bash`" in result["text"]
        assert result["stop_reason"] == TOOL_STOP[api]


def test_blocklist_lets_safe_tool_calls_through(proxies: dict[str, RunningProxy]) -> None:
    for result in proxies["blocklist"].sdk(*calls("[scenario:tool_call ls -la]")):
        assert result["ok"], result
        assert json.loads(result["tool_calls"][0]["arguments"]) == {"command": "ls -la"}
        assert "Blocked" not in result["text"]


def test_uppercase_policy_rewrites_streams_and_responses(proxies: dict[str, RunningProxy]) -> None:
    expected = "Hello FROM the FAKE provider. THE quick BROWN fox JUMPS over THE lazy DOG."
    for result in proxies["uppercase"].sdk(*calls("Say hello")):
        assert result["ok"], result
        assert result["text"] == expected


def test_a_policy_can_end_a_stream_validly(proxies: dict[str, RunningProxy]) -> None:
    results = proxies["end_stream"].sdk(*[c for c in calls("Say hello") if c["stream"]])
    for result in results:
        assert result["ok"], result
        assert result["text"].endswith(" [stopped by policy]")
        assert len(result["text"]) < len(FAKE_TEXT)


def test_request_rewrite_reaches_the_provider_in_its_own_format(
    proxies: dict[str, RunningProxy], fake: FakeProvider
) -> None:
    before = len(fake.requests)
    results = proxies["rewrite_request"].sdk(*calls("I like apple pie"))
    assert all(r["ok"] for r in results), results
    seen = fake.requests[before:]
    assert len(seen) == 6
    for request in seen:
        assert b"orange pie" in request.body and b"apple" not in request.body
    anthropic = [r.json for r in seen if r.path.startswith("/v1/messages")]
    assert anthropic[0]["messages"][0]["content"] == "I like orange pie"
    assert anthropic[0]["tools"][0]["input_schema"]["required"] == ["command"]
    responses = [r.json for r in seen if r.path.startswith("/v1/responses")]
    assert responses[0]["input"] == "I like orange pie"


def test_upstream_errors_reach_the_sdk_unchanged(noop: RunningProxy) -> None:
    for result in noop.sdk(*calls("[scenario:error_429]")):
        assert (result["ok"], result["error_type"], result["status"]) == (False, "RateLimitError", 429)
    for result in noop.sdk(*calls("[scenario:error_500]")):
        assert (result["ok"], result["error_type"], result["status"]) == (False, "InternalServerError", 500)


def test_a_rewritten_stream_keeps_tool_calls_and_thinking(proxies: dict[str, RunningProxy]) -> None:
    """Text is rewritten after thinking and before tool calls were passed through verbatim: the
    rest of the stream is re-encoded and must still be complete and valid."""
    uppercase = proxies["uppercase"]
    for call, result in zip(
        calls("[scenario:tool_call ls]"), uppercase.sdk(*calls("[scenario:tool_call ls]")), strict=True
    ):
        assert result["ok"], result
        assert result["text"] == "Let ME run THAT."
        assert [json.loads(c["arguments"]) for c in result["tool_calls"]] == [{"command": "ls"}]
        assert result["stop_reason"] == TOOL_STOP[call["api"]]
    thinking_calls = [c for c in calls("[scenario:thinking]") if c["api"] != "chat"]
    for result in uppercase.sdk(*thinking_calls):
        assert result["ok"], result
        assert result["thinking"] == "The user wants a short greeting. I will answer with the usual sentence."
        assert result["text"] == "Hello FROM the FAKE provider. THE quick BROWN fox JUMPS over THE lazy DOG."
