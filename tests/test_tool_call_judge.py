"""ToolCallJudgePolicy against a real (fake) judge server, through the real stream relay."""

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import ValidationError

from addon.stream_relay import relay_for
from controlplane.chunk_views import chunk_model
from controlplane.llm import ModelResponse, acompletion
from controlplane.models import ActivityEvent, ActivityType, RequestMetadata
from controlplane.policies.chunks import ToolCall, ToolCallAccumulator, chunk_text, finish_reason
from controlplane.policies.tool_call_judge import (
    JudgeAnswerError,
    LRUJudgementCache,
    ToolCallJudgePolicy,
    parse_judgement,
)
from controlplane.policy_file import policy_from_document
from formats import transcoder as new_transcoder
from formats.sse import SSEParser
from tests.codecs import codec_for
from tests.conftest import free_port
from tests.control_planes import Kind, control_plane_for, response_decision
from tests.fake_judge import FakeJudge
from tests.fake_provider.scenarios import find_scenario, plan_for
from tests.fake_provider.wire import Context, IdFactory
from tests.test_stream_relay import RENDERERS, activity, pieces, provider_stream, relay, run_relay

API_KEY = "sk-judge-SECRET-0123456789"
DANGEROUS = "tool_call rm -rf /"
SAFE = "tool_call ls -la"
BLOCKED_NOTE = "[Luthien] Blocked the tool call `bash`"
JUDGE_SAYS_BLOCK = "the judge scored it 0.95 (threshold 0.70): fake judge: this looks destructive"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(scope="module")
def judge_server() -> Iterator[FakeJudge]:
    with FakeJudge() as server:
        yield server


@pytest.fixture
def judge(judge_server: FakeJudge) -> Iterator[FakeJudge]:
    judge_server.reset()
    yield judge_server
    judge_server.reset()


def make_policy(judge: FakeJudge, **config: Any) -> ToolCallJudgePolicy:
    settings = {"model": "openai/fake-judge", "api_base": judge.url, "api_key": API_KEY, **config}
    return ToolCallJudgePolicy(ToolCallJudgePolicy.Config.model_validate(settings))


def metadata(path: str) -> RequestMetadata:
    return RequestMetadata(call_id="call-1", host="api.example.com", path=path)


@dataclass
class Seen:
    """What a client makes of a stream: its text, tool calls and finish reasons."""

    text: str = ""
    calls: dict[int, ToolCall] = field(default_factory=dict)
    finishes: list[str] = field(default_factory=list)


def client_view(path: str, out: bytes) -> Seen:
    codec = codec_for("POST", path)
    assert codec is not None
    transcoder = new_transcoder(codec.wire_format)
    seen, calls = Seen(), ToolCallAccumulator()
    for event in SSEParser().feed(out):
        for chunk in map(chunk_model, transcoder.decode(event)):
            seen.text += chunk_text(chunk)
            calls.add(chunk)
            if (reason := finish_reason(chunk)) is not None:
                seen.finishes.append(reason)
    seen.calls = calls.calls
    return seen


async def run_stream(
    path: str, policy: ToolCallJudgePolicy, data: list[bytes], kind: Kind
) -> tuple[bytes, list[ActivityEvent]]:
    """Like ``relay``, also giving back the activity the control plane published."""
    async with control_plane_for(policy, kind) as control_plane:
        out = await run_relay(control_plane, path, data, metadata(path))
        return out, await activity(control_plane)


def decisions(events: list[ActivityEvent]) -> list[dict[str, Any]]:
    return [e.data for e in events if e.type == ActivityType.STREAM_POLICY]


# --- blocking and passing, streaming -------------------------------------------------------


@pytest.mark.parametrize("path", RENDERERS)
async def test_a_dangerous_call_is_replaced_by_the_explanation(
    judge: FakeJudge, path: str, control_plane_kind: Kind
) -> None:
    original = provider_stream(path, DANGEROUS)
    out = await relay(path, make_policy(judge), pieces(original, 3), kind=control_plane_kind)
    seen = client_view(path, out)
    assert seen.calls == {}
    assert seen.text.startswith("Let me run that.")
    assert BLOCKED_NOTE in seen.text and JUDGE_SAYS_BLOCK in seen.text
    assert seen.finishes[-1] == "stop"  # the agent does not wait for a tool result
    assert judge.count == 1
    assert "rm -rf /" in judge.requests[0].user_text


