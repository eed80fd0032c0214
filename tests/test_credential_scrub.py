"""Credentials kept out of what Luthien stores, shows and publishes (controlplane/credentials.py,
luthien/logs.py): query-string credentials in paths, key-shaped strings in decisions, errors and
activity events, tokens in forwarded sign-in answers, the policy's recording redaction applied
to activity, and third-party loggers that print headers kept at WARNING.

The end-to-end checks (a real proxy, HTTP/2 clients, PostgreSQL, Redis and the dashboard) are in
tests/test_security.py."""

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from addon.call_trace import CallTrace
from addon.metrics import ProxyMetrics
from controlplane.credentials import _SCRUBS, REDACTED, redact_query, scrub_body, scrub_credentials
from controlplane.local import ControlPlaneLocal
from controlplane.models import ActivityEvent, ActivityType, RequestMetadata
from controlplane.policies import NoOpPolicy
from controlplane.policies.secret_redaction import DETECTORS
from controlplane.policy_file import policy_from_document
from controlplane.recording.records import CallOutcome, CallRecord, Decision
from controlplane.recording.redact import redact_record
from controlplane.storage.base import CallSummary
from tests.conftest import ROOT
from tests.control_planes import Kind, control_plane_for, published
from tests.test_stream_relay import pieces, provider_stream, run_relay
from tests.test_tool_policies import response_with

OPENAI_KEY = "sk-canary-" + uuid.uuid4().hex
GOOGLE_KEY = "AIzaSy" + uuid.uuid4().hex + "Q"  # AIza and 35 characters

# --- query strings ----------------------------------------------------------------------------

QUERIES = {
    # Gemini's key, the SDK's streaming path
    f"/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse&key={GOOGLE_KEY}": (
        f"/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse&key={REDACTED}"
    ),
    "/v1/x?API_KEY=a1&api-key=a2&apikey=a3&ApiKey=a4": (
        f"/v1/x?API_KEY={REDACTED}&api-key={REDACTED}&apikey={REDACTED}&ApiKey={REDACTED}"
    ),
    "/v1/x?access_token=t1&token=t2&Token=t3&refresh_token=t4&id_token=t5": (
        f"/v1/x?access_token={REDACTED}&token={REDACTED}&Token={REDACTED}"
        f"&refresh_token={REDACTED}&id_token={REDACTED}"
    ),
    "/cb?code=c1&state=s&client_secret=c2&sig=c3&Signature=c4&X-Amz-Signature=c5": (
        f"/cb?code={REDACTED}&state=s&client_secret={REDACTED}&sig={REDACTED}"
        f"&Signature={REDACTED}&X-Amz-Signature={REDACTED}"
    ),
    "/v1/x?%6Bey=encoded-name&KEY=upper": f"/v1/x?%6Bey={REDACTED}&KEY={REDACTED}",
    "/v1/x?key=a;token=b": f"/v1/x?key={REDACTED};token={REDACTED}",
}
UNCHANGED = [
    "/v1/chat/completions",
    "/v1/models?limit=20&after=model-x&order=desc",
    "/v1/responses?stream=true&include[]=reasoning.encrypted_content",
    "/v1/x?key=",  # nothing to hide
    "/v1/x?keyword=k&monkey=m",  # names that only contain a credential word
    f"/v1/x?key={REDACTED}",  # already redacted: unchanged (redaction is idempotent)
]


@pytest.mark.parametrize(("path", "expected"), QUERIES.items())
def test_credential_query_parameters_lose_their_values(path: str, expected: str) -> None:
    assert redact_query(path) == expected
    assert redact_query(expected) == expected


@pytest.mark.parametrize("path", UNCHANGED)
def test_other_paths_are_unchanged(path: str) -> None:
    assert redact_query(path) == path


def _record(**fields: Any) -> CallRecord:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "call_id": uuid.uuid4().hex,
        "started_at": now,
        "finished_at": now,
        "method": "POST",
        "host": "generativelanguage.googleapis.com",
        "path": f"/v1beta/models/g:generateContent?key={GOOGLE_KEY}",
        "outcome": CallOutcome.COMPLETED,
    }
    return CallRecord(**(values | fields))


