"""Whole calls their policy does not inspect take the passive path (``PolicyHandler``'s
``inspects_requests`` and ``inspects_responses``): sent on as they came, without being
normalised or shown to the policy's hooks, and recorded as completely as the active path records
them. A sidecar then makes no response round trip to its control plane."""

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from addon.pipeline import Pipeline, ProxyRequest
from addon.upstream import Upstream
from controlplane.activity.memory import InMemoryBus
from controlplane.interface import PolicingService
from controlplane.local import ControlPlaneLocal
from controlplane.models import ActivityType, RequestMetadata
from controlplane.policies.all_caps import AllCapsPolicy
from controlplane.policies.noop import NoOpPolicy
from controlplane.recording.records import CallRecord
from formats.policing import Policing
from luthien.dry_run import replay_call
from tests.conftest import RunningProxy, running_proxies
from tests.control_planes import Kind, OverTheNetwork, control_plane_for, published
from tests.fake_provider import FakeProvider
from tests.fake_provider.scenarios import DEFAULT_TEXT
from tests.policies import BlocksResponses, ReadsWholeCalls

pytestmark = pytest.mark.timeout(300)

MODELS = {
    "chat": "gpt-4o",
    "responses": "gpt-5",
    "messages": "claude-sonnet-4-6",
    "gemini": "gemini-2.5-flash",
}
SCENARIOS = ("text", "tool_call", "two_tools", "thinking")


def _blocks_responses(inspects: bool) -> dict[str, Any]:
    return {"class": "tests.policies:BlocksResponses", "config": {"inspects": inspects}}


#: NoOp, but for models whose name says which BlocksResponses they get.
POLICY = {
    "class": "SelectPolicy",
    "config": {
        "routes": [
            {"when": {"model": "*-blocks"}, "policy": _blocks_responses(True)},
            {"when": {"model": "*-declines"}, "policy": _blocks_responses(False)},
        ]
    },
}