@pytest.mark.parametrize("path", RENDERERS)
async def test_a_safe_call_passes_byte_identical(
    judge: FakeJudge, path: str, control_plane_kind: Kind
) -> None:
    original = provider_stream(path, SAFE)
    out, events = await run_stream(path, make_policy(judge), pieces(original, 5), control_plane_kind)
    assert out == original
    (decision,) = decisions(events)
    assert decision["allowed"] is True
    assert decision["reason"] == "the judge scored it 0.10 (threshold 0.70): fake judge: this looks harmless"
    assert decision["score"] == 0.1 and decision["cached"] is False


async def test_the_threshold_decides(judge: FakeJudge, control_plane_kind: Kind) -> None:
    path = "/v1/chat/completions"
    data = [provider_stream(path, SAFE)]
    judge.default_score = 0.5
    try:
        lenient = await relay(path, make_policy(judge, threshold=0.6), data, kind=control_plane_kind)
        assert client_view(path, lenient).calls
        strict = await relay(path, make_policy(judge, threshold=0.5), data, kind=control_plane_kind)
        assert not client_view(path, strict).calls  # at the threshold counts as above it
    finally:
        judge.default_score = 0.1


# --- blocking, non-streaming ---------------------------------------------------------------


def provider_response(path: str, scenario: str) -> dict[str, Any]:
    body = {"model": "m", "stream": False, "max_tokens": 10}
    plan = plan_for(find_scenario(f"[scenario:{scenario}]"))
    reply = RENDERERS[path](plan, Context(body, IdFactory(seed=1)))
    return json.loads(reply.chunks[0])


@pytest.mark.parametrize("path", RENDERERS)
async def test_a_dangerous_call_is_removed_from_a_whole_response(
    judge: FakeJudge, path: str, control_plane_kind: Kind
) -> None:
    codec = codec_for("POST", path)
    assert codec is not None
    original = provider_response(path, DANGEROUS)
    async with control_plane_for(make_policy(judge), control_plane_kind) as control_plane:
        result = await control_plane.apply_response_policy(codec.parse_response(original), metadata(path))
        events = await activity(control_plane)
    assert result.allowed and isinstance(result.value, ModelResponse)
    rendered = codec.render_response(original, result.value)
    message = codec.parse_response(rendered).choices[0].message  # type: ignore[union-attr]
    assert not message.tool_calls
    content = message.content or ""
    assert content.startswith("Let me run that.")
    assert BLOCKED_NOTE in content and JUDGE_SAYS_BLOCK in content
    # Every judgement is recorded with its details.
    (event,) = [e for e in events if e.type == ActivityType.RESPONSE_POLICY]
    (judged,) = event.data["judged_calls"]
    assert judged["allowed"] is False and judged["score"] == 0.95 and judged["rule_id"] == "llm-judge"


async def test_a_safe_call_in_a_whole_response_is_kept_and_recorded(
    judge: FakeJudge, control_plane_kind: Kind
) -> None:
    path = "/v1/messages"
    codec = codec_for("POST", path)
    assert codec is not None
    response = codec.parse_response(provider_response(path, SAFE))
    result = await response_decision(make_policy(judge), response, metadata(path), control_plane_kind)
    assert result.value is not None and result.value.choices[0].message.tool_calls  # type: ignore[union-attr]
    assert result.reason == "the judge scored it 0.10 (threshold 0.70): fake judge: this looks harmless"
    (judged,) = result.metadata["judged_calls"]
    assert judged["allowed"] is True and judged["judge_reason"] == "fake judge: this looks harmless"


# --- failures --------------------------------------------------------------------------------


