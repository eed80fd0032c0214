"""SerialPolicy and SelectPolicy, built from policy files as a user writes them."""

import pytest
import yaml

from controlplane.models import RequestMetadata
from controlplane.policies import PolicyHandler
from controlplane.policy_file import PolicyFileError, policy_from_document
from formats.sse import SSEParser
from tests.control_planes import Kind, control_plane_for
from tests.test_stream_relay import provider_stream, relay

FAKE_TEXT = "Hello from the fake provider. The quick brown fox jumps over the lazy dog."


def policy(text: str) -> PolicyHandler:
    return policy_from_document(yaml.safe_load(text), "test.yaml")


def client_text(out: bytes) -> str:
    events = [e.json() for e in SSEParser().feed(out)]
    return "".join(e["delta"].get("text", "") for e in events if e and e["type"] == "content_block_delta")


async def test_serial_policies_each_see_the_previous_output(control_plane_kind: Kind) -> None:
    serial = policy(
        """
policy:
  class: SerialPolicy
  config:
    policies:
      - {class: "tests.policies:RewriteUserText", config: {old: apple, new: forbidden-word}}
      - {class: "tests.policies:BlockRequestsContaining", config: {word: forbidden-word}}
"""
    )
    metadata = RequestMetadata(call_id="c", host="h", path="/v1/chat/completions")
    async with control_plane_for(serial, control_plane_kind) as control_plane:
        result = await control_plane.apply_request_policies(
            {"messages": [{"role": "user", "content": "an apple"}]}, metadata
        )
    assert not result.allowed and result.reason == "the prompt mentions forbidden-word"


async def test_serial_stream_policies_chain_and_keep_separate_state(control_plane_kind: Kind) -> None:
    serial = policy(
        """
policy:
  class: SerialPolicy
  config:
    policies:
      - {class: UppercaseNthWordPolicy, config: {n: 2}}
      - {class: UppercaseNthWordPolicy, config: {n: 3}}
"""
    )
    out = await relay(
        "/v1/messages", serial, [provider_stream("/v1/messages", "text")], kind=control_plane_kind
    )
    # Words 2, 4, 6... then 3, 6, 9...: each child counts words with its own state.
    assert client_text(out) == "Hello FROM THE FAKE provider. THE quick BROWN FOX JUMPS over THE lazy DOG."


async def test_serial_tool_gates_hold_independently(control_plane_kind: Kind) -> None:
    serial = policy(
        r"""
policy:
  class: SerialPolicy
  config:
    policies:
      - {class: ToolCallBlocklistPolicy, config: {patterns: ['rm\s+-rf']}}
      - {class: ToolCallBlocklistPolicy, config: {patterns: ['echo ok']}}
"""
    )
    data = [provider_stream("/v1/messages", "two_tools rm -rf /")]
    out = await relay("/v1/messages", serial, data, kind=control_plane_kind)
    events = [e.json() for e in SSEParser().feed(out)]
    assert not [
        e for e in events if e["type"] == "content_block_start" and e["content_block"]["type"] == "tool_use"
    ]
    assert client_text(out).count("[Luthien] Blocked the tool call `bash`") == 2
    assert events[-2]["delta"]["stop_reason"] == "end_turn"