def test_the_models_redact_the_path_themselves() -> None:
    path = f"/v1beta/models/g:generateContent?key={GOOGLE_KEY}"
    expected = f"/v1beta/models/g:generateContent?key={REDACTED}"
    assert RequestMetadata(call_id="c", host="h", path=path).path == expected
    record = _record(path=path)
    assert record.path == expected
    # Read back (the storage rebuilds records and summaries from rows), also from a row stored
    # before the model redacted it.
    assert CallRecord.model_validate_json(record.model_dump_json().replace(expected, path)).path == expected
    summary = {
        **{k: getattr(record, k) for k in ("call_id", "started_at", "method", "host", "stream", "outcome")},
        **{"duration_ms": 1.0, "ttfb_ms": None, "wire_format": None, "model": None, "agent": None},
        **{"user_id": None, "status": 200, "blocked": False, "request_modified": False},
        **{"response_modified": False, "usage": None, "decision_count": 0, "preview": ""},
        **{"session_id": None, "cost_usd": None},
    }
    assert CallSummary(**summary, path=path).path == expected


# --- free text: decisions, errors, activity ----------------------------------------------------

SHAPES = {
    "openai": OPENAI_KEY,
    "openai_project": "sk-proj-" + "A1b2C3d4" * 6,
    "anthropic": "sk-ant-api03-" + "x1Y2z3" * 8,
    "google": GOOGLE_KEY,
    "aws": "AKIA" + "IOSFODNN7EXAMPLE",
    "github": "ghp_" + "a1B2" * 9,
    "slack": "xoxb-1234567890-abcdefghij",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV",
    "private_key": "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA"
    + "q" * 64
    + "\n-----END RSA PRIVATE KEY-----",
}
CONTEXTS = {
    "bearer": ("curl -H 'Authorization: Bearer opaque-token-value' x", "opaque-token-value"),
    "basic": ("authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
    "x-api-key": ('{"x-api-key": "plain-value-1"}', "plain-value-1"),
    "assignment": ("export OPENAI_API_KEY=not-key-shaped-at-all", "not-key-shaped-at-all"),
    "json": ('{"db_password": "hunter2hunter2"}', "hunter2hunter2"),
    "url": (f"fetch https://generativelanguage.googleapis.com/v1/m?alt=sse&key=xyz{GOOGLE_KEY[:5]}", "xyz"),
    "form": ("grant_type=authorization_code&code=one-time-code&client_secret=s3cr3t", "one-time-code"),
}
PLAIN = [
    "redacted 2 secrets (openai_api_key, private_key)",
    "max_tokens: 1024, total_tokens=3000, tokens left",
    "the authorization header is missing; basic understanding of the task",
    'Blocked the tool call `bash` ({"command": "rm -rf /"}): matched rm\\s+-rf.',
    "policy error in ToolCallJudgePolicy (stream_policy): TimeoutError",
    "task-manager-process-list-for-the-skeleton-key-holder",
    "claude-sonnet-4-5-20250929",
]


@pytest.mark.parametrize("kind", SHAPES)
def test_key_shaped_strings_are_scrubbed(kind: str) -> None:
    secret = SHAPES[kind]
    text = f"Blocked the tool call `bash` ({json.dumps({'command': f'use {secret} now'})})"
    scrubbed = scrub_credentials(text)
    assert secret not in scrubbed and REDACTED in scrubbed and scrubbed.startswith("Blocked the tool call")
    assert scrub_credentials(scrubbed) == scrubbed


#: Credentials in plain words, with no ``:`` or ``=`` near them.
BARE = {
    **SHAPES,
    "aws_session": "ASIA" + "IOSFODNN7EXAMPLE",
    "bearer": "Bearer opaque-token-value",
    "basic": "Basic dXNlcjE2MzQ1",
    "basic_long_s": "ba\u017fic dXNlcjE2MzQ1",  # matches "basic" case-insensitively
}


@pytest.mark.parametrize("kind", BARE)
def test_a_bare_key_is_scrubbed(kind: str) -> None:
    scrubbed = scrub_credentials(f"use {BARE[kind]} now")
    assert BARE[kind] not in scrubbed and REDACTED in scrubbed


def _every_scrub(text: str) -> str:
    for pattern, replacement in _SCRUBS:
        text = pattern.sub(replacement, text)
    return text


# Bits of every key shape and context, and letters that match others case-insensitively.
_SCRUB_BITS = [
    *SHAPES.values(),
    *(text for text, _ in CONTEXTS.values()),
    *PLAIN,
    *("sk-", "AIza", "AKIA", "ghp_", "github_pat_", "xoxb-", "eyJ", "-----BEGIN ", "PRIVATE KEY-----"),
    *BARE.values(),
    "BEARER\tabcd",
    *("Bearer ", "Basic ", "token", "key", "=", ":", " ", "\n", "a1B2c3D4e5"),
    *("\u0130", "\u0131", "\u212a", "x", "_", "-", ".", "/", "?", "&", "'", '"'),
]
_scrub_text = st.lists(st.sampled_from(_SCRUB_BITS), max_size=12).map("".join)


@settings(max_examples=500, deadline=None)
@given(text=_scrub_text)
def test_the_quick_check_never_skips_a_scrub(text: str) -> None:
    """A text the one search finds nothing in is one no scrub would change."""
    assert scrub_credentials(text) == _every_scrub(text)


@pytest.mark.parametrize("kind", CONTEXTS)
def test_credentials_named_by_their_context_are_scrubbed(kind: str) -> None:
    text, secret = CONTEXTS[kind]
    scrubbed = scrub_credentials(text)
    assert secret not in scrubbed and REDACTED in scrubbed
    assert scrub_credentials(scrubbed) == scrubbed


@pytest.mark.parametrize("text", PLAIN)
def test_ordinary_text_is_unchanged(text: str) -> None:
    assert scrub_credentials(text) == text


def test_every_key_shape_secret_redaction_knows_is_scrubbed() -> None:
    """The scrub's own patterns (no import of the policies from the models) cover every key
    shape of SecretRedactionPolicy's detectors, and more loosely (any ``sk-`` key)."""
    examples = {
        "anthropic_api_key": SHAPES["anthropic"],
        "openai_api_key": SHAPES["openai_project"],
        "aws_access_key_id": SHAPES["aws"],
        "aws_secret_access_key": "aws_secret_access_key = " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "github_token": SHAPES["github"],
        "slack_token": SHAPES["slack"],
        "google_api_key": SHAPES["google"],
        "private_key": SHAPES["private_key"],
        "jwt": SHAPES["jwt"],
        "secret_assignment": "GITHUB_TOKEN=abcd1234efgh",
    }
    assert set(examples) == set(DETECTORS)
    for kind, example in examples.items():
        match = DETECTORS[kind].compiled().search(example)
        assert match is not None, kind
        secret = match.group("secret") if "secret" in match.re.groupindex else match.group()
        assert secret not in scrub_credentials(example), kind


def test_decisions_and_errors_are_scrubbed_by_the_record_model() -> None:
    reason = f'[Luthien] Blocked the tool call `bash` ({{"command": "curl -H \'x-api-key: {OPENAI_KEY}\'"}})'
    decision = Decision(
        stage="stream",
        allowed=True,
        reason=reason,
        metadata={"arguments": f'{{"k": "{OPENAI_KEY}"}}', "n": 1},
    )
    record = _record(decisions=[decision], error=f"upstream said: bad key {OPENAI_KEY}")
    assert OPENAI_KEY not in record.model_dump_json()
    assert record.decisions[0].metadata["n"] == 1 and "Blocked the tool call `bash`" in str(
        record.decisions[0].reason
    )


def test_policed_bodies_are_left_to_the_policy_but_passthrough_bodies_are_scrubbed() -> None:
    answer = {"access_token": "opaque-access", "token_type": "Bearer", "expires_in": 3600}
    answer |= {"raw_key": SHAPES["anthropic"], "account": {"email": "a@example.com", "refresh_token": "r"}}
    body = {"messages": [{"role": "user", "content": f"my key is {OPENAI_KEY}"}]}
    policed = _record(original_request=body, original_response=answer)
    assert policed.original_request == body and policed.original_response == answer  # recorded as sent
    forwarded = _record(outcome=CallOutcome.PASSTHROUGH, original_request=body, final_response=answer)
    stored = forwarded.model_dump_json()
    for secret in (OPENAI_KEY, "opaque-access", SHAPES["anthropic"], '"r"'):
        assert secret not in stored
    assert (
        forwarded.final_response["token_type"] == "Bearer" and forwarded.final_response["expires_in"] == 3600
    )
    assert forwarded.final_response["account"]["email"] == "a@example.com"
    assert (
        scrub_body("grant_type=refresh_token&refresh_token=abc123")
        == f"grant_type=refresh_token&refresh_token={REDACTED}"
    )


def test_activity_events_scrub_themselves() -> None:
    event = ActivityEvent(
        call_id="c",
        type=ActivityType.BLOCKED,
        model=f"gpt-4o {OPENAI_KEY}",
        data={"reason": f"bad {OPENAI_KEY}", "nested": {"list": [f"Bearer {GOOGLE_KEY}", 3]}, "status": 403},
    )
    dumped = event.model_dump_json()
    assert OPENAI_KEY not in dumped and GOOGLE_KEY not in dumped
    assert event.data["status"] == 403 and event.data["nested"]["list"][1] == 3
    # Read back from a bus (Redis stores the JSON): scrubbed again, unchanged.
    assert ActivityEvent.model_validate_json(dumped) == event


def test_a_key_shaped_model_name_is_no_metrics_label() -> None:
    """``/metrics`` is unauthenticated, and the client names the model."""
    metrics = ProxyMetrics()
    metadata = RequestMetadata(call_id="c", host="api.openai.com", path="/v1/chat/completions")
    metadata.model = f"gpt-4o {OPENAI_KEY}"
    metrics.call_finished(CallTrace("POST", [], metadata))
    exported = generate_latest(metrics.registry).decode()
    assert OPENAI_KEY not in exported and f'model="gpt-4o {REDACTED}"' in exported


# --- a blocked tool call's arguments, through the control plane --------------------------------

BLOCKLIST = {"class": "ToolCallBlocklistPolicy", "config": {"patterns": [r"rm\s+-rf"]}}
CORP_SECRET = "corp-" + uuid.uuid4().hex[:16]
WITH_REDACTION = {
    "class": "SerialPolicy",
    "config": {
        "policies": [
            {
                "class": "SecretRedactionPolicy",
                "config": {"extra_patterns": [{"kind": "corp", "pattern": r"corp-[0-9a-f]{16}"}]},
            },
            BLOCKLIST,
        ]
    },
}


def _texts(events: list[ActivityEvent]) -> str:
    return "\n".join(event.model_dump_json() for event in events)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses", "/v1/messages"])
async def test_a_blocked_stream_tool_call_publishes_no_key(path: str, control_plane_kind: Kind) -> None:
    policy = policy_from_document({"policy": BLOCKLIST}, "test")
    stream = provider_stream(path, f"tool_call rm -rf / --api-key {OPENAI_KEY}")
    async with control_plane_for(policy, control_plane_kind) as control_plane:
        out = await run_relay(control_plane, path, pieces(stream, 3))
        events = await published(control_plane)
    assert OPENAI_KEY in out.decode()  # the agent is told what was blocked, arguments included
    decisions = [e for e in events if e.type is ActivityType.STREAM_POLICY]
    assert decisions and decisions[0].data["blocked_tool"] == "bash"
    assert "rm -rf /" in decisions[0].data["arguments"] and REDACTED in decisions[0].data["arguments"]
    assert OPENAI_KEY not in _texts(events)


async def test_a_blocked_response_tool_call_publishes_no_key(control_plane_kind: Kind) -> None:
    policy = policy_from_document({"policy": BLOCKLIST}, "test")
    metadata = RequestMetadata(call_id="c", host="api.openai.com", path="/v1/chat/completions")
    async with control_plane_for(policy, control_plane_kind) as control_plane:
        result = await control_plane.apply_response_policy(
            response_with(f"rm -rf / --token {OPENAI_KEY}"), metadata
        )
        events = await published(control_plane)
    assert result.reason is not None and OPENAI_KEY in result.reason  # the agent's note, as before
    assert any(e.type is ActivityType.RESPONSE_POLICY for e in events)
    assert OPENAI_KEY not in _texts(events)


async def test_activity_gets_the_policys_recording_redaction(control_plane_kind: Kind) -> None:
    """A secret only the policy knows (an extra pattern, not key-shaped) is redacted in the
    activity as in the record; with the policy's own marker."""
    policy = policy_from_document({"policy": WITH_REDACTION}, "test")
    path = "/v1/chat/completions"
    stream = provider_stream(path, f"tool_call rm -rf / {CORP_SECRET}")
    async with control_plane_for(policy, control_plane_kind) as control_plane:
        await run_relay(control_plane, path, pieces(stream, 5))
        events = await published(control_plane)
    texts = _texts(events)
    assert CORP_SECRET not in texts and "[secret not recorded: corp]" in texts
    decision = Decision(stage="stream", allowed=True, reason=f"blocked {CORP_SECRET}")
    stored = redact_record(_record(decisions=[decision]), policy.redact_for_recording)
    assert CORP_SECRET not in stored.model_dump_json()


class RedactionFails(NoOpPolicy):
    """A policy of one's own whose recording redaction raises."""

    def redact_for_recording(self, text: str) -> str:
        raise RuntimeError("redaction broke")


async def test_a_policy_whose_redaction_fails_publishes_no_details() -> None:
    control_plane = ControlPlaneLocal(RedactionFails())
    await control_plane.publish_activity(
        ActivityEvent(call_id="c", type=ActivityType.BLOCKED, data={"reason": f"blocked {CORP_SECRET}"})
    )
    (event,) = [item.event for item in await control_plane.bus.recent(10)]
    assert CORP_SECRET not in event.model_dump_json() and "withheld" in event.data["reason"]


# --- logging ------------------------------------------------------------------------------------

LOGGING_PROBE = """
import logging, sys
from luthien.logs import configure_logging
secret = sys.argv[1]
configure_logging("DEBUG")
logging.getLogger("hpack.hpack").debug("Decoded (b'authorization', b'Bearer %s')", secret)
logging.getLogger("websockets.client").debug("> authorization: Bearer %s", secret)
logging.getLogger("httpx").info("HTTP Request: GET https://x/?key=%s", secret)
own = logging.getLogger("some.library")
own.setLevel(logging.DEBUG)  # a library that sets its own level
own.debug("header %s", secret)
logging.getLogger().info("root %s", secret)
import litellm._logging
logging.getLogger("LiteLLM").debug("litellm %s", secret)
logging.getLogger("hpack").warning("a library warning is still shown")
logging.getLogger("controlplane.local").debug("luthien debug line")
logging.getLogger("addon.pipeline").info("luthien info line")
"""


def test_only_luthiens_own_loggers_go_below_warning() -> None:
    secret = "sk-canary-" + uuid.uuid4().hex
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MODE": "PRODUCTION", "LITELLM_LOG": "DEBUG"}
    done = subprocess.run(
        [sys.executable, "-c", LOGGING_PROBE, secret],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert secret not in output
    assert "a library warning is still shown" in output
    assert "DEBUG controlplane.local: luthien debug line" in output
    assert "INFO addon.pipeline: luthien info line" in output
    assert "DEBUG luthien.logs: Luthien logs at DEBUG" in output