async def test_a_judge_that_does_not_answer_in_time_blocks(
    judge: FakeJudge, control_plane_kind: Kind
) -> None:
    path = "/v1/messages"
    judge.mode, judge.delay = "slow", 2.0
    started = time.monotonic()
    out, events = await run_stream(
        path, make_policy(judge, timeout_seconds=0.2), [provider_stream(path, SAFE)], control_plane_kind
    )
    assert time.monotonic() - started < 1.5
    seen = client_view(path, out)
    assert seen.calls == {}
    assert "the judge did not answer in time (0.2s)" in seen.text
    (decision,) = decisions(events)
    assert decision["judge_error"] == "TimeoutError" and decision["score"] is None


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("error", "the judge failed: InternalServerError"),
        ("garbage", "the judge's answer held no usable score"),
    ],
)
async def test_a_failing_judge_blocks_by_default(
    judge: FakeJudge, mode: Any, reason: str, control_plane_kind: Kind
) -> None:
    path = "/v1/chat/completions"
    judge.mode = mode
    out = await relay(path, make_policy(judge), [provider_stream(path, SAFE)], kind=control_plane_kind)
    seen = client_view(path, out)
    assert seen.calls == {} and reason in seen.text


async def test_on_error_allow_lets_the_call_through_and_says_so(
    judge: FakeJudge, control_plane_kind: Kind
) -> None:
    path = "/v1/responses"
    judge.mode = "error"
    original = provider_stream(path, DANGEROUS)
    out, events = await run_stream(path, make_policy(judge, on_error="allow"), [original], control_plane_kind)
    assert out == original
    (decision,) = decisions(events)
    assert decision["reason"] == "the judge failed: InternalServerError; allowed (on_error: allow)"
    assert decision["judge_error"] == "InternalServerError" and decision["on_error"] == "allow"


async def test_an_answer_in_a_code_fence_is_read(judge: FakeJudge) -> None:
    judge.mode = "fenced"
    verdict = await make_policy(judge).judge(
        ToolCall(0, "t1", "bash", '{"command": "rm -rf /"}'), metadata("/")
    )
    assert not verdict.allowed and verdict.details["score"] == 0.95


# --- caching and concurrency -----------------------------------------------------------------


async def test_a_repeated_call_is_judged_once(judge: FakeJudge, control_plane_kind: Kind) -> None:
    path = "/v1/messages"
    policy = make_policy(judge)
    first, _ = await run_stream(path, policy, [provider_stream(path, DANGEROUS)], control_plane_kind)
    second, events = await run_stream(path, policy, [provider_stream(path, DANGEROUS)], control_plane_kind)
    assert judge.count == 1
    assert first == second
    (decision,) = decisions(events)
    assert decision["cached"] is True and decision["score"] == 0.95


async def test_the_cache_key_ignores_argument_order_and_spacing(judge: FakeJudge) -> None:
    policy = make_policy(judge)
    await policy.judge(ToolCall(0, "a", "bash", '{"command": "ls", "timeout": 5}'), metadata("/"))
    verdict = await policy.judge(ToolCall(0, "b", "bash", '{"timeout":5,"command":"ls"}'), metadata("/"))
    assert judge.count == 1 and verdict.details["cached"] is True
    await policy.judge(ToolCall(0, "c", "shell", '{"command": "ls", "timeout": 5}'), metadata("/"))
    assert judge.count == 2  # another tool is another call


async def test_errors_are_not_cached(judge: FakeJudge) -> None:
    policy = make_policy(judge)
    call = ToolCall(0, "a", "bash", '{"command": "ls"}')
    judge.mode = "error"
    assert not (await policy.judge(call, metadata("/"))).allowed
    judge.mode = "score"
    verdict = await policy.judge(call, metadata("/"))
    assert verdict.allowed and verdict.details["cached"] is False
    assert judge.count == 2


async def test_the_cache_keeps_the_most_recently_used() -> None:
    cache = LRUJudgementCache(2)
    for key in "abc":
        await cache.set(key, parse_judgement(f'{{"score": 0.1, "reason": "{key}"}}'))
    assert await cache.get("a") is None and len(cache) == 2
    await cache.get("b")  # now the most recent
    await cache.set("d", parse_judgement('{"score": 0.2}'))
    assert await cache.get("b") is not None and await cache.get("c") is None


async def test_calls_are_judged_concurrently(judge: FakeJudge) -> None:
    judge.mode, judge.delay = "slow", 0.4
    policy = make_policy(judge)
    calls = [ToolCall(i, f"id{i}", "bash", json.dumps({"command": f"echo {i}"})) for i in range(5)]
    started = time.monotonic()
    verdicts = await asyncio.gather(*(policy.judge(c, metadata("/")) for c in calls))
    assert time.monotonic() - started < 1.2  # not 5 x 0.4 s
    assert all(v.allowed for v in verdicts) and judge.count == 5


