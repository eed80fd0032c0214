"""Every built-in policy through the official SDKs (three APIs, streaming and not) and a real
proxy. One proxy serves them all: its SelectPolicy routes by the model name's suffix."""

import json

import pytest

from tests.conftest import RunningProxy
from tests.fake_judge import FakeJudge
from tests.fake_provider import FakeProvider

MODELS = {"chat": "gpt-4o", "responses": "gpt-5", "messages": "claude-sonnet-4-6"}
FAKE_TEXT = "Hello from the fake provider. The quick brown fox jumps over the lazy dog."
TOOL_STOP = {"chat": "tool_calls", "responses": "completed", "messages": "tool_use"}
TEXT_STOP = {"chat": "stop", "responses": "completed", "messages": "end_turn"}


def calls(prompt: str, route: str, **extra: object) -> list[dict[str, object]]:
    return [
        {"api": api, "stream": stream, "prompt": prompt, "model": f"{model}-{route}", **extra}
        for api, model in MODELS.items()
        for stream in (False, True)
    ]


@pytest.fixture(scope="module")
def catalogue(proxies: dict[str, RunningProxy]) -> RunningProxy:
    return proxies["catalogue"]


def run(proxy: RunningProxy, prompt: str, route: str) -> list[tuple[dict[str, object], dict[str, object]]]:
    sent = calls(prompt, route)
    results = proxy.sdk(*sent)
    for result in results:
        assert result["ok"], result
    return list(zip(sent, results, strict=True))


def arguments(result: dict[str, object]) -> list[object]:
    return [json.loads(c["arguments"]) for c in result["tool_calls"]]  # type: ignore[index, union-attr]


def test_all_caps(catalogue: RunningProxy) -> None:
    for _, result in run(catalogue, "Say hello", "caps"):
        assert result["text"] == FAKE_TEXT.upper()


def test_string_replacement_across_events(catalogue: RunningProxy) -> None:
    # "quick " and "brown " arrive as two separate SSE events.
    for _, result in run(catalogue, "Say hello", "replace"):
        assert result["text"] == FAKE_TEXT.replace("quick brown", "slow red")


@pytest.mark.parametrize("route", ["dangerous", "judge", "rules"])
def test_tool_call_policies_remove_the_dangerous_call(catalogue: RunningProxy, route: str) -> None:
    for call, result in run(catalogue, "[scenario:tool_call rm -rf /]", route):
        assert result["tool_calls"] == []
        assert "[Luthien] Blocked the tool call `bash`" in result["text"]  # type: ignore[operator]
        assert result["stop_reason"] == TEXT_STOP[call["api"]]  # type: ignore[index]


@pytest.mark.parametrize("route", ["dangerous", "judge", "rules"])
def test_tool_call_policies_keep_the_safe_call_beside_it(catalogue: RunningProxy, route: str) -> None:
    for call, result in run(catalogue, "[scenario:two_tools rm -rf ~]", route):
        assert arguments(result) == [{"command": "echo ok"}]
        assert result["stop_reason"] == TOOL_STOP[call["api"]]  # type: ignore[index]


@pytest.mark.parametrize("route", ["dangerous", "judge", "rules"])
def test_tool_call_policies_pass_safe_calls(catalogue: RunningProxy, route: str) -> None:
    for call, result in run(catalogue, "[scenario:tool_call ls -la]", route):
        assert arguments(result) == [{"command": "ls -la"}]
        assert "Blocked" not in result["text"]  # type: ignore[operator]
        assert result["stop_reason"] == TOOL_STOP[call["api"]]  # type: ignore[index]


def test_explanations_name_the_rule(catalogue: RunningProxy) -> None:
    dangerous = run(catalogue, "[scenario:tool_call rm -rf /]", "dangerous")
    assert all("rm-rf-broad" in r["text"] for _, r in dangerous)  # type: ignore[operator]
    judged = run(catalogue, "[scenario:tool_call rm -rf /]", "judge")
    assert all("the judge scored it 0.95" in r["text"] for _, r in judged)  # type: ignore[operator]
    ruled = run(catalogue, "[scenario:tool_call rm -rf /]", "rules")
    assert all("no recursive deletes here" in r["text"] for _, r in ruled)  # type: ignore[operator]


def test_allow_rules_take_precedence(catalogue: RunningProxy) -> None:
    for _, result in run(catalogue, "[scenario:tool_call rm -rf ./build]", "rules"):
        assert arguments(result) == [{"command": "rm -rf ./build"}]


def test_the_judge_is_asked_once_per_distinct_call(catalogue: RunningProxy, judge: FakeJudge) -> None:
    before = judge.count
    run(catalogue, "[scenario:tool_call git status --short]", "judge")
    assert judge.count == before + 1  # six calls, one judgement: the rest came from the cache


def test_secrets_never_reach_the_provider(catalogue: RunningProxy, fake: FakeProvider) -> None:
    openai_key = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z" * 2
    aws_key = "AKIA" + "QWERTYUIOPASDFGH"
    prompt = f"Deploy with OPENAI_API_KEY={openai_key} and aws key {aws_key}, then say hello"
    before = len(fake.requests)
    results = run(catalogue, prompt, "secrets")
    seen = fake.requests[before:]
    assert len(seen) == len(results)
    for request in seen:
        assert openai_key.encode() not in request.body and aws_key.encode() not in request.body
        assert b"[REDACTED:" in request.body
    assert openai_key not in catalogue.log() and aws_key not in catalogue.log()


def test_serial_composition_of_catalogue_policies(catalogue: RunningProxy, fake: FakeProvider) -> None:
    secret = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
    before = len(fake.requests)
    for call, result in run(catalogue, f"token {secret} [scenario:two_tools rm -rf /]", "serial"):
        assert arguments(result) == [{"command": "echo ok"}]
        assert "rm-rf-broad" in result["text"]  # type: ignore[operator]
        assert result["text"].startswith("Let ME run BOTH commands.")  # type: ignore[union-attr]
        assert result["stop_reason"] == TOOL_STOP[call["api"]]  # type: ignore[index]
    assert not any(secret.encode() in r.body for r in fake.requests[before:])