@pytest.mark.parametrize(
    ("host", "model", "expected"),
    [
        (
            "api.anthropic.com",
            "claude-sonnet-4-6",
            "Hello FROM the FAKE provider. THE quick BROWN fox JUMPS over THE lazy DOG.",
        ),
        (
            "API.Anthropic.com",
            "claude-haiku",
            "Hello FROM the FAKE provider. THE quick BROWN fox JUMPS over THE lazy DOG.",
        ),
        ("api.anthropic.com", "other-model", FAKE_TEXT),
        ("gateway.internal", "claude-sonnet-4-6", FAKE_TEXT.upper()),
    ],
)
async def test_select_picks_the_first_matching_route(
    host: str, model: str, expected: str, control_plane_kind: Kind
) -> None:
    select = policy(
        """
policy:
  class: SelectPolicy
  config:
    routes:
      - when: {host: api.anthropic.com, model: "claude-*"}
        policy: {class: UppercaseNthWordPolicy, config: {n: 2}}
      - when: {host: "*.internal"}
        policy: {class: UppercaseNthWordPolicy, config: {n: 1}}
"""
    )
    metadata = RequestMetadata(call_id="c", host=host, path="/v1/messages", model=model)
    data = [provider_stream("/v1/messages", "text")]
    out = await relay("/v1/messages", select, data, metadata, kind=control_plane_kind)
    assert client_text(out) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "policy: {class: SerialPolicy, config: {policies: [{class: NoOpPolicy}, {class: UppercaseNthWordPolicy, config: {n: 0}}]}}",
            "test.yaml: policy.config.policies[1].config.n: Input should be greater than or equal to 1",
        ),
        (
            "policy: {class: SelectPolicy, config: {routes: [{when: {model: x}, policy: {class: Nope}}]}}",
            "test.yaml: policy.config.routes[0].policy.class: unknown policy 'Nope'",
        ),
        (
            "policy: {class: SelectPolicy, config: {routes: [{when: {modl: x}, policy: {class: NoOpPolicy}}]}}",
            "test.yaml: policy.config.routes[0].when.modl: Extra inputs are not permitted",
        ),
        (
            "policy: {class: SerialPolicy, config: {policies: []}}",
            "test.yaml: policy.config.policies: List should have at least 1 item",
        ),
    ],
)
def test_errors_in_nested_policies_name_the_full_path(text: str, expected: str) -> None:
    with pytest.raises(PolicyFileError) as error:
        policy(text)
    assert str(error.value).startswith(expected)


@pytest.mark.parametrize(
    ("text", "redacts"),
    [
        ("policy: {class: NoOpPolicy}", False),
        ("policy: {class: SecretRedactionPolicy}", True),
        (
            "policy: {class: SerialPolicy, config: {policies: [{class: NoOpPolicy}, {class: AllCapsPolicy}]}}",
            False,
        ),
        (
            "policy: {class: SerialPolicy, config: {policies: [{class: NoOpPolicy}, {class: SecretRedactionPolicy}]}}",
            True,
        ),
        (
            "policy: {class: SelectPolicy, config: {routes: [{when: {model: 'gpt-*'}, policy: {class: SecretRedactionPolicy}}]}}",
            True,
        ),
        (
            "policy: {class: SelectPolicy, config: {routes: [{when: {model: 'gpt-*'}, policy: {class: AllCapsPolicy}}]}}",
            False,
        ),
    ],
)
def test_the_recorder_skips_redaction_only_when_no_policy_in_the_tree_redacts(
    text: str, redacts: bool
) -> None:
    assert policy(text).redacts_recordings is redacts


@pytest.mark.parametrize(
    ("text", "model", "inspects"),
    [
        ("policy: {class: NoOpPolicy}", "gpt-5", False),
        ("policy: {class: 'tests.policies:BlockRequestsContaining', config: {word: x}}", "gpt-5", False),
        ("policy: {class: AllCapsPolicy}", "gpt-5", True),
        (
            "policy: {class: SerialPolicy, config: {policies: [{class: NoOpPolicy}, {class: NoOpPolicy}]}}",
            "gpt-5",
            False,
        ),
        (
            "policy: {class: SerialPolicy, config: {policies: [{class: NoOpPolicy}, {class: ToolCallBlocklistPolicy, config: {patterns: [rm]}}]}}",
            "gpt-5",
            True,
        ),
        (
            "policy: {class: SelectPolicy, config: {routes: [{when: {model: 'gpt-*'}, policy: {class: AllCapsPolicy}}]}}",
            "gpt-5",
            True,
        ),
        (
            "policy: {class: SelectPolicy, config: {routes: [{when: {model: 'gpt-*'}, policy: {class: AllCapsPolicy}}]}}",
            "claude-x",
            False,
        ),
    ],
)
def test_a_stream_takes_the_passive_path_only_when_no_policy_on_its_route_inspects_chunks(
    text: str, model: str, inspects: bool
) -> None:
    metadata = RequestMetadata(call_id="c", host="h", path="/v1/chat/completions", model=model)
    assert policy(text).inspects_streams(metadata) is inspects