async def test_identical_calls_in_flight_share_one_request(judge: FakeJudge) -> None:
    judge.mode, judge.delay = "slow", 0.2
    policy = make_policy(judge)
    call = ToolCall(0, "a", "bash", '{"command": "rm -rf /"}')
    verdicts = await asyncio.gather(*(policy.judge(call, metadata("/")) for _ in range(4)))
    assert judge.count == 1
    assert all(not v.allowed for v in verdicts)
    assert sorted(v.details["cached"] for v in verdicts) == [False, True, True, True]


@pytest.mark.parametrize("path", RENDERERS)
async def test_text_reaches_the_client_before_the_verdict(
    judge: FakeJudge, path: str, control_plane_kind: Kind
) -> None:
    codec = codec_for("POST", path)
    assert codec is not None
    events = SSEParser().feed(provider_stream(path, DANGEROUS))
    out = bytearray()
    async with control_plane_for(make_policy(judge), control_plane_kind) as control_plane:
        context = await control_plane.create_streaming_context({"messages": []}, metadata(path))
        stream = relay_for(new_transcoder(codec.wire_format), control_plane, context)

        async def drive() -> None:
            for event in events:  # one upstream event at a time
                async for emitted in stream.feed(event.raw):
                    out.extend(emitted)
            async for emitted in stream.close():
                out.extend(emitted)

        judge.hold()
        task = asyncio.create_task(drive())
        try:
            deadline = time.monotonic() + 10
            while judge.count == 0:
                assert time.monotonic() < deadline and not task.done()
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.05)
            assert not task.done()  # the relay waits for the verdict...
            seen = client_view(path, bytes(out))
            assert seen.text == "Let me run that."  # ...but the text before the call is out already
            assert seen.calls == {} and seen.finishes == []
        finally:
            judge.release()
        await asyncio.wait_for(task, 10)
    seen = client_view(path, bytes(out))
    assert seen.calls == {} and JUDGE_SAYS_BLOCK in seen.text


# --- what is recorded, and what is not ---------------------------------------------------------


async def test_the_decision_records_the_judgement_and_never_the_key(
    judge: FakeJudge, monkeypatch: pytest.MonkeyPatch, control_plane_kind: Kind
) -> None:
    monkeypatch.setenv("LUTHIEN_TEST_JUDGE_KEY", API_KEY)
    policy = make_policy(judge, api_key=None, api_key_env="LUTHIEN_TEST_JUDGE_KEY")
    path = "/v1/chat/completions"
    _, events = await run_stream(path, policy, [provider_stream(path, DANGEROUS)], control_plane_kind)
    assert judge.requests[0].headers["authorization"] == f"Bearer {API_KEY}"  # the key was used
    (decision,) = decisions(events)
    # The chunk carrying the note went on; the tool call did not: the decision is a block.
    assert decision["allowed"] is False and decision["block"] == "tool_call_removed"
    assert decision["reason"] == JUDGE_SAYS_BLOCK
    assert decision["rule_id"] == "llm-judge" and decision["blocked_tool"] == "bash"
    assert decision["score"] == 0.95 and decision["threshold"] == 0.7
    assert decision["judge_reason"] == "fake judge: this looks destructive"
    assert decision["judge_model"] == "openai/fake-judge" and decision["cached"] is False
    assert isinstance(decision["latency_ms"], float) and decision["latency_ms"] > 0
    messages = decision["judge_messages"]
    assert [m["role"] for m in messages] == ["system", "user"] and "rm -rf /" in messages[1]["content"]
    recorded = json.dumps([e.model_dump(mode="json") for e in events])
    assert API_KEY not in recorded


async def test_a_custom_prompt_is_sent(judge: FakeJudge) -> None:
    policy = make_policy(judge, prompt="Score it. Answer JSON.")
    await policy.judge(ToolCall(0, "a", "bash", '{"command": "ls"}'), metadata("/"))
    sent = judge.requests[0].body
    assert sent["messages"][0] == {"role": "system", "content": "Score it. Answer JSON."}
    assert sent["temperature"] == 0