@pytest.fixture(scope="module")
def proxy(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    with running_proxies({"passive": (POLICY, [])}, fake, tmp_path_factory.mktemp("passive")) as running:
        yield running["passive"]


def _whole(api: str, prompt: str, model: str | None = None) -> dict[str, Any]:
    return {"api": api, "stream": False, "prompt": prompt, "model": model or MODELS[api]}


def test_a_response_whose_policy_declares_it_does_not_look_never_reaches_the_response_hook(
    proxy: RunningProxy,
) -> None:
    declined = proxy.sdk(*(_whole(api, "hello", f"{model}-declines") for api, model in MODELS.items()))
    assert [(r["ok"], r.get("text")) for r in declined] == [(True, DEFAULT_TEXT)] * len(MODELS), declined
    # The same policy saying it looks: its hook runs, and blocks every answer.
    blocked = proxy.sdk(*(_whole(api, "hello", f"{model}-blocks") for api, model in MODELS.items()))
    assert [(r["ok"], r["status"]) for r in blocked] == [(False, 403)] * len(MODELS), blocked


def _comparable(record: CallRecord) -> dict[str, Any]:
    """The record but for the header a replayed request is not sent with (its length)."""
    dumped = record.model_dump(exclude={"request_headers"})
    dumped["request_headers"] = [h for h in record.request_headers if h[0].lower() != "content-length"]
    return dumped


async def test_a_passive_whole_call_is_recorded_as_completely_as_the_active_path_records_it(
    proxy: RunningProxy,
) -> None:
    from tests.recorded import recorded

    word = f"tag{uuid.uuid4().hex[:12]}"
    calls = [_whole(api, f"{word} [scenario:{scenario}]") for api in MODELS for scenario in SCENARIOS]
    results = proxy.sdk(*calls)
    assert all(r["ok"] for r in results), results
    records = await recorded(proxy.database_url, word, len(calls))
    assert {r.wire_format for r in records} == {
        "openai_chat",
        "openai_responses",
        "anthropic_messages",
        "gemini",
    }
    for record in records:
        assert record.usage is not None and record.usage.completion_tokens
        assert record.original_output is not None and record.original_output.finish_reason
        assert record.original_output.text or record.original_output.tool_calls
        # The same provider bytes on the active path: a policy that reads the request and the
        # response, and changes nothing.
        replay = await replay_call(record, ReadsWholeCalls(), record.policy_version or "", InMemoryBus())
        assert _comparable(replay.replayed) == _comparable(record), record.path
    tools = [r.original_output.tool_calls for r in records if r.original_output is not None]
    assert sum(len(calls) for calls in tools) == 3 * len(MODELS)  # tool_call and two_tools


def _request(model: str) -> ProxyRequest:
    body = f'{{"model": "{model}", "messages": [{{"role": "user", "content": "hello"}}]}}'
    headers = [("content-type", "application/json"), ("authorization", "Bearer sk-test")]
    return ProxyRequest("POST", "api.openai.com", "/v1/chat/completions", headers, body.encode())


@asynccontextmanager
async def _data_plane(policy: Any, kind: Kind, fake: FakeProvider) -> AsyncIterator[tuple[Pipeline, Any]]:
    """A pipeline to the fake provider through a ``kind`` control plane (for ``http``, the
    sidecar's own client, which sends bodies as they are), and that control plane."""
    async with control_plane_for(policy, kind) as control_plane:
        policing: PolicingService = (
            control_plane.client if isinstance(control_plane, OverTheNetwork) else Policing(control_plane)
        )
        upstream = Upstream({"api.openai.com": fake.url})
        try:
            yield Pipeline(policing, upstream), control_plane
        finally:
            await upstream.aclose()


async def _answer(pipeline: Pipeline, model: str = "gpt-4o") -> tuple[int, bytes]:
    response = await pipeline.handle(_request(model))
    return response.status, b"".join([piece async for piece in response.body])


@pytest.mark.parametrize("inspects", [False, True])
async def test_a_response_no_policy_inspects_is_not_sent_to_the_control_plane(
    control_plane_kind: Kind, fake: FakeProvider, inspects: bool
) -> None:
    policy = BlocksResponses(BlocksResponses.Config(inspects=inspects))
    async with _data_plane(policy, control_plane_kind, fake) as (pipeline, control_plane):
        status, body = await _answer(pipeline)
        decided = {event.type for event in await published(control_plane)} & {
            ActivityType.REQUEST_POLICY,
            ActivityType.RESPONSE_POLICY,
        }
    # The policy does not look at requests: none is decided either way.
    if inspects:  # asked: the policy's hook blocks the answer
        assert status == 403 and decided == {ActivityType.RESPONSE_POLICY}
    else:  # for a sidecar, nothing but the request's verdict crossed the network
        assert status == 200 and DEFAULT_TEXT.encode() in body and not decided


@pytest.mark.parametrize(
    ("policy", "inspects"),
    [
        (NoOpPolicy(), (False, False, False)),
        (ReadsWholeCalls(), (True, True, False)),
        (BlocksResponses(BlocksResponses.Config(inspects=False)), (False, False, False)),
        (AllCapsPolicy(), (False, True, True)),
    ],
)
def test_a_policy_inspects_what_its_hooks_override_unless_it_says_otherwise(
    policy: Any, inspects: tuple[bool, bool, bool]
) -> None:
    metadata = RequestMetadata(call_id="c", host="h", path="/v1/chat/completions", model="gpt-5")
    declared = (
        policy.inspects_requests(metadata),
        policy.inspects_responses(metadata),
        policy.inspects_streams(metadata),
    )
    assert declared == inspects


async def test_what_is_inspected_is_read_per_call_from_the_policy_in_force(fake: FakeProvider) -> None:
    async with _data_plane(NoOpPolicy(), "local", fake) as (pipeline, control_plane):
        assert isinstance(control_plane, ControlPlaneLocal)
        assert (await _answer(pipeline))[0] == 200
        control_plane.replace_policy(BlocksResponses(BlocksResponses.Config(inspects=True)), "v2")
        assert (await _answer(pipeline))[0] == 403
        control_plane.replace_policy(BlocksResponses(BlocksResponses.Config(inspects=False)), "v3")
        assert (await _answer(pipeline))[0] == 200
