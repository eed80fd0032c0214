"""The example policy and policy file of docs/writing-policies.md work as the tutorial says."""

from pathlib import Path

import pytest

from controlplane.llm import ModelResponse
from controlplane.models import RequestMetadata
from controlplane.policy_file import load_policy_file
from formats.sse import SSEParser
from tests.control_planes import Kind, control_plane_for
from tests.test_stream_relay import provider_stream, relay

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


@pytest.fixture
def policy(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return load_policy_file(EXAMPLES / "team_rules.yaml")


async def test_unapproved_models_are_blocked(policy, control_plane_kind: Kind) -> None:  # type: ignore[no-untyped-def]
    metadata = RequestMetadata(call_id="c", host="api.openai.com", path="/v1/chat/completions")
    async with control_plane_for(policy, control_plane_kind) as control_plane:
        blocked = await control_plane.apply_request_policies({"model": "gpt-4o", "messages": []}, metadata)
        assert not blocked.allowed and blocked.reason == "model 'gpt-4o' is not approved for this team"
        allowed = await control_plane.apply_request_policies(
            {"model": "claude-sonnet-4-6", "messages": []}, metadata
        )
    assert allowed.allowed


async def test_the_footer_ends_every_answer(policy, control_plane_kind: Kind) -> None:  # type: ignore[no-untyped-def]
    response = ModelResponse(choices=[{"index": 0, "message": {"role": "assistant", "content": "Hi."}}])
    async with control_plane_for(policy, control_plane_kind) as control_plane:
        metadata = RequestMetadata(call_id="c", host="h", path="p")
        result = await control_plane.apply_response_policy(response, metadata)
    assert result.value is not None
    assert result.value.choices[0].message.content == "Hi.\n\n(checked by Luthien)"  # type: ignore[union-attr]

    data = [provider_stream("/v1/messages", "text")]
    out = await relay("/v1/messages", policy, data, kind=control_plane_kind)
    events = [e.json() for e in SSEParser().feed(out)]
    text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    assert text.endswith("lazy dog.\n\n(checked by Luthien)")
    assert [e["type"] for e in events[-3:]] == ["content_block_stop", "message_delta", "message_stop"]