# --- the judge's call never goes through a proxy -----------------------------------------------


@pytest.fixture
def dead_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every proxy variable points at a port nobody listens on; nothing is exempt."""
    proxy = f"http://127.0.0.1:{free_port()}"
    for name in PROXY_VARS:
        monkeypatch.setenv(name, proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


async def test_the_proxy_variables_do_reach_a_plain_litellm_call(judge: FakeJudge, dead_proxy: None) -> None:
    """The control: without the policy's own client, LiteLLM goes to the (dead) proxy."""
    with pytest.raises(Exception, match=r"(?i)connect"):
        await acompletion(
            model="openai/fake-judge",
            api_base=judge.url,
            api_key=API_KEY,
            messages=[{"role": "user", "content": "rm -rf /"}],
            num_retries=0,
            max_retries=0,
            timeout=5,
        )
    assert judge.count == 0


@pytest.mark.parametrize("model", ["openai/fake-judge", "hosted_vllm/fake-judge", "lm_studio/fake-judge"])
async def test_the_judge_ignores_the_proxy_variables(judge: FakeJudge, dead_proxy: None, model: str) -> None:
    # Both of LiteLLM's routes: the OpenAI SDK (openai, lm_studio) and its own handler (hosted_vllm).
    policy = make_policy(judge, model=model)
    verdict = await policy.judge(ToolCall(0, "a", "bash", '{"command": "rm -rf /"}'), metadata("/"))
    assert verdict.details.get("judge_error") is None
    assert not verdict.allowed and verdict.details["score"] == 0.95
    assert judge.count == 1


# --- configuration and parsing ---------------------------------------------------------------


def test_the_policy_loads_from_a_policy_file(judge: FakeJudge) -> None:
    document = {
        "policy": {
            "class": "controlplane.policies.tool_call_judge:ToolCallJudgePolicy",
            "config": {"model": "openai/fake-judge", "api_base": judge.url, "threshold": 0.8},
        }
    }
    policy = policy_from_document(document, "judge.yaml")
    assert isinstance(policy, ToolCallJudgePolicy) and policy.config.threshold == 0.8


@pytest.mark.parametrize(
    "config",
    [
        {"model": "m", "threshold": 1.5},
        {"model": "m", "api_key": "k", "api_key_env": "K"},
        {"model": "m", "on_error": "ignore"},
        {"model": "m", "colour": "red"},
        {"model": ""},
    ],
)
def test_bad_configs_are_refused(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ToolCallJudgePolicy.Config.model_validate(config)


def test_a_model_without_a_known_provider_is_refused_at_startup() -> None:
    with pytest.raises(ValueError, match="provider/model"):
        ToolCallJudgePolicy(ToolCallJudgePolicy.Config(model="my-judge"))


def test_a_missing_key_variable_is_refused_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LUTHIEN_TEST_NO_SUCH_KEY", raising=False)
    config = ToolCallJudgePolicy.Config(model="openai/gpt-4o-mini", api_key_env="LUTHIEN_TEST_NO_SUCH_KEY")
    with pytest.raises(ValueError, match="LUTHIEN_TEST_NO_SUCH_KEY"):
        ToolCallJudgePolicy(config)


@pytest.mark.parametrize(
    ("answer", "score", "reason"),
    [
        ('{"score": 0.3, "reason": "fine"}', 0.3, "fine"),
        ('```json\n{"score": 0.9, "reason": "bad"}\n```', 0.9, "bad"),
        ('Sure! {"note": {"x": 1}} then {"score": "0.8", "reason": "a {brace}"} done', 0.8, "a {brace}"),
        ('{"score": 7, "reason": "very\\n bad"}', 1.0, "very bad"),
        ('{"score": -1}', 0.0, ""),
    ],
)
def test_answers_are_read_robustly(answer: str, score: float, reason: str) -> None:
    judgement = parse_judgement(answer)
    assert (judgement.score, judgement.reason) == (score, reason)


@pytest.mark.parametrize(
    "answer", [None, "", "no idea", '{"reason": "x"}', '{"score": true}', '{"score": "NaN"}']
)
def test_answers_without_a_score_are_errors(answer: str | None) -> None:
    with pytest.raises(JudgeAnswerError):
        parse_judgement(answer)
