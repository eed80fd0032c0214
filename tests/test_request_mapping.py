"""A policy's change to the normalised request, mapped back onto each provider's own body."""

import copy

import pytest

from formats import FormatError
from tests.codecs import codec_for

ANTHROPIC = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 100,
    "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {
            "role": "user",
            "content": [{"type": "text", "text": "my key is SECRET", "cache_control": {"type": "ephemeral"}}],
        },
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "bash", "input": {"command": "ls"}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "SECRET.txt"}]},
    ],
    "metadata": {"user_id": "u1"},
}
RESPONSES = {
    "model": "gpt-5",
    "instructions": "You are terse.",
    "input": [{"role": "user", "content": [{"type": "input_text", "text": "my key is SECRET"}]}],
    "max_output_tokens": 50,
}


def redact(request: dict) -> dict:
    """Replaces SECRET in every string of the normalised messages, like a redaction policy."""
    changed = copy.deepcopy(request)

    def walk(node: object) -> object:
        if isinstance(node, str):
            return node.replace("SECRET", "[redacted]")
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, dict):
            return {key: walk(value) for key, value in node.items()}
        return node

    changed["messages"] = walk(changed["messages"])
    return changed


@pytest.mark.parametrize(("path", "body"), [("/v1/messages", ANTHROPIC), ("/v1/responses", RESPONSES)])
def test_text_changes_land_in_the_original_body_and_nothing_else_changes(path: str, body: dict) -> None:
    codec = codec_for("POST", path)
    assert codec is not None
    before = codec.normalize_request(copy.deepcopy(body))
    rendered = codec.render_request(body, before, redact(before))
    assert "SECRET" not in repr(rendered)
    restored = repr(rendered).replace("[redacted]", "SECRET")
    assert restored == repr(body)  # only the redacted texts differ: cache_control, ids, metadata kept


def test_parameter_changes_use_the_providers_names() -> None:
    codec = codec_for("POST", "/v1/responses")
    assert codec is not None
    before = codec.normalize_request(copy.deepcopy(RESPONSES))
    rendered = codec.render_request(RESPONSES, before, {**before, "max_tokens": 10, "model": "gpt-5-mini"})
    assert rendered["max_output_tokens"] == 10 and rendered["model"] == "gpt-5-mini"


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/responses"])
def test_changes_the_format_cannot_carry_are_refused_not_dropped(path: str) -> None:
    codec = codec_for("POST", path)
    assert codec is not None
    body = ANTHROPIC if path == "/v1/messages" else RESPONSES
    before = codec.normalize_request(copy.deepcopy(body))
    with pytest.raises(FormatError, match="added or removed"):
        codec.render_request(body, before, {**before, "messages": before["messages"][:-1]})
    with pytest.raises(FormatError, match="cannot carry over"):
        codec.render_request(body, before, {**before, "logit_bias": {"1": 2}})


def test_chat_requests_are_the_normalised_form() -> None:
    codec = codec_for("POST", "/v1/chat/completions")
    assert codec is not None
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    assert codec.normalize_request(body) == body
    assert codec_for("GET", "/v1/chat/completions") is None
    assert codec_for("POST", "/v1/messages?beta=true") is not None


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/messages",
            {
                "model": "c",
                "max_tokens": 10,
                "messages": [
                    {"role": "user", "content": "go"},
                    {
                        "role": "assistant",
                        "content": [
                            {
                                "type": "tool_use",
                                "id": "t1",
                                "name": "bash",
                                "input": {"command": "export KEY=SECRET"},
                            }
                        ],
                    },
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "SECRET set"}],
                    },
                ],
            },
        ),
        (
            "/v1/responses",
            {
                "model": "g",
                "input": [
                    {"role": "user", "content": "go"},
                    {
                        "type": "function_call",
                        "id": "fc_1",
                        "call_id": "call_1",
                        "name": "bash",
                        "arguments": '{"command":"export KEY=SECRET"}',
                    },
                    {"type": "function_call_output", "call_id": "call_1", "output": "SECRET set"},
                ],
            },
        ),
    ],
)
def test_secrets_in_earlier_tool_calls_and_results_can_be_rewritten(path: str, body: dict) -> None:
    codec = codec_for("POST", path)
    assert codec is not None
    before = codec.normalize_request(copy.deepcopy(body))
    rendered = codec.render_request(body, before, redact(before))
    assert "SECRET" not in repr(rendered)
    assert repr(rendered).replace("[redacted]", "SECRET") == repr(body)
