"""The session a call belongs to, from what each kind of agent sends (addon/session_identity.py);
tests/test_dashboard_e2e.py sends the same through the proxy with the official SDKs."""

import json

import pytest

from addon.session_identity import claude_code_session, session_id

SESSION = "3f9c2a1e-8b7d-4c6f-9e21-5d4a3b2c1f00"
DEVICE = "ab" * 32
LEGACY = f"user_{DEVICE}_account__session_{SESSION}"  # Claude Code up to 2.1.77, on an API key
LEGACY_ACCOUNT = f"user_{DEVICE}_account_0d4c1b2a-9e8f-4a7b-8c6d-5e4f3a2b1c0d_session_{SESSION}"
MODERN = json.dumps({"device_id": DEVICE, "account_uuid": "", "session_id": SESSION}, separators=(",", ":"))


@pytest.mark.parametrize("user_id", [LEGACY, LEGACY_ACCOUNT, MODERN, json.dumps({"session_id": SESSION})])
def test_claude_codes_user_id_names_its_session(user_id: str) -> None:
    assert claude_code_session(user_id) == SESSION
    assert session_id({}, user_id) == SESSION


@pytest.mark.parametrize(
    "user_id",
    [
        "end-user-42",
        "user_42",
        "{not json",
        '{"session_id": 7}',
        '["session_id"]',
        f"xuser_{DEVICE}_session_{SESSION}",
    ],
)
def test_another_user_id_is_no_claude_code_session_but_is_the_apps_session(user_id: str) -> None:
    assert claude_code_session(user_id) is None
    assert session_id({}, user_id) == user_id  # an SDK app's calls for one user are one session


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-claude-code-session-id": "cc", "session_id": "codex"}, "cc"),
        ({"session_id": "codex", "conversation_id": "older"}, "codex"),
        ({"conversation_id": "older"}, "older"),
        ({"session-id": "dashed"}, "dashed"),
        ({"session_id": ""}, SESSION),  # an empty header names nothing
    ],
)
def test_a_session_header_comes_first(headers: dict[str, str], expected: str) -> None:
    assert session_id(headers, LEGACY) == expected


def test_no_header_and_no_user_is_no_session() -> None:
    assert session_id({"user-agent": "curl/8"}, None) is None
    assert session_id({}, "") is None


def test_a_header_that_may_hold_a_credential_is_not_a_session_and_a_key_is_not_kept() -> None:
    assert session_id({"x-session-id": "s3cr3t-web-session", "x-session-token": "t"}, None) is None
    assert session_id({"session_id": "sk-ant-api03-" + "x" * 40}, None) == "[redacted]"
