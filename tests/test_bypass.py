"""What a policy cannot see does not pass: the acceptance tests of the bypass classes.

Each test drives a real ``luthien proxy`` process through raw TLS (``tests/raw_client.py``:
CONNECT any target, any SNI, any bytes; HTTP/2 with any ``:authority``) and checks what the fake
provider received, verbatim, and what the client got. The fake is scripted per request
(``FakeProvider.script``), matched on a probe header each request carries, so the shared
session fake never answers another test's request with a script of ours.

The proxies (one per policy, for this module): ``noop``, ``blocklist`` (``rm\\s+-rf``),
``secrets`` (SecretRedactionPolicy on requests and responses) and ``refuse`` (NoOp with
``--unknown-endpoints refuse``).
"""

from __future__ import annotations

import json
import random
import re
import socket
import sqlite3
import ssl
import string
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from addon.endpoints import ENDPOINTS, Endpoint, Family, Treatment
from controlplane.models import WireFormat
from tests import test_real_agents as agents
from tests.conftest import RunningProxy, running_proxies
from tests.fake_provider import FakeProvider, RecordedRequest, ScriptedReply, matching
from tests.raw_client import RawResponse, TlsTunnel, http1_bytes, raw_h2_request, raw_request
from tests.scripted import (
    anthropic_block,
    anthropic_citation,
    anthropic_events,
    anthropic_message,
    anthropic_stream_lines,
    chat_choice,
    chat_chunk,
    chat_completion,
    chat_delta,
    chat_stream_chunks,
    chat_stream_lines,
    chat_tool_call,
    dumps,
    frame,
    message_item,
    parse_sse,
    responses_events,
    responses_item,
    responses_object,
    responses_stream_lines,
    sdk_parse,
    sse_json,
)

OPENAI, ANTHROPIC, GOOGLE = "api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com"
PROVIDERS = (OPENAI, ANTHROPIC)
PROBE = "x-bypass-probe"
DEFAULT = "\x00default"  # a name no test spells: "the host given"
DANGER = "rm -rf /"
SAFE = "ls"
BLOCKED_RE = re.compile(r"rm\s+-rf")
NOTE = "[Luthien] Blocked the tool call"
SECRET = "sk-ant-api03-" + "".join(random.choices(string.ascii_letters + string.digits, k=40))
SETTINGS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

POLICIES: dict[str, tuple[dict[str, Any] | None, list[str]]] = {
    "bypass-noop": (None, []),
    "bypass-blocklist": ({"class": "ToolCallBlocklistPolicy", "config": {"patterns": [r"rm\s+-rf"]}}, []),
    "bypass-secrets": ({"class": "SecretRedactionPolicy", "config": {"redact_responses": True}}, []),
    "bypass-refuse": (None, ["--unknown-endpoints", "refuse"]),
}


@pytest.fixture(scope="module")
def bypass_proxies(
    fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, RunningProxy]]:
    root = tmp_path_factory.mktemp("bypass")
    with running_proxies(POLICIES, fake, root) as running:
        yield running


@pytest.fixture(scope="module")
def noop(bypass_proxies: dict[str, RunningProxy]) -> RunningProxy:
    return bypass_proxies["bypass-noop"]


@pytest.fixture(scope="module")
def blocklist(bypass_proxies: dict[str, RunningProxy]) -> RunningProxy:
    return bypass_proxies["bypass-blocklist"]


@pytest.fixture(scope="module")
def secrets_proxy(bypass_proxies: dict[str, RunningProxy]) -> RunningProxy:
    return bypass_proxies["bypass-secrets"]


@pytest.fixture(scope="module")
def refuse(bypass_proxies: dict[str, RunningProxy]) -> RunningProxy:
    return bypass_proxies["bypass-refuse"]


# --- Helpers ---------------------------------------------------------------------------------

#: Google's credential, sent to Google's host only (the fake answers the models list in the
#: format of the credential it is given).
_GOOGLE_KEY = [("x-goog-api-key", "AIza-test-key")]


class Call:
    """One request through the proxy, tagged with a probe header so that what the fake received
    for it (and only for it) can be found, and so that a script answers only it."""

    def __init__(self, fake: FakeProvider) -> None:
        self.fake = fake
        self.probe = uuid.uuid4().hex
        self.before = len(fake.requests)

    def script(self, reply: ScriptedReply) -> None:
        self.fake.script(reply, matching(header=(PROBE, self.probe)))

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [
            (PROBE, self.probe),
            ("authorization", "Bearer sk-test-key"),
            ("x-api-key", "sk-ant-test-key"),
        ]

    def upstream(self) -> list[RecordedRequest]:
        """What the fake received for this call."""
        return [r for r in self.fake.requests if r.headers.get(PROBE) == self.probe]

    def nothing_upstream(self) -> bool:
        """The fake received nothing at all since this call began (not just nothing tagged)."""
        time.sleep(0.05)
        return self.upstream() == [] and len(self.fake.requests) == self.before

    def received(self) -> RecordedRequest:
        got = self.upstream()
        assert len(got) == 1, f"the fake received {len(got)} requests for this call"
        return got[0]

    def http1(
        self,
        proxy: RunningProxy,
        method: str,
        path: str,
        host: str,
        body: Any = None,
        *,
        connect: str | None = None,
        sni: str | None = DEFAULT,
        host_header: str | None = DEFAULT,
        extra_headers: list[tuple[str, str]] | None = None,
    ) -> RawResponse:
        """``body``: bytes as they are, anything else as JSON; ``connect``, ``sni`` and
        ``host_header`` default to ``host`` (None: no SNI, no Host header)."""
        raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        request = http1_bytes(
            method,
            path,
            host if host_header is DEFAULT else host_header,
            raw,
            [*self.headers, *(_GOOGLE_KEY if host == GOOGLE else []), *(extra_headers or [])],
        )
        server_name = host if sni is DEFAULT else sni
        return raw_request(proxy.port, proxy.bundle, connect or f"{host}:443", server_name, request)

    def h2(
        self,
        proxy: RunningProxy,
        method: str,
        path: str,
        authority: str,
        body: Any = None,
        *,
        connect: str,
        sni: str | None,
    ) -> RawResponse:
        raw = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = [*self.headers, ("content-type", "application/json")] if raw else self.headers
        return raw_h2_request(
            proxy.port,
            proxy.bundle,
            connect,
            sni,
            method=method,
            authority=authority,
            path=path,
            headers=headers,
            body=raw,
        )


def host_of(family: Family) -> str:
    return {Family.ANTHROPIC: ANTHROPIC, Family.GOOGLE: GOOGLE}.get(family, OPENAI)


def provider_error(response: RawResponse, status: int | tuple[int, ...], *hosts: str) -> dict[str, Any]:
    """The response is ``status`` with a JSON error in the format of one of ``hosts``."""
    statuses = (status,) if isinstance(status, int) else status
    assert response.status in statuses, f"expected {statuses}, got {response.status}: {response.body[:500]!r}"
    body = json.loads(response.body)
    formats = []
    for host in hosts:
        if host == GOOGLE:
            error = body.get("error")
            formats.append(
                isinstance(error, dict)
                and error.get("code") == response.status
                and isinstance(error.get("message"), str)
                and isinstance(error.get("status"), str)
            )
        elif host == ANTHROPIC:
            formats.append(
                body.get("type") == "error"
                and isinstance(body.get("error"), dict)
                and isinstance(body["error"].get("type"), str)
                and isinstance(body["error"].get("message"), str)
            )
        else:
            formats.append(
                isinstance(body.get("error"), dict)
                and isinstance(body["error"].get("message"), str)
                and "type" in body["error"]
            )
    assert any(formats), f"not an error in the format of {hosts}: {body}"
    return body


def gemini_request(text: str, **extra: Any) -> dict[str, Any]:
    tool = {"functionDeclarations": [{"name": "bash", "parameters": {"type": "OBJECT"}}]}
    return {"contents": [{"role": "user", "parts": [{"text": text}]}], "tools": [tool], **extra}


def chat_request(text: str, stream: bool = False, **extra: Any) -> dict[str, Any]:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "bash",
                "parameters": {"type": "object", "properties": {"command": {"type": "string"}}},
            },
        }
    ]
    return {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": text}],
        "stream": stream,
        "tools": tools,
        **extra,
    }


def responses_request(text: str, stream: bool = False, **extra: Any) -> dict[str, Any]:
    tools = [
        {
            "type": "function",
            "name": "bash",
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}},
        }
    ]
    return {
        "model": "gpt-4o",
        "input": [{"role": "user", "content": text}],
        "stream": stream,
        "tools": tools,
        **extra,
    }


def messages_request(text: str, stream: bool = False, **extra: Any) -> dict[str, Any]:
    tools = [
        {"name": "bash", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}
    ]
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": text}],
        "stream": stream,
        "tools": tools,
        **extra,
    }


API = {
    "chat": (OPENAI, "/v1/chat/completions", chat_request),
    "responses": (OPENAI, "/v1/responses", responses_request),
    "messages": (ANTHROPIC, "/v1/messages", messages_request),
}


def ok(response: RawResponse) -> RawResponse:
    assert response.status == 200, f"{response.status}: {response.body[:1000]!r}"
    assert not response.closed_early, "the response was cut"
    return response


def dangerous(value: Any) -> bool:
    """``value`` (decoded, at any depth, JSON strings inside it decoded too) spells the command."""
    if isinstance(value, str):
        if BLOCKED_RE.search(value):
            return True
        try:
            inner = json.loads(value)
        except ValueError:
            return False
        return not isinstance(inner, str) and dangerous(inner)
    if isinstance(value, dict):
        return any(dangerous(v) for v in value.values())
    if isinstance(value, list):
        return any(dangerous(v) for v in value) or BLOCKED_RE.search(" ".join(map(str, value))) is not None
    return False


# --- Tool-call structure in what the client got -------------------------------------------------


def responses_items_in(body: bytes, stream: bool) -> list[dict[str, Any]]:
    """Every output item the client was shown: the whole response's output, or each item of
    ``output_item.added``/``.done`` and of ``response.completed``'s output."""
    if not stream:
        return list(json.loads(body).get("output") or [])
    items = []
    for _, data in sse_json(body):
        if not isinstance(data, dict):
            continue
        if isinstance(data.get("item"), dict):
            items.append(data["item"])
        if isinstance(data.get("response"), dict):
            items += data["response"].get("output") or []
    return items


def responses_tool_events(body: bytes, kind: str) -> list[dict[str, Any]]:
    """The stream's delta/done events that belong to a tool item of ``kind``."""
    prefix = {
        "function_call": "response.function_call_arguments.",
        "custom_tool_call": "response.custom_tool_call_input.",
        "mcp_call": "response.mcp_call_arguments.",
        "code_interpreter_call": "response.code_interpreter_call_code.",
    }.get(kind)
    return [
        data
        for _, data in sse_json(body)
        if isinstance(data, dict) and prefix and str(data.get("type", "")).startswith(prefix)
    ]


def chat_tool_parts(body: bytes, stream: bool) -> list[Any]:
    """Every tool call and legacy function call in any choice the client was shown."""
    parts: list[Any] = []
    if not stream:
        for choice in json.loads(body).get("choices") or []:
            message = choice.get("message") or {}
            parts += message.get("tool_calls") or []
            if message.get("function_call"):
                parts.append(message["function_call"])
        return parts
    for _, data in sse_json(body):
        if not isinstance(data, dict):
            continue
        for choice in data.get("choices") or []:
            delta = choice.get("delta") or {}
            parts += delta.get("tool_calls") or []
            if delta.get("function_call"):
                parts.append(delta["function_call"])
    return parts


def anthropic_blocks_in(body: bytes, stream: bool) -> list[dict[str, Any]]:
    """Every content block the client was shown (streamed: each ``content_block_start``, by data type)."""
    if not stream:
        return list(json.loads(body).get("content") or [])
    return [
        data["content_block"]
        for _, data in sse_json(body)
        if isinstance(data, dict)
        and data.get("type") == "content_block_start"
        and isinstance(data.get("content_block"), dict)
    ]


def anthropic_json_deltas(body: bytes) -> str:
    return "".join(
        data["delta"].get("partial_json", "")
        for _, data in sse_json(body)
        if isinstance(data, dict)
        and isinstance(data.get("delta"), dict)
        and data["delta"].get("type") == "input_json_delta"
    )


def last_event_type(body: bytes) -> Any:
    events = [data for _, data in sse_json(body)]
    assert events, "the stream is empty"
    last = events[-1]
    return last if last == "[DONE]" else last.get("type") if isinstance(last, dict) else last


def assert_valid_stream(api: str, body: bytes) -> None:
    """The stream ends as the API's streams end, and the official SDK accumulates it."""
    last = last_event_type(body)
    expected = {"chat": "[DONE]", "responses": "response.completed", "messages": "message_stop"}[api]
    assert last == expected, f"the stream ends with {last!r}, not {expected!r}"
    sdk_parse(api, body)


def assert_no_tool_call(api: str, body: bytes, stream: bool, kind: str) -> None:
    """The client was shown no tool item of ``kind`` carrying the command (the structure, not
    a substring: the block note quotes the arguments)."""
    if api == "responses":
        shown = [i for i in responses_items_in(body, stream) if i.get("type") == kind]
        assert shown == [], f"the client got the {kind} item: {shown}"
        assert responses_tool_events(body, kind) == [], f"the client got the {kind} deltas"
    elif api == "chat":
        assert chat_tool_parts(body, stream) == [], (
            f"the client got the tool call: {chat_tool_parts(body, stream)}"
        )
    else:
        shown = [b for b in anthropic_blocks_in(body, stream) if b.get("type") == kind]
        assert shown == [], f"the client got the {kind} block: {shown}"
        if stream:
            assert not BLOCKED_RE.search(anthropic_json_deltas(body)), "the client got the input deltas"


def streamed_text(api: str, body: bytes) -> str:
    """The text the client was shown in a stream (all choices, blocks, items)."""
    out = []
    for _, data in sse_json(body):
        if not isinstance(data, dict):
            continue
        if api == "chat":
            for choice in data.get("choices") or []:
                out.append((choice.get("delta") or {}).get("content") or "")
        elif api == "responses" and data.get("type") == "response.output_text.delta":
            out.append(data.get("delta", ""))
        elif api == "messages" and isinstance(data.get("delta"), dict):
            out.append(data["delta"].get("text", ""))
    return "".join(out)


def calls_rows(proxy: RunningProxy, path: str, timeout: float = 10) -> list[dict[str, Any]]:
    """The proxy's recorded calls for ``path`` (recording is asynchronous: polled)."""
    db = proxy.database_url.removeprefix("sqlite://")
    deadline = time.monotonic() + timeout
    while True:
        if Path(db).exists():
            with sqlite3.connect(db) as conn:
                conn.row_factory = sqlite3.Row
                try:
                    rows = [
                        dict(r) for r in conn.execute("SELECT * FROM calls WHERE path LIKE ?", (path + "%",))
                    ]
                except sqlite3.OperationalError:
                    rows = []
            if rows or time.monotonic() > deadline:
                return rows
        elif time.monotonic() > deadline:
            return []
        time.sleep(0.2)


def assert_serving(proxy: RunningProxy, fake: FakeProvider) -> None:
    """A plain policed request on a new connection still gets its answer."""
    call = Call(fake)
    response = ok(call.http1(proxy, "POST", "/v1/chat/completions", OPENAI, chat_request("hello")))
    assert json.loads(response.body)["choices"][0]["message"]["content"]
    call.received()


@pytest.fixture(autouse=True)
def _no_script_left(fake: FakeProvider) -> Iterator[None]:
    with fake.scripted():
        yield


# =============================================================================================
# Class 1. Host spelling: CONNECT target, SNI and Host / :authority, canonicalised and agreeing
# =============================================================================================


def _spelled(draw: st.DrawFn, name: str) -> str:
    """``name`` in random case, perhaps with a trailing dot."""
    cased = "".join(c.upper() if draw(st.booleans()) else c for c in name)
    return cased + ("." if draw(st.booleans()) else "")


def _canonical(name: str) -> str:
    return name.lower().rstrip(".")


@st.composite
def destinations(draw: st.DrawFn) -> tuple[str, str | None, str]:
    """A (CONNECT host, SNI, Host header) triple of which the CONNECT target or the SNI names a
    provider (otherwise the proxy cannot read the Host header without decrypting a host that is
    not a provider's), each spelled in its own way."""
    provider = draw(st.sampled_from(PROVIDERS))
    other = ANTHROPIC if provider == OPENAI else OPENAI

    def name(kinds: list[str]) -> str | None:
        kind = draw(st.sampled_from(kinds))
        return {
            "provider": lambda: _spelled(draw, provider),
            "other_provider": lambda: _spelled(draw, other),
            "other_host": lambda: draw(
                st.sampled_from(["example.com", "evil.test", "api.openai.com.evil.test"])
            ),
            "ip": lambda: "127.0.0.1",
            "none": lambda: None,
        }[kind]()

    weighted = ["provider", "provider", "provider", "other_provider", "other_host", "ip"]
    connect = name(weighted)
    sni = name(["provider", "provider", "provider", "other_provider", "other_host", "none"])
    host = name(weighted)
    assert connect is not None and host is not None
    if not any(n is not None and _canonical(n) in PROVIDERS for n in (connect, sni)):
        connect = _spelled(draw, provider)
    return connect, sni, host


@SETTINGS
@given(names=destinations(), port_in_host=st.booleans())
def test_host_spellings_that_agree_are_policed_and_any_disagreement_is_refused_with_421(
    blocklist: RunningProxy, fake: FakeProvider, names: tuple[str, str | None, str], port_in_host: bool
) -> None:
    connect, sni, host = names
    note(f"CONNECT {connect!r}, SNI {sni!r}, Host {host!r}, port in Host {port_in_host}")
    canonical = {_canonical(n) for n in (connect, sni, host) if n is not None}
    target = next(iter(canonical)) if len(canonical) == 1 else None
    body_host = (
        target
        if target in PROVIDERS
        else next(n for n in map(_canonical, (host, connect, sni or "")) if n in PROVIDERS)
    )
    path, make = (API["messages"] if body_host == ANTHROPIC else API["chat"])[1:]
    call = Call(fake)
    response = call.http1(
        blocklist,
        "POST",
        path,
        body_host,
        make(f"[scenario:tool_call {DANGER}]"),
        connect=f"{connect}:443",
        sni=sni,
        host_header=host + (":443" if port_in_host else ""),
    )
    if target in PROVIDERS:
        ok(response)
        assert call.received().path == path
        api = "messages" if target == ANTHROPIC else "chat"
        assert_no_tool_call(api, response.body, False, "tool_use")
    else:
        provider_error(response, 421, *sorted(canonical & set(PROVIDERS)))
        assert call.nothing_upstream(), "a request whose destination names disagree reached the provider"


@st.composite
def authorities(draw: st.DrawFn) -> tuple[str, str, str]:
    provider = draw(st.sampled_from(PROVIDERS))
    other = ANTHROPIC if provider == OPENAI else OPENAI
    authority = draw(st.sampled_from(["same", "same_port", "other_provider", "other_host", "ip", "ip_port"]))
    spelled = {
        "same": lambda: _spelled(draw, provider),
        "same_port": lambda: _spelled(draw, provider) + ":443",
        "other_provider": lambda: _spelled(draw, other),
        "other_host": lambda: "example.com",
        "ip": lambda: "127.0.0.1",
        "ip_port": lambda: "127.0.0.1:443",
    }[authority]()
    return provider, _spelled(draw, provider), spelled


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=authorities())
def test_http2_authority_must_agree_with_the_sni_of_the_connection(
    blocklist: RunningProxy, fake: FakeProvider, case: tuple[str, str, str]
) -> None:
    provider, sni, authority = case
    note(f"CONNECT {provider}, SNI {sni!r}, :authority {authority!r}")
    path, make = (API["messages"] if provider == ANTHROPIC else API["chat"])[1:]
    call = Call(fake)
    response = call.h2(
        blocklist,
        "POST",
        path,
        authority,
        make(f"[scenario:tool_call {DANGER}]"),
        connect=f"{provider}:443",
        sni=sni,
    )
    named = _canonical(authority.removesuffix(":443"))
    if named == provider:
        ok(response)
        call.received()
        assert_no_tool_call("messages" if provider == ANTHROPIC else "chat", response.body, False, "tool_use")
    else:
        provider_error(response, 421, *sorted({provider, named} & set(PROVIDERS)))
        assert call.nothing_upstream()


@pytest.mark.parametrize(
    ("connect", "sni", "host"),
    [
        ("127.0.0.1:443", OPENAI, OPENAI),  # an IP address as CONNECT target, a provider SNI
        ("127.0.0.1:443", ANTHROPIC, ANTHROPIC),
        (f"{OPENAI}:443", OPENAI, ANTHROPIC),  # a Host header naming the other provider
        (f"{ANTHROPIC}:443", None, OPENAI),  # no SNI
        (f"{OPENAI}:443", ANTHROPIC, OPENAI),
        ("example.com:443", OPENAI, OPENAI),
    ],
)
def test_the_listed_host_disagreements_get_421_and_nothing_upstream(
    blocklist: RunningProxy, fake: FakeProvider, connect: str, sni: str | None, host: str
) -> None:
    call = Call(fake)
    path, make = (API["messages"] if host == ANTHROPIC else API["chat"])[1:]
    response = call.http1(blocklist, "POST", path, host, make("hello"), connect=connect, sni=sni)
    provider_error(response, 421, *{n for n in (connect.rsplit(":", 1)[0], sni, host) if n in PROVIDERS})
    assert call.nothing_upstream()


@pytest.mark.parametrize(
    ("first", "second"), [(OPENAI, ANTHROPIC), (OPENAI, "example.com"), (OPENAI, "API.OPENAI.COM.")]
)
def test_a_second_host_header_is_refused_unless_it_names_the_same_host(
    blocklist: RunningProxy, fake: FakeProvider, first: str, second: str
) -> None:
    call = Call(fake)
    body = chat_request(f"[scenario:tool_call {DANGER}]")
    response = call.http1(
        blocklist, "POST", "/v1/chat/completions", first, body, extra_headers=[("Host", second)]
    )
    if _canonical(second) == first and response.status == 200:
        call.received()
        assert_no_tool_call("chat", response.body, False, "function")
        return
    assert response.status in (400, 421), f"{response.status}: {response.body[:300]!r}"
    assert call.nothing_upstream()


@pytest.mark.parametrize(
    "target",
    [
        f"https://{ANTHROPIC}/v1/messages",
        "https://example.com/v1/chat/completions",
        "https://127.0.0.1/v1/chat/completions",
        f"https://{OPENAI.upper()}./v1/chat/completions",
        f"https://{OPENAI}:443/v1/chat/completions",
    ],
)
def test_an_absolute_form_request_target_is_refused_or_policed_never_forwarded_around_policy(
    blocklist: RunningProxy, fake: FakeProvider, target: str
) -> None:
    """``POST https://host/path HTTP/1.1`` inside a tunnel names the destination a fourth time:
    refused when it disagrees (421/400), or ignored, the request then policed as a request to
    the tunnel's host (sent upstream in origin form, so the provider cannot route by it)."""
    call = Call(fake)
    path = "/" + target.split("/", 3)[3]
    body = (messages_request if path == "/v1/messages" else chat_request)(f"[scenario:tool_call {DANGER}]")
    response = call.http1(blocklist, "POST", target, OPENAI, body)
    if response.status in (400, 421):
        provider_error(response, (400, 421), OPENAI, ANTHROPIC)
        assert call.nothing_upstream()
        return
    ok(response)
    assert call.received().path == path, "the provider must get the path in origin form"
    assert_no_tool_call("messages" if path == "/v1/messages" else "chat", response.body, False, "tool_use")


# =============================================================================================
# Class 2. Reading back what policy removed: stored outputs are policed, stored inputs refused
# =============================================================================================


def test_a_stored_response_read_back_whole_loses_the_blocked_function_call(
    blocklist: RunningProxy, fake: FakeProvider
) -> None:
    call = Call(fake)
    call.script(ScriptedReply.json(responses_object([responses_item("function_call", DANGER)])))
    response = ok(call.http1(blocklist, "GET", "/v1/responses/resp_abc123", OPENAI))
    assert call.received().path == "/v1/responses/resp_abc123"
    assert_no_tool_call("responses", response.body, False, "function_call")


def test_a_stored_response_read_back_as_a_stream_loses_the_blocked_function_call(
    blocklist: RunningProxy, fake: FakeProvider
) -> None:
    call = Call(fake)
    stream = frame(responses_stream_lines(responses_events([responses_item("function_call", DANGER)])))
    call.script(ScriptedReply.sse(stream))
    response = ok(call.http1(blocklist, "GET", "/v1/responses/resp_abc123?stream=true", OPENAI))
    assert call.received().path == "/v1/responses/resp_abc123?stream=true"
    assert_no_tool_call("responses", response.body, True, "function_call")
    assert_valid_stream("responses", response.body)


def test_a_stored_chat_completion_read_back_loses_the_blocked_tool_call(
    blocklist: RunningProxy, fake: FakeProvider
) -> None:
    call = Call(fake)
    stored = chat_completion([chat_choice(0, {"tool_calls": [chat_tool_call(DANGER)]}, "tool_calls")])
    call.script(ScriptedReply.json(stored))
    response = ok(call.http1(blocklist, "GET", "/v1/chat/completions/chatcmpl_abc123", OPENAI))
    call.received()
    assert_no_tool_call("chat", response.body, False, "function")


REFUSED_READS = [
    ("GET", "/v1/chat/completions", OPENAI),
    ("GET", "/v1/chat/completions?limit=10", OPENAI),
    ("GET", "/v1/responses/resp_abc123/input_items", OPENAI),
    ("GET", "/v1/chat/completions/chatcmpl_abc123/messages", OPENAI),
    ("GET", "/v1/messages/batches", ANTHROPIC),
    ("GET", "/v1/messages/batches/msgbatch_1/results", ANTHROPIC),
    ("POST", "/v1/messages/batches", ANTHROPIC),
    ("DELETE", "/v1/messages/batches/msgbatch_1", ANTHROPIC),
    ("GET", "/v1/files/file_1/content", OPENAI),
    ("POST", "/v1/files", OPENAI),
    ("GET", "/v1/files/file_1/content", ANTHROPIC),
    ("GET", "/v1/batches/batch_1", OPENAI),
    ("POST", "/v1/batches", OPENAI),
]


@pytest.mark.parametrize(("method", "path", "host"), REFUSED_READS)
def test_stored_inputs_lists_batches_and_files_are_refused_with_403(
    blocklist: RunningProxy, fake: FakeProvider, method: str, path: str, host: str
) -> None:
    call = Call(fake)
    body = {"input_file_id": "file_1"} if method == "POST" else None
    provider_error(call.http1(blocklist, method, path, host, body), 403, host)
    assert call.nothing_upstream()


# =============================================================================================
# Class 3. The endpoint table: every entry does what its treatment says; path spellings
# =============================================================================================


def concrete(template: str, family: Family = Family.OPENAI) -> str:
    if family is Family.GOOGLE:  # a model the fake knows; a stream asked for as SSE
        template = template.replace("{id}", "gemini-2.5-flash")
        template += "?alt=sse" if template.endswith(":streamGenerateContent") else ""
    return template.replace("{id}", "resp_abc123").replace("/**", "/x")


def _methods(endpoint: Endpoint) -> list[str]:
    return ["POST", "GET"] if endpoint.method == "*" else [endpoint.method]


_CASES = [(e, m) for e in ENDPOINTS for m in _methods(e)]


def _secret_body(endpoint: Endpoint) -> dict[str, Any]:
    """A request body for the endpoint's format, with the secret in its user text."""
    text = f"my key is {SECRET}, keep it"
    template = endpoint.template
    if template == "/v1/embeddings":
        return {"model": "text-embedding-3-small", "input": text}
    if template == "/v1/moderations":
        return {"model": "omni-moderation-latest", "input": [text, "and more"]}
    if endpoint.template == "/v1beta/openai/embeddings":
        return {"model": "gemini-embedding-001", "input": text}
    if endpoint.family is Family.GOOGLE and endpoint.wire_format is not WireFormat.OPENAI_CHAT:
        return gemini_request(text)
    if endpoint.family is Family.ANTHROPIC:
        body = messages_request(text)
        if "count_tokens" in template:
            body.pop("max_tokens")
            body.pop("stream")
        return body
    if template.startswith("/v1/responses"):
        body = responses_request(text)
        if template != "/v1/responses":
            body.pop("stream")
        return body
    return chat_request(text)


_REQUEST_ONLY_ANSWERS = {
    **{e.template: {"totalTokens": 17} for e in ENDPOINTS if e.template.endswith(":countTokens")},
    "/v1beta/openai/embeddings": {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.125]}],
        "model": "gemini-embedding-001",
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    },
    "/v1/messages/count_tokens": {"input_tokens": 17},
    "/v1/responses/input_tokens": {"object": "response.input_tokens", "input_tokens": 17},
    "/v1/embeddings": {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.125, -0.5]}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    },
    "/v1/moderations": {
        "id": "modr-1",
        "model": "omni-moderation-latest",
        "results": [{"flagged": False, "categories": {}, "category_scores": {}}],
    },
}


def _secret_free(record: RecordedRequest) -> None:
    assert SECRET.encode() not in record.body, "the secret reached the provider"
    assert SECRET not in json.dumps(record.json), "the secret reached the provider (JSON-escaped)"


def _stored_with_secret(endpoint: Endpoint) -> ScriptedReply:
    text = f"the key is {SECRET}"
    if "chat" in endpoint.template:
        return ScriptedReply.json(chat_completion([chat_choice(0, {"content": text}, "stop")]))
    return ScriptedReply.json(responses_object([message_item(text)]))


@pytest.mark.parametrize(("endpoint", "method"), _CASES, ids=[f"{m} {e.template}" for e, m in _CASES])
def test_every_endpoint_in_the_table_gets_its_treatment(
    secrets_proxy: RunningProxy, fake: FakeProvider, endpoint: Endpoint, method: str
) -> None:
    host = host_of(endpoint.family)
    path = concrete(endpoint.template, endpoint.family)
    call = Call(fake)
    if path.startswith("/v1beta/openai/") and endpoint.treatment in (Treatment.POLICED, Treatment.FORWARDED):
        # The fake speaks only Gemini's own API on that host.
        call.script(ScriptedReply.json(chat_completion([chat_choice(0, {"content": "ok"}, "stop")])))
    match endpoint.treatment:
        case Treatment.POLICED:
            if path == "/v1/responses/compact":
                call.script(
                    ScriptedReply.json(
                        {**responses_object([message_item("ok")]), "object": "response.compaction"}
                    )
                )
            response = call.http1(secrets_proxy, method, path, host, _secret_body(endpoint))
            ok(response)
            record = call.received()
            assert record.path == path
            _secret_free(record)
        case Treatment.REQUEST_ONLY:
            answer = ScriptedReply.json(_REQUEST_ONLY_ANSWERS[endpoint.template])
            call.script(answer)
            response = call.http1(secrets_proxy, method, path, host, _secret_body(endpoint))
            if call.upstream():
                record = call.received()
                _secret_free(record)
                ok(response)
                assert response.body == answer.chunks[0], (
                    "the provider's answer did not reach the client unchanged"
                )
            else:
                provider_error(response, (400, 403), host)
        case Treatment.RETRIEVAL:
            call.script(_stored_with_secret(endpoint))
            response = ok(call.http1(secrets_proxy, method, path, host))
            assert call.received().path == path
            assert SECRET.encode() not in response.body, "a stored output reached the client unpoliced"
        case Treatment.REFUSED:
            body = _secret_body(endpoint) if method == "POST" else None
            provider_error(call.http1(secrets_proxy, method, path, host, body), 403, host)
            assert call.nothing_upstream()
        case Treatment.FORWARDED:
            response = ok(call.http1(secrets_proxy, method, path, host))
            record = call.received()
            assert (record.method, record.path, record.body) == (method, path, b"")
            assert response.body == fake.sent(fake.requests.index(record))


@pytest.mark.parametrize(
    "endpoint",
    [e for e in ENDPOINTS if e.treatment is Treatment.FORWARDED],
    ids=lambda e: f"{e.method} {e.template}",
)
def test_a_forwarded_endpoint_with_a_body_is_refused_with_400(
    secrets_proxy: RunningProxy, fake: FakeProvider, endpoint: Endpoint
) -> None:
    host = host_of(endpoint.family)
    call = Call(fake)
    response = call.http1(
        secrets_proxy, endpoint.method, concrete(endpoint.template, endpoint.family), host, {"note": SECRET}
    )
    provider_error(response, 400, host)
    assert call.nothing_upstream()


def test_an_unknown_path_is_forwarded_and_recorded_as_unpoliced_passthrough(
    noop: RunningProxy, fake: FakeProvider
) -> None:
    call = Call(fake)
    path = f"/v1/some_new_api_{call.probe[:8]}"
    body = {"model": "gpt-4o", "anything": "goes"}
    response = ok(call.http1(noop, "POST", path, OPENAI, body))
    record = call.received()
    assert (record.path, record.json) == (path, body)
    assert response.body == fake.sent(fake.requests.index(record))
    rows = calls_rows(noop, path)
    assert len(rows) == 1, f"recorded {len(rows)} calls for {path}"
    assert rows[0]["outcome"] == "passthrough"
    assert rows[0]["unpoliced"] == 1, "a passthrough call must be recorded as unpoliced"


def test_an_unknown_path_is_refused_with_403_under_unknown_endpoints_refuse(
    refuse: RunningProxy, fake: FakeProvider
) -> None:
    call = Call(fake)
    response = call.http1(refuse, "POST", "/v1/some_new_api", OPENAI, {"model": "gpt-4o"})
    provider_error(response, 403, OPENAI)
    assert call.nothing_upstream()


#: (method, table path with the id filled in, host, what to expect)
_SPELLABLE = [
    ("POST", "/v1/chat/completions", OPENAI, "policed"),
    ("POST", "/v1/messages", ANTHROPIC, "policed"),
    ("POST", "/v1/responses", OPENAI, "policed"),
    ("GET", "/v1/models", OPENAI, "forwarded"),
    ("GET", "/v1/models/gpt-4o", OPENAI, "forwarded"),
    ("DELETE", "/v1/responses/resp_AbC123", OPENAI, "forwarded"),
    ("GET", "/api/claude_code/settings", ANTHROPIC, "forwarded"),
    ("GET", "/v1/chat/completions", OPENAI, "refused"),
    ("GET", "/v1/responses/resp_AbC123/input_items", OPENAI, "refused"),
    ("POST", "/v1/messages/batches", ANTHROPIC, "refused"),
]
_IDS = {"gpt-4o", "resp_AbC123"}
_UNRESERVED = string.ascii_letters + string.digits + "-._~"


@st.composite
def path_spellings(draw: st.DrawFn) -> tuple[tuple[str, str, str, str], str, str]:
    """A known path, a spelling of it that servers read the same way, and a query string."""
    case = draw(st.sampled_from(_SPELLABLE))
    segments = case[1].strip("/").split("/")
    parts: list[str] = []
    for segment in segments:
        if segment not in _IDS:
            segment = draw(
                st.sampled_from([segment, segment.upper(), segment.capitalize(), segment.swapcase()])
            )
            segment = "".join(
                f"%{ord(c):02{draw(st.sampled_from(['X', 'x']))}}"
                if c in _UNRESERVED and draw(st.integers(0, 3)) == 0
                else c
                for c in segment
            )
        parts += draw(st.sampled_from([[], [""], ["."], ["x", ".."], ["", "."], ["x", "", ".."]]))
        parts.append(segment)
    spelled = "/" + "/".join(parts) + draw(st.sampled_from(["", "/", "//"]))
    query = draw(st.sampled_from(["", "?beta=true", "?a=1&b=%2F"]))
    return case, spelled, query


@SETTINGS
@given(spelling=path_spellings())
def test_spellings_of_a_known_path_are_that_endpoint_and_the_provider_gets_the_table_spelling(
    secrets_proxy: RunningProxy, fake: FakeProvider, spelling: tuple[tuple[str, str, str, str], str, str]
) -> None:
    (method, path, host, expect), spelled, query = spelling
    note(f"{method} {spelled + query!r} for {path} ({expect})")
    call = Call(fake)
    if expect == "policed":
        body = {
            "/v1/chat/completions": chat_request,
            "/v1/messages": messages_request,
            "/v1/responses": responses_request,
        }[path](f"key {SECRET}")
        response = call.http1(secrets_proxy, method, spelled + query, host, body)
        ok(response)
        record = call.received()
        assert record.path == path + query
        _secret_free(record)
    elif expect == "forwarded":
        ok(call.http1(secrets_proxy, method, spelled + query, host))
        assert call.received().path == path + query
    else:
        refused_body: dict[str, Any] | None = {"requests": []} if method == "POST" else None
        provider_error(call.http1(secrets_proxy, method, spelled + query, host, refused_body), 403, host)
        assert call.nothing_upstream()


_AMBIGUOUS = [
    "%2F",
    "%2f",
    "%5C",
    "%5c",
    "%25",
    "%2541",
    "%00",
    ";param",
    ";",
    "\\",
    "\u00e9",
    "\u2215",
    "\x01",
    "\x7f",
    "\x1b",
]


@st.composite
def ambiguous_paths(draw: st.DrawFn) -> tuple[str, str, str]:
    method, path, host, _ = draw(st.sampled_from(_SPELLABLE))
    kind = draw(st.sampled_from(["token", "climb"]))
    if kind == "climb":
        depth = path.count("/") + draw(st.integers(0, 2))
        spelled = "/.." * depth + path if draw(st.booleans()) else path + "/.." * (depth + 1)
        return method, spelled, host
    token = draw(st.sampled_from(_AMBIGUOUS))
    position = draw(st.integers(1, len(path)))
    return method, path[:position] + token + path[position:], host


@SETTINGS
@given(case=ambiguous_paths())
def test_ambiguous_path_spellings_get_400_and_nothing_upstream(
    secrets_proxy: RunningProxy, fake: FakeProvider, case: tuple[str, str, str]
) -> None:
    method, spelled, host = case
    note(f"{method} {spelled!r} on {host}")
    call = Call(fake)
    body = {"model": "gpt-4o", "messages": []} if method == "POST" else None
    response = call.http1(secrets_proxy, method, spelled, host, body)
    assert response.status == 400, f"{spelled!r}: {response.status} {response.body[:300]!r}"
    assert call.nothing_upstream(), f"{spelled!r} reached the provider as {[r.path for r in call.upstream()]}"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions%2F",
        "/v1/chat%2fcompletions",
        "/v1/chat completions",
        "/v1/ch\u00e4t/completions",
        "/v1/chat/completions\t",
        "/v1\\chat\\completions",
        "/../v1/chat/completions",
        "v1/chat/completions",
        "*",
    ],
)
def test_ambiguous_http2_paths_get_400_or_a_reset_and_nothing_upstream(
    secrets_proxy: RunningProxy, fake: FakeProvider, path: str
) -> None:
    """HTTP/2 carries in ``:path`` bytes an HTTP/1.1 request line cannot (spaces, ``#``)."""
    call = Call(fake)
    response = call.h2(
        secrets_proxy, "POST", path, OPENAI, chat_request("hi"), connect=f"{OPENAI}:443", sni=OPENAI
    )
    assert response.status in (0, 400), f"{path!r}: {response.status} {response.body[:300]!r}"
    assert call.nothing_upstream()


@pytest.mark.parametrize("fragment", ["#x", "#/../../v1/models", "#%2F"])
def test_a_fragment_in_an_http2_path_is_dropped_or_refused_and_never_steers_the_route(
    secrets_proxy: RunningProxy, fake: FakeProvider, fragment: str
) -> None:
    call = Call(fake)
    path = "/v1/chat/completions" + fragment
    response = call.h2(
        secrets_proxy,
        "POST",
        path,
        OPENAI,
        chat_request(f"key {SECRET}"),
        connect=f"{OPENAI}:443",
        sni=OPENAI,
    )
    if response.status in (0, 400):
        assert call.nothing_upstream()
        return
    ok(response)
    record = call.received()
    assert record.path == "/v1/chat/completions"
    _secret_free(record)


# =============================================================================================
# Class 4. Output the policy never sees: every tool-like output item reaches tool-call policies
# =============================================================================================

RESPONSES_KINDS = [
    "function_call",
    "custom_tool_call",
    "local_shell_call",
    "shell_call",
    "apply_patch_call",
    "computer_call",
    "mcp_call",
    "code_interpreter_call",
    "web_search_call",
    "future_tool_call",
]
CHAT_KINDS = ["function", "custom", "legacy", "function_second_choice", "custom_second_choice"]
ANTHROPIC_KINDS = ["tool_use", "server_tool_use", "mcp_tool_use", "future_tool_use"]


def scripted_output(api: str, kind: str, command: str, stream: bool) -> ScriptedReply:
    """The provider's answer, whole or streamed, whose only tool-like item is of ``kind``."""
    if api == "responses":
        item = responses_item(kind, command)
        if not stream:
            return ScriptedReply.json(responses_object([message_item("Running it."), item]))
        return ScriptedReply.sse(
            frame(responses_stream_lines(responses_events([message_item("Running it."), item])))
        )
    if api == "chat":
        base, _, second = kind.partition("_second")
        choice = 1 if second else 0
        if not stream:
            if base == "legacy":
                message: dict[str, Any] = {
                    "function_call": {"name": "bash", "arguments": dumps({"command": command})}
                }
                finish = "function_call"
            else:
                message, finish = {"tool_calls": [chat_tool_call(command, kind=base)]}, "tool_calls"
            choices = [chat_choice(choice, message, finish)]
            if choice:
                choices.insert(0, chat_choice(0, {"content": "Sure, done."}, "stop"))
            return ScriptedReply.json(chat_completion(choices))
        return ScriptedReply.sse(frame(chat_stream_lines(chat_stream_chunks(base, command, choice=choice))))
    block = anthropic_block(kind, command)
    content = [{"type": "text", "text": "Running it."}, block]
    if not stream:
        return ScriptedReply.json(anthropic_message(content))
    return ScriptedReply.sse(frame(anthropic_stream_lines(anthropic_events(content))))


def _output_request(api: str, kind: str, stream: bool) -> dict[str, Any]:
    body = API[api][2]("run it", stream)
    if api == "chat" and "second_choice" in kind:
        body["n"] = 2
    return body


_OUTPUT_CASES = (
    [("responses", k) for k in RESPONSES_KINDS]
    + [("chat", k) for k in CHAT_KINDS]
    + [("messages", k) for k in ANTHROPIC_KINDS]
)


def _kind_in_client(api: str, kind: str) -> str:
    return kind if api != "chat" else "function"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("api", "kind"), _OUTPUT_CASES, ids=[f"{a}-{k}" for a, k in _OUTPUT_CASES])
def test_a_dangerous_tool_like_output_item_never_reaches_the_client(
    blocklist: RunningProxy, fake: FakeProvider, api: str, kind: str, stream: bool
) -> None:
    host, path, _ = API[api]
    call = Call(fake)
    reply = scripted_output(api, kind, DANGER, stream)
    call.script(reply)
    response = ok(call.http1(blocklist, "POST", path, host, _output_request(api, kind, stream)))
    call.received()
    assert_no_tool_call(api, response.body, stream, _kind_in_client(api, kind))
    assert NOTE.encode() in response.body, "the blocked call is not replaced by Luthien's note"
    if stream:
        assert_valid_stream(api, response.body)
        if api == "chat" and "second_choice" in kind:
            # the other choice's text is untouched
            texts = [
                (c.get("delta") or {}).get("content") or ""
                for _, d in sse_json(response.body)
                if isinstance(d, dict)
                for c in d.get("choices") or []
                if c.get("index") == 0
            ]
            assert "".join(texts) == "Sure, done."
    else:
        json.loads(response.body)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("api", "kind"), _OUTPUT_CASES, ids=[f"{a}-{k}" for a, k in _OUTPUT_CASES])
def test_a_safe_tool_like_output_item_passes_byte_identical_through_noop_and_unchanged_through_blocklist(
    noop: RunningProxy, blocklist: RunningProxy, fake: FakeProvider, api: str, kind: str, stream: bool
) -> None:
    host, path, _ = API[api]
    reply = scripted_output(api, kind, SAFE, stream)
    upstream_bytes = b"".join(reply.chunks)
    call = Call(fake)
    call.script(reply)
    through_noop = ok(call.http1(noop, "POST", path, host, _output_request(api, kind, stream)))
    call.received()
    assert through_noop.body == upstream_bytes, "the NoOp proxy changed the bytes"

    call = Call(fake)
    call.script(reply)
    through_blocklist = ok(call.http1(blocklist, "POST", path, host, _output_request(api, kind, stream)))
    call.received()
    if api == "responses":
        shown = [i for i in responses_items_in(through_blocklist.body, stream) if i.get("type") == kind]
        assert shown and all(i == responses_item(kind, SAFE) for i in shown if i.get("status") == "completed")
    elif api == "chat":
        assert chat_tool_parts(through_blocklist.body, stream), "the safe tool call was removed"
    else:
        shown = [b for b in anthropic_blocks_in(through_blocklist.body, stream) if b.get("type") == kind]
        assert shown, f"the safe {kind} block was removed"
    if stream:
        assert streamed_text(api, through_blocklist.body) == streamed_text(api, upstream_bytes)


def _function_call(command: str) -> dict[str, Any]:
    return responses_item("function_call", command)


def test_a_responses_stream_whose_item_done_contradicts_the_deltas_does_not_deliver_the_unseen_arguments(
    blocklist: RunningProxy, fake: FakeProvider
) -> None:
    events = responses_events([_function_call(SAFE)], done_items=[_function_call(DANGER)])
    _assert_contradiction_not_delivered(blocklist, fake, events)


def test_a_responses_stream_whose_completed_output_contradicts_the_stream_does_not_deliver_it(
    blocklist: RunningProxy, fake: FakeProvider
) -> None:
    events = responses_events([_function_call(SAFE)], completed_output=[_function_call(DANGER)])
    _assert_contradiction_not_delivered(blocklist, fake, events)


def _assert_contradiction_not_delivered(
    proxy: RunningProxy, fake: FakeProvider, events: list[dict[str, Any]]
) -> None:
    call = Call(fake)
    call.script(ScriptedReply.sse(frame(responses_stream_lines(events))))
    response = ok(call.http1(proxy, "POST", "/v1/responses", OPENAI, responses_request("run", True)))
    call.received()
    shown = [i for i in responses_items_in(response.body, True) if i.get("type") == "function_call"]
    assert not any(dangerous(i.get("arguments")) for i in shown), "the client got arguments no policy saw"
    types = [d.get("type") for _, d in sse_json(response.body) if isinstance(d, dict)]
    assert types and types[-1] in ("error", "response.failed", "response.completed"), types[-3:]


def test_a_responses_stream_whose_final_text_contradicts_the_deltas_does_not_deliver_the_unseen_text(
    secrets_proxy: RunningProxy, fake: FakeProvider
) -> None:
    events = responses_events(
        [message_item("hello there")], done_items=[message_item(f"the key is {SECRET}")]
    )
    call = Call(fake)
    call.script(ScriptedReply.sse(frame(responses_stream_lines(events))))
    response = ok(call.http1(secrets_proxy, "POST", "/v1/responses", OPENAI, responses_request("hi", True)))
    call.received()
    assert SECRET.encode() not in response.body, "the client got text no policy saw"


def test_an_anthropic_tool_use_whose_input_is_already_in_content_block_start_is_seen(
    blocklist: RunningProxy, fake: FakeProvider
) -> None:
    events = anthropic_events([anthropic_block("tool_use", DANGER)], prefilled=True)
    call = Call(fake)
    call.script(ScriptedReply.sse(frame(anthropic_stream_lines(events))))
    response = ok(call.http1(blocklist, "POST", "/v1/messages", ANTHROPIC, messages_request("run", True)))
    call.received()
    shown = [b for b in anthropic_blocks_in(response.body, True) if b.get("type") == "tool_use"]
    assert not any(dangerous(b.get("input")) for b in shown), "the prefilled input passed unseen"
    assert not BLOCKED_RE.search(anthropic_json_deltas(response.body))


@pytest.mark.parametrize("name", ["ping", "message_delta", "content_block_stop"])
def test_an_anthropic_event_whose_name_and_type_disagree_does_not_pass_the_command_unseen(
    blocklist: RunningProxy, fake: FakeProvider, name: str
) -> None:
    events = anthropic_events([anthropic_block("tool_use", DANGER)])
    renamed = {
        n: name for n, e in enumerate(events) if e["type"] in ("content_block_start", "content_block_delta")
    }
    call = Call(fake)
    call.script(ScriptedReply.sse(frame(anthropic_stream_lines(events, renamed))))
    response = call.http1(blocklist, "POST", "/v1/messages", ANTHROPIC, messages_request("run", True))
    if response.status != 200:
        provider_error(response, (400, 502), ANTHROPIC)
        return
    assert_no_tool_call("messages", response.body, True, "tool_use")


def _cited_stream(text: str, cited: str) -> bytes:
    """A Messages stream whose text block cites ``cited`` between two text deltas."""
    events = anthropic_events([{"type": "text", "text": text}], stop="end_turn")
    cite = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "citations_delta", "citation": anthropic_citation(cited)},
    }
    stop = next(n for n, e in enumerate(events) if e["type"] == "content_block_stop")
    return frame(anthropic_stream_lines([*events[: stop - 1], cite, *events[stop - 1 :]]))


@pytest.mark.parametrize(
    ("proxy", "text", "cited", "shown"),
    [
        ("blocklist", "The capital is Paris.", "Paris", ["Paris"]),
        ("blocklist", "Run this.", DANGER, []),
        ("secrets", f"The key {SECRET} opens Paris.", "Paris", ["Paris"]),
    ],
    ids=["passed", "removed", "after-a-changed-text"],
)
def test_anthropic_citations_reach_the_policy_and_the_official_sdk_keeps_those_it_lets_through(
    blocklist: RunningProxy,
    secrets_proxy: RunningProxy,
    fake: FakeProvider,
    proxy: str,
    text: str,
    cited: str,
    shown: list[str],
) -> None:
    call = Call(fake)
    call.script(ScriptedReply.sse(_cited_stream(text, cited)))
    running = blocklist if proxy == "blocklist" else secrets_proxy
    (result,) = running.sdk(
        {"api": "messages", "stream": True, "prompt": "cite", "headers": {PROBE: call.probe}}
    )
    call.received()
    assert "error" not in result, result
    assert result["citations"] == shown, (
        "a citation the policy let through was lost, or one it removed passed"
    )
    assert SECRET not in result["text"]
    assert (NOTE in result["text"]) == (not shown), result["text"]


def test_chat_chunks_with_a_null_error_next_to_choices_do_not_pass_the_tool_call_unseen(
    blocklist: RunningProxy, fake: FakeProvider
) -> None:
    chunks = chat_stream_chunks("function", DANGER, extra={"error": None})
    call = Call(fake)
    call.script(ScriptedReply.sse(frame(chat_stream_lines(chunks))))
    response = ok(call.http1(blocklist, "POST", "/v1/chat/completions", OPENAI, chat_request("run", True)))
    call.received()
    assert_no_tool_call("chat", response.body, True, "function")


# =============================================================================================
# Class 5. Matching on the wrong text: patterns match decoded arguments, not JSON escapes
# =============================================================================================


def _escape(draw: st.DrawFn, char: str) -> str:
    """``char`` as it may appear inside a JSON string literal."""
    named = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\f": "\\f"}
    choices = [f"\\u{ord(char):04x}", f"\\u{ord(char):04X}"]
    if char in named:
        choices.append(named[char])
    elif char not in '"\\' and ord(char) >= 0x20:
        choices += [char, char]
    return draw(st.sampled_from(choices))


@st.composite
def escaped_commands(draw: st.DrawFn) -> tuple[str, str]:
    """The JSON text of tool arguments that decode to a dangerous command, and how it is spelled."""
    if draw(st.integers(0, 5)) == 0:
        return '{"command": ["rm", "-rf", "/"]}', "list"
    separator = draw(st.sampled_from([" ", "\t", "\n", "  ", " \t", "\r\n", "\f"]))
    command = f"rm{separator}-rf /"
    literal = "".join(_escape(draw, c) for c in command)
    return '{"command": "' + literal + '"}', literal


def _escaped_reply(api: str, arguments: str, stream: bool) -> ScriptedReply:
    """A tool call whose arguments are the JSON text ``arguments`` exactly (escapes kept)."""
    if api == "chat":
        if not stream:
            call = {"id": "call_x1", "type": "function", "function": {"name": "bash", "arguments": arguments}}
            return ScriptedReply.json(chat_completion([chat_choice(0, {"tool_calls": [call]}, "tool_calls")]))
        head = {
            "index": 0,
            "id": "call_x1",
            "type": "function",
            "function": {"name": "bash", "arguments": ""},
        }
        chunks = [
            chat_chunk([chat_delta(0, {"role": "assistant", "content": None})]),
            chat_chunk([chat_delta(0, {"tool_calls": [head]})]),
            *(
                chat_chunk(
                    [
                        chat_delta(
                            0, {"tool_calls": [{"index": 0, "function": {"arguments": arguments[s : s + 5]}}]}
                        )
                    ]
                )
                for s in range(0, len(arguments), 5)
            ),
            chat_chunk([chat_delta(0, {}, "tool_calls")]),
        ]
        return ScriptedReply.sse(frame(chat_stream_lines(chunks)))
    if api == "responses":
        item = {
            "type": "function_call",
            "id": "fc_x1",
            "status": "completed",
            "name": "bash",
            "call_id": "c1",
            "arguments": arguments,
        }
        if not stream:
            return ScriptedReply.json(responses_object([item]))
        return ScriptedReply.sse(frame(responses_stream_lines(responses_events([item], piece=5))))
    if not stream:
        # The escapes sit in the body's own JSON: the input object is spliced in as it is spelled.
        body = dumps(anthropic_message([{"type": "tool_use", "id": "toolu_x1", "name": "bash", "input": {}}]))
        return ScriptedReply((body.replace('"input":{}', '"input":' + arguments).encode(),))
    events = anthropic_events([{"type": "tool_use", "id": "toolu_x1", "name": "bash", "input": {}}])
    events = [e for e in events if e["type"] != "content_block_delta"]  # the deltas of `{}`
    deltas = [
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": arguments[s : s + 5]},
        }
        for s in range(0, len(arguments), 5)
    ]
    at = next(n for n, e in enumerate(events) if e["type"] == "content_block_start") + 1
    events[at:at] = deltas
    return ScriptedReply.sse(frame(anthropic_stream_lines(events)))


@SETTINGS
@given(
    command=escaped_commands(),
    api=st.sampled_from(["chat", "responses", "messages"]),
    stream=st.booleans(),
)
def test_tool_arguments_that_spell_the_command_with_json_escapes_are_blocked(
    blocklist: RunningProxy, fake: FakeProvider, command: tuple[str, str], api: str, stream: bool
) -> None:
    arguments, _ = command
    note(f"{api} stream={stream} arguments={arguments!r}")
    assert dangerous(json.loads(arguments)), "the generator must produce a dangerous command"
    host, path, make = API[api]
    call = Call(fake)
    call.script(_escaped_reply(api, arguments, stream))
    response = ok(call.http1(blocklist, "POST", path, host, make("run", stream)))
    call.received()
    assert_no_tool_call(
        api,
        response.body,
        stream,
        {"chat": "function", "responses": "function_call", "messages": "tool_use"}[api],
    )
    if stream:
        assert_valid_stream(api, response.body)


@pytest.mark.parametrize(
    ("api", "stream"),
    # (a whole Messages body holds the input as JSON of its own: a broken one is a broken body)
    [("chat", False), ("chat", True), ("responses", False), ("responses", True), ("messages", True)],
    ids=["chat-whole", "chat-stream", "responses-whole", "responses-stream", "messages-stream"],
)
@pytest.mark.parametrize(
    "arguments",
    [
        '{"command": "rm\\u0020-rf /"',
        '{"command": "rm\\u0020-rf /"}}',
        '{"command": "rm\\u0020-rf /", "command": "ls"}',
    ],
    ids=["truncated", "trailing-brace", "duplicate-key"],
)
def test_tool_arguments_that_do_not_decode_to_one_value_do_not_pass_as_if_seen(
    blocklist: RunningProxy, fake: FakeProvider, api: str, stream: bool, arguments: str
) -> None:
    """Arguments that are not one JSON value (truncated, trailing text, a duplicate key whose
    other value a client may take): the policy cannot know what the agent will run, so the call
    must not reach the client as it is (blocked, or the answer refused)."""
    host, path, make = API[api]
    call = Call(fake)
    call.script(_escaped_reply(api, arguments, stream))
    response = call.http1(blocklist, "POST", path, host, make("run", stream))
    call.received()
    if response.status != 200:
        provider_error(response, (500, 502), host)
        return
    assert_no_tool_call(
        api,
        response.body,
        stream,
        {"chat": "function", "responses": "function_call", "messages": "tool_use"}[api],
    )


# =============================================================================================
# Class 6. Request content the normalisation drops: every text-bearing part reaches policy
# =============================================================================================


def _anthropic_with(*content: dict[str, Any], role: str = "user") -> dict[str, Any]:
    body = messages_request("")
    body["messages"] = [{"role": role, "content": list(content)}]
    return body


def _tool_round(result_content: Any) -> dict[str, Any]:
    body = messages_request("")
    body["messages"] = [
        {"role": "user", "content": "run ls"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"command": "ls"}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": result_content}],
        },
    ]
    return body


def _responses_with(*items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "input": [{"role": "user", "content": "go on"}, *items], **extra}


def _secret_request_cases() -> dict[str, tuple[str, str, Any]]:
    text_doc = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": f"notes: {SECRET}"},
    }
    content_doc = {
        "type": "document",
        "source": {"type": "content", "content": [{"type": "text", "text": f"notes: {SECRET}"}]},
    }
    search_result = {
        "type": "search_result",
        "source": "https://example.com/notes",
        "title": "notes",
        "content": [{"type": "text", "text": f"the key is {SECRET}"}],
    }
    call = {"type": "function_call", "call_id": "call_1", "name": "bash", "arguments": '{"command": "ls"}'}
    computer_call = {
        "type": "computer_call",
        "id": "cu_1",
        "call_id": "call_1",
        "status": "completed",
        "action": {"type": "screenshot"},
        "pending_safety_checks": [],
    }
    m = (ANTHROPIC, "/v1/messages")
    r = (OPENAI, "/v1/responses")
    return {
        "anthropic document text source": (
            *m,
            _anthropic_with(text_doc, {"type": "text", "text": "summarise"}),
        ),
        "anthropic document content source": (
            *m,
            _anthropic_with(content_doc, {"type": "text", "text": "summarise"}),
        ),
        "anthropic document in a tool_result": (*m, _tool_round([text_doc])),
        "anthropic document content source in a tool_result": (*m, _tool_round([content_doc])),
        "anthropic search_result content": (
            *m,
            _anthropic_with(search_result, {"type": "text", "text": "cite it"}),
        ),
        "anthropic search_result title": (
            *m,
            _anthropic_with({**search_result, "title": SECRET, "content": [{"type": "text", "text": "x"}]}),
        ),
        "anthropic search_result in a tool_result": (*m, _tool_round([search_result])),
        "anthropic invented block": (*m, _anthropic_with({"type": "future_block", "text": f"key {SECRET}"})),
        "anthropic invented block in a tool_result": (
            *m,
            _tool_round([{"type": "future_block", "text": SECRET}]),
        ),
        "anthropic escaped secret in text": (
            *m,
            "RAW:"
            + dumps(messages_request("@@")).replace(
                "@@", "key " + "".join(f"\\u{ord(c):04x}" for c in SECRET)
            ),
        ),
        "responses prompt variables string": (
            *r,
            _responses_with(prompt={"id": "pmpt_1", "variables": {"key": f"the key {SECRET}"}}),
        ),
        "responses prompt variables input_text": (
            *r,
            _responses_with(
                prompt={"id": "pmpt_1", "variables": {"key": {"type": "input_text", "text": SECRET}}}
            ),
        ),
        "responses local_shell_call_output": (
            *r,
            _responses_with(
                {
                    "type": "local_shell_call",
                    "id": "lsh_1",
                    "call_id": "call_1",
                    "status": "completed",
                    "action": {"type": "exec", "command": ["env"], "env": {}},
                },
                {
                    "type": "local_shell_call_output",
                    "id": "lsh_1",
                    "call_id": "call_1",
                    "output": f"KEY={SECRET}",
                },
            ),
        ),
        "responses custom_tool_call_output": (
            *r,
            _responses_with(
                {"type": "custom_tool_call", "call_id": "call_1", "name": "apply_patch", "input": "x"},
                {"type": "custom_tool_call_output", "call_id": "call_1", "output": f"KEY={SECRET}"},
            ),
        ),
        "responses computer_call_output image_url": (
            *r,
            _responses_with(
                computer_call,
                {
                    "type": "computer_call_output",
                    "call_id": "call_1",
                    "output": {"type": "computer_screenshot", "image_url": f"data:text/plain,{SECRET}"},
                },
            ),
        ),
        "responses computer_call_output safety check": (
            *r,
            _responses_with(
                computer_call,
                {
                    "type": "computer_call_output",
                    "call_id": "call_1",
                    "output": {"type": "computer_screenshot", "image_url": "https://example.com/s.png"},
                    "acknowledged_safety_checks": [{"id": "sc_1", "code": "x", "message": SECRET}],
                },
            ),
        ),
        "responses mcp_call": (
            *r,
            _responses_with(
                {
                    "type": "mcp_call",
                    "id": "mcp_1",
                    "server_label": "box",
                    "name": "env",
                    "arguments": "{}",
                    "output": f"KEY={SECRET}",
                }
            ),
        ),
        "responses mcp_approval_response": (
            *r,
            _responses_with(
                {
                    "type": "mcp_approval_response",
                    "approval_request_id": "apr_1",
                    "approve": True,
                    "reason": SECRET,
                }
            ),
        ),
        "responses function_call_output list": (
            *r,
            _responses_with(
                call,
                {
                    "type": "function_call_output",
                    "call_id": "call_1",
                    "output": [{"type": "input_text", "text": f"KEY={SECRET}"}],
                },
            ),
        ),
        "responses invented input item": (
            *r,
            _responses_with({"type": "future_item", "text": f"key {SECRET}"}),
        ),
        "responses invented content part": (
            *r,
            {
                "model": "gpt-4o",
                "input": [{"role": "user", "content": [{"type": "input_future", "text": f"key {SECRET}"}]}],
            },
        ),
        "responses encrypted reasoning": (
            *r,
            {
                "model": "gpt-4o",
                "input": [
                    {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": SECRET},
                    {"role": "user", "content": "hi"},
                ],
            },
        ),
        "anthropic invented top-level field": (
            *m,
            {**messages_request("hi"), "future_field": {"note": SECRET}},
        ),
        "chat predicted output": (
            OPENAI,
            "/v1/chat/completions",
            {**chat_request("hi"), "prediction": {"type": "content", "content": f"key {SECRET}"}},
        ),
    }


_SECRET_CASES = _secret_request_cases()


@pytest.mark.parametrize("case", list(_SECRET_CASES))
def test_a_secret_in_any_part_of_a_request_never_reaches_the_provider(
    secrets_proxy: RunningProxy, fake: FakeProvider, case: str
) -> None:
    host, path, body = _SECRET_CASES[case]
    if isinstance(body, str):
        body = body.removeprefix("RAW:").encode()
    call = Call(fake)
    response = call.http1(secrets_proxy, "POST", path, host, body)
    if call.upstream():
        _secret_free(call.received())
    else:
        provider_error(response, 400, host)
        assert call.nothing_upstream()


@pytest.mark.parametrize(
    "body",
    [
        {"model": "text-embedding-3-small", "input": [15339, 1917, 0, 42]},
        {"model": "text-embedding-3-small", "input": [[15339, 1917], [42]]},
    ],
    ids=["token-array", "token-arrays"],
)
def test_embedding_input_given_as_token_ids_is_refused_or_decoded_for_policy(
    secrets_proxy: RunningProxy, fake: FakeProvider, body: dict[str, Any]
) -> None:
    """Token ids are text the policy cannot read as given: a request the normalisation cannot
    place is refused (an extension of class 6 to the request-only endpoints)."""
    call = Call(fake)
    call.script(ScriptedReply.json(_REQUEST_ONLY_ANSWERS["/v1/embeddings"]))
    response = call.http1(secrets_proxy, "POST", "/v1/embeddings", OPENAI, body)
    provider_error(response, 400, OPENAI)
    assert call.nothing_upstream()


# =============================================================================================
# Class 7. SSE framing: any line ending, any split, byte-identical through NoOp, policed anyway
# =============================================================================================

_ENDINGS = ["\n", "\r", "\r\n"]


@st.composite
def framings(draw: st.DrawFn, lines: list[list[str]]) -> tuple[bytes, list[bytes]]:
    """``lines`` framed with a random terminator per line and per blank line (never ``\\r``
    followed by a terminator starting with ``\\n``: that would be one terminator, not two), then
    cut into random chunks."""
    out: list[str] = []
    previous = ""
    for event in lines:
        for line in [*event, ""]:
            choices = [e for e in _ENDINGS if not (previous == "\r" and e.startswith("\n"))]
            if line == "" and previous == "\r":
                choices = ["\r"]
            ending = draw(st.sampled_from(choices))
            out.append(line + ending)
            previous = ending
    data = "".join(out).encode()
    cuts = sorted(set(draw(st.lists(st.integers(1, len(data) - 1), max_size=12))))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return data, chunks


def _stream_lines(api: str, command: str | None) -> list[list[str]]:
    if api == "chat":
        if command is None:
            chunks = [
                chat_chunk([chat_delta(0, {"role": "assistant", "content": ""})]),
                *(chat_chunk([chat_delta(0, {"content": w})]) for w in ["Hello", " there", "."]),
                chat_chunk([chat_delta(0, {}, "stop")]),
            ]
        else:
            chunks = chat_stream_chunks("function", command)
        return chat_stream_lines(chunks)
    if api == "responses":
        items = [message_item("Hello there.")] + ([_function_call(command)] if command else [])
        return responses_stream_lines(responses_events(items))
    blocks = [{"type": "text", "text": "Hello there."}] + (
        [anthropic_block("tool_use", command)] if command else []
    )
    return anthropic_stream_lines(anthropic_events(blocks, stop="tool_use" if command else "end_turn"))


@st.composite
def framed_streams(draw: st.DrawFn, dangerous_call: bool) -> tuple[str, bytes, list[bytes]]:
    api = draw(st.sampled_from(["chat", "responses", "messages"]))
    data, chunks = draw(framings(_stream_lines(api, DANGER if dangerous_call else None)))
    return api, data, chunks


@SETTINGS
@given(case=framed_streams(dangerous_call=False))
def test_any_sse_framing_passes_byte_identical_through_noop(
    noop: RunningProxy, fake: FakeProvider, case: tuple[str, bytes, list[bytes]]
) -> None:
    api, data, chunks = case
    note(f"{api}: {chunks!r}")
    host, path, make = API[api]
    call = Call(fake)
    call.script(ScriptedReply(tuple(chunks), content_type="text/event-stream"))
    response = ok(call.http1(noop, "POST", path, host, make("hi", True)))
    call.received()
    assert response.body == data


@SETTINGS
@given(case=framed_streams(dangerous_call=True))
def test_any_sse_framing_still_has_the_tool_call_removed(
    blocklist: RunningProxy, fake: FakeProvider, case: tuple[str, bytes, list[bytes]]
) -> None:
    api, _, chunks = case
    note(f"{api}: {chunks!r}")
    host, path, make = API[api]
    call = Call(fake)
    call.script(ScriptedReply(tuple(chunks), content_type="text/event-stream"))
    response = ok(call.http1(blocklist, "POST", path, host, make("run", True)))
    call.received()
    assert_no_tool_call(
        api,
        response.body,
        True,
        {"chat": "function", "responses": "function_call", "messages": "tool_use"}[api],
    )
    assert (
        last_event_type(response.body)
        == {"chat": "[DONE]", "responses": "response.completed", "messages": "message_stop"}[api]
    )


def test_a_leading_bom_does_not_hide_the_first_event_from_policy(
    blocklist: RunningProxy, fake: FakeProvider
) -> None:
    """The first event carries the whole tool call; a BOM in front of it (which SSE parsers
    strip) must not make the proxy skip it."""
    call_part = {
        "index": 0,
        "id": "call_x1",
        "type": "function",
        "function": {"name": "bash", "arguments": dumps({"command": DANGER})},
    }
    chunks = [
        chat_chunk([chat_delta(0, {"role": "assistant", "content": None, "tool_calls": [call_part]})]),
        chat_chunk([chat_delta(0, {}, "tool_calls")]),
    ]
    data = b"\xef\xbb\xbf" + frame(chat_stream_lines(chunks))
    assert parse_sse(data)[0][1].startswith("{"), "our reader sees the first event"
    call = Call(fake)
    call.script(ScriptedReply((data,), content_type="text/event-stream"))
    response = ok(call.http1(blocklist, "POST", "/v1/chat/completions", OPENAI, chat_request("run", True)))
    call.received()
    assert_no_tool_call("chat", response.body, True, "function")


@pytest.mark.parametrize("api", ["chat", "responses", "messages"])
def test_a_leading_bom_passes_byte_identical_through_noop(
    noop: RunningProxy, fake: FakeProvider, api: str
) -> None:
    data = b"\xef\xbb\xbf" + frame(_stream_lines(api, None))
    host, path, make = API[api]
    call = Call(fake)
    call.script(ScriptedReply((data,), content_type="text/event-stream"))
    response = ok(call.http1(noop, "POST", path, host, make("hi", True)))
    assert response.body == data


# =============================================================================================
# Class 8. Leaks: tests/test_security.py and tests/test_credential_scrub.py
# =============================================================================================

# =============================================================================================
# Class 9. Robustness: malformed framing gets an error or a close, and the proxy keeps serving
# =============================================================================================


def _send_raw(
    proxy: RunningProxy, data: bytes, *, half_close: bool = False, host: str = OPENAI
) -> RawResponse:
    return raw_request(proxy.port, proxy.bundle, f"{host}:443", host, data, half_close=half_close, timeout=20)


def _chunked_head(call: Call, host: str = OPENAI, extra: str = "") -> bytes:
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n{PROBE}: {call.probe}\r\n"
        f"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n{extra}\r\n"
    )
    return head.encode()


def test_a_chunked_request_with_trailers_gets_a_provider_format_400_and_the_proxy_keeps_serving(
    blocklist: RunningProxy, fake: FakeProvider
) -> None:
    call = Call(fake)
    body = json.dumps(chat_request("hello")).encode()
    data = _chunked_head(call, extra="Trailer: x-extra\r\n") + b"%x\r\n%s\r\n0\r\nx-extra: 1\r\n\r\n" % (
        len(body),
        body,
    )
    provider_error(_send_raw(blocklist, data), 400, OPENAI)
    assert call.nothing_upstream()
    assert_serving(blocklist, fake)


@pytest.mark.parametrize(
    "chunks",
    [
        b"zz\r\n{}\r\n0\r\n\r\n",
        b"5\r\n{}\r\n0\r\n\r\n",
        b"-1\r\n{}\r\n0\r\n\r\n",
        b"2\r\n{}0\r\n\r\n",
    ],
    # (A NUL in a chunk extension is accepted: the extension is dropped, the body is policed.)
    ids=["bad-hex", "short-chunk", "negative", "no-crlf"],
)
def test_malformed_chunked_encoding_gets_an_error_or_a_close_and_the_proxy_keeps_serving(
    blocklist: RunningProxy, fake: FakeProvider, chunks: bytes
) -> None:
    call = Call(fake)
    response = _send_raw(blocklist, _chunked_head(call) + chunks)
    assert response.status == 0 or response.status >= 400, (
        f"malformed chunking was answered {response.status}"
    )
    assert call.nothing_upstream()
    assert_serving(blocklist, fake)


def test_a_connection_half_closed_mid_body_gets_an_error_or_a_close_and_the_proxy_keeps_serving(
    blocklist: RunningProxy, fake: FakeProvider
) -> None:
    call = Call(fake)
    body = json.dumps(chat_request("hello")).encode()
    head = http1_bytes("POST", "/v1/chat/completions", OPENAI, None, [(PROBE, call.probe)])
    head = head[:-2] + f"Content-Type: application/json\r\nContent-Length: {len(body) + 100}\r\n\r\n".encode()
    response = _send_raw(blocklist, head + body, half_close=True)
    assert response.status == 0 or response.status >= 400, f"a truncated body was answered {response.status}"
    assert call.nothing_upstream()
    assert_serving(blocklist, fake)


def _connected(proxy: RunningProxy, timeout: float) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    sock.sendall(f"CONNECT {OPENAI}:443 HTTP/1.1\r\nHost: {OPENAI}:443\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head and (more := sock.recv(1)):
        head += more
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def _until_closed(sock: socket.socket) -> tuple[bytes, bool]:
    """What came back, and whether the proxy closed the connection (not just went quiet)."""
    received = b""
    try:
        while more := sock.recv(65536):
            received += more
    except ConnectionResetError:
        return received, True
    except TimeoutError:
        return received, False
    return received, True


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x00\x04\x01\x00\x00\x00",  # a whole TLS record: an empty ClientHello
        b"\x16\x03\x01\xff\xff\x02\x00\x00\x04" + b"\x01" * 0xFFFB,  # over-long, and no ClientHello
        b"\x00" * 64,
        b"\xff" * 2048,
        b"\x80\x2e\x01\x00\x02" + b"\x00" * 45,  # an SSLv2-style hello
    ],
    ids=["empty-client-hello", "oversized-record", "zeros", "noise", "sslv2-hello"],
)
def test_garbage_after_connect_gets_a_close_and_the_proxy_keeps_serving(
    blocklist: RunningProxy, fake: FakeProvider, garbage: bytes
) -> None:
    before = len(fake.requests)
    with _connected(blocklist, timeout=10) as sock:
        sock.sendall(garbage)
        assert_serving(blocklist, fake)  # while the garbage connection is still open
        received, closed = _until_closed(sock)
    assert closed, "the proxy left a connection of garbage open"
    assert b"HTTP/1.1 200" not in received
    assert len(fake.requests) == before + 1  # assert_serving's request only


def test_a_truncated_client_hello_does_not_stop_the_proxy_serving_others(
    blocklist: RunningProxy, fake: FakeProvider
) -> None:
    """A ClientHello that never finishes may be waited for, but only on its own connection."""
    with _connected(blocklist, timeout=3) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        assert_serving(blocklist, fake)
        _until_closed(sock)
    assert_serving(blocklist, fake)


def _plaintext_in_tunnel(proxy: RunningProxy, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as sock:
        sock.sendall(f"CONNECT {OPENAI}:443 HTTP/1.1\r\nHost: {OPENAI}:443\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head and (more := sock.recv(1)):
            head += more
        assert head.startswith(b"HTTP/1.1 200"), head
        sock.sendall(request)
        received = b""
        try:
            while more := sock.recv(65536):
                received += more
                if b"\r\n0\r\n\r\n" in received or (
                    b"\r\n\r\n" in received and b"content-length" in received.lower()
                ):
                    head, _, rest = received.partition(b"\r\n\r\n")
                    length = re.search(rb"(?i)content-length: *(\d+)", head)
                    if length is None or len(rest) >= int(length.group(1)):
                        break
        except (ConnectionResetError, TimeoutError):
            pass
    return received


def test_plaintext_http_inside_a_provider_tunnel_is_policed_or_refused(
    blocklist: RunningProxy, fake: FakeProvider
) -> None:
    """Not TLS after CONNECT, but HTTP in the clear: it is still a request to the provider, and
    goes through policy (or is refused), never around it."""
    call = Call(fake)
    body = json.dumps(chat_request(f"[scenario:tool_call {DANGER}]")).encode()
    request = http1_bytes(
        "POST", "/v1/chat/completions", OPENAI, body, [*call.headers, ("connection", "close")]
    )
    received = _plaintext_in_tunnel(blocklist, request)
    if received.startswith(b"HTTP/1.1 200"):
        head, _, rest = received.partition(b"\r\n\r\n")
        assert b"chunked" not in head.lower(), "expected a whole JSON answer"
        assert_no_tool_call("chat", rest, False, "function")
        call.received()
    else:
        assert call.nothing_upstream()
    assert_serving(blocklist, fake)


def test_plaintext_http_to_an_unknown_path_inside_a_provider_tunnel_is_refused_under_refuse(
    refuse: RunningProxy, fake: FakeProvider
) -> None:
    call = Call(fake)
    request = http1_bytes("GET", "/v1/some_new_api", OPENAI, None, [*call.headers, ("connection", "close")])
    received = _plaintext_in_tunnel(refuse, request)
    assert not received.startswith(b"HTTP/1.1 2"), received[:300]
    assert call.nothing_upstream()


@pytest.mark.parametrize(
    "garbage",
    [b"HELLO WORLD\r\n\r\n", b"\x00\x01\x02\r\n\r\n", b"\x16\x03\x01\x00\x04\x01\x00\x00\x00"],
    ids=["words", "binary", "tls-to-the-proxy-port"],
)
def test_garbage_instead_of_connect_gets_an_error_or_a_close_and_the_proxy_keeps_serving(
    blocklist: RunningProxy, fake: FakeProvider, garbage: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", blocklist.port), timeout=10) as sock:
        sock.sendall(garbage)
        assert_serving(blocklist, fake)
        received, closed = _until_closed(sock)
    assert closed or received.startswith(b"HTTP/1.1 4"), received[:200]
    assert_serving(blocklist, fake)


def test_tls_without_a_request_then_close_leaves_the_proxy_serving(
    blocklist: RunningProxy, fake: FakeProvider
) -> None:
    try:
        with TlsTunnel(blocklist.port, blocklist.bundle, f"{OPENAI}:443", OPENAI, timeout=10) as tunnel:
            tunnel.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\n")
    except (ssl.SSLError, ConnectionError):
        pass
    assert_serving(blocklist, fake)


# =============================================================================================
# The real agents still work when unknown endpoints are refused
# =============================================================================================

agent_bin = agents.agent_bin
home = agents.home


def test_claude_code_and_codex_work_with_unknown_endpoints_refused(
    refuse: RunningProxy, fake: FakeProvider, home: Path, agent_bin: Path
) -> None:
    before, started = len(fake.requests), time.time()
    result = agents.claude(refuse, home, agent_bin, "Say hello", all_traffic=True)
    assert (result["is_error"], result["result"]) == (False, agents.FAKE_TEXT)
    output = agents.codex(refuse, home, agent_bin, "Say hello")
    assert agents.FAKE_TEXT in output
    paths = [r.path.split("?")[0] for r in fake.requests[before:]]
    assert "/v1/messages" in paths and "/v1/responses" in paths, paths
    # What was refused for not being in the table is only what the agents can do without:
    # never a model call (Claude Code's telemetry and feature-flag posts may be refused).
    time.sleep(1)  # recording is asynchronous
    refused = [
        (r["method"], r["path"])
        for r in calls_rows(refuse, "/")
        if r["started_at"] >= started and "endpoint table" in (r["error"] or "")
    ]
    model_calls = ("/v1/messages", "/v1/responses", "/v1/chat/completions")
    assert not [c for c in refused if c[1].split("?")[0] in model_calls], refused


# --- Gemini: every field under both spellings ------------------------------------------------

GEMINI_CALL = "/v1beta/models/gemini-2.5-flash:generateContent"
GEMINI_STREAM = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
#: The structural fields Google reads under their lowerCamel and their snake_case names.
_GEMINI_FIELDS = frozenset(
    {
        "contents", "parts", "role", "text", "thought", "thoughtSignature", "systemInstruction",
        "functionCall", "functionResponse", "executableCode", "inlineData", "mimeType", "data",
        "generationConfig", "stopSequences", "tools", "functionDeclarations", "description",
        "name", "args", "response", "code", "language", "candidates", "content", "finishReason",
        "index", "usageMetadata", "promptTokenCount", "modelVersion",
    }
)  # fmt: skip


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


@st.composite
def _respelled(draw: st.DrawFn, value: Any) -> Any:
    """``value`` with each structural field under a spelling Google reads, chosen at random (the
    values of a call's ``args`` and a result's ``response`` are the caller's, kept as they are)."""
    if isinstance(value, list):
        return [draw(_respelled(item)) for item in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        spelled = draw(st.sampled_from([key, _snake(key)])) if key in _GEMINI_FIELDS else key
        out[spelled] = item if key in ("args", "response") else draw(_respelled(item))
    return out


def _gemini_secret_bodies(secret: str) -> dict[str, dict[str, Any]]:
    user = {"role": "user", "parts": [{"text": "hello"}]}
    model = {"role": "model", "parts": [{"text": "ok"}]}
    return {
        "user text": {"contents": [{"role": "user", "parts": [{"text": f"key {secret}"}]}]},
        "system instruction": {"systemInstruction": {"parts": [{"text": secret}]}, "contents": [user]},
        "function result": {
            "contents": [
                user,
                {"role": "model", "parts": [{"functionCall": {"name": "bash", "args": {"command": "env"}}}]},
                {
                    "role": "user",
                    "parts": [{"functionResponse": {"name": "bash", "response": {"out": secret}}}],
                },
            ]
        },
        "earlier function call": {
            "contents": [
                user,
                {"role": "model", "parts": [{"functionCall": {"name": "bash", "args": {"command": secret}}}]},
            ]
        },
        "thought": {
            "contents": [user, {"role": "model", "parts": [{"text": secret, "thought": True}]}, user]
        },
        "executable code": {
            "contents": [
                user,
                {"role": "model", "parts": [{"executableCode": {"language": "PYTHON", "code": secret}}]},
            ]
        },
        "tool description": {
            "contents": [user],
            "tools": [{"functionDeclarations": [{"name": "bash", "description": secret}]}],
        },
        "stop sequence": {"contents": [user], "generationConfig": {"stopSequences": [secret]}},
        "invented top-level field": {"contents": [user], "futureField": {"note": secret}},
        "invented part": {"contents": [{"role": "user", "parts": [{"futurePart": {"text": secret}}]}]},
        "non-image inline data": {
            "contents": [
                {"role": "user", "parts": [{"inlineData": {"mimeType": "text/plain", "data": secret}}]}
            ]
        },
        "model turn then user": {"contents": [user, model, {"role": "user", "parts": [{"text": secret}]}]},
    }


@SETTINGS
@given(
    case=st.sampled_from(sorted(_gemini_secret_bodies(""))),
    data=st.data(),
    stream=st.booleans(),
)
def test_a_secret_in_any_gemini_field_under_any_spelling_never_reaches_the_provider(
    secrets_proxy: RunningProxy, fake: FakeProvider, case: str, data: st.DataObject, stream: bool
) -> None:
    body = data.draw(_respelled(_gemini_secret_bodies(SECRET)[case]))
    note(json.dumps(body))
    call = Call(fake)
    response = call.http1(secrets_proxy, "POST", GEMINI_STREAM if stream else GEMINI_CALL, GOOGLE, body)
    if call.upstream():
        _secret_free(call.received())
    else:
        provider_error(response, (400, 500), GOOGLE)
        assert call.nothing_upstream()


def _gemini_parts(kind: str) -> list[dict[str, Any]]:
    if kind == "functionCall":
        return [{"functionCall": {"name": "bash", "args": {"command": DANGER}}, "thoughtSignature": "c2ln"}]
    if kind == "executableCode":
        return [{"executableCode": {"language": "PYTHON", "code": f"import os; os.system('{DANGER}')"}}]
    return [{kind: {"command": DANGER}}]  # a kind of part invented after this was written


def _gemini_answer(parts: list[dict[str, Any]], finished: bool = True) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finished:
        candidate["finishReason"] = "STOP"
    return {"candidates": [candidate], "modelVersion": "gemini-2.5-flash"}


def _gemini_events(body: bytes) -> list[dict[str, Any]]:
    text = body.decode()
    events = [
        line[len("data: ") :] for line in text.replace("\r\n", "\n").split("\n") if line.startswith("data: ")
    ]
    return [json.loads(event) for event in events]


def _dangerous_parts(answers: list[dict[str, Any]]) -> list[Any]:
    """Every part, in any spelling, that is not text and holds the command."""
    found = []
    for answer in answers:
        for candidate in answer.get("candidates") or []:
            content = candidate.get("content") or {}
            for part in content.get("parts") or []:
                kinds = set(part) - {"text", "thought", "thoughtSignature", "thought_signature"}
                if kinds and BLOCKED_RE.search(json.dumps(part)):
                    found.append(part)
    return found


@SETTINGS
@given(
    kind=st.sampled_from(["functionCall", "executableCode", "futureToolCall"]),
    data=st.data(),
    stream=st.booleans(),
)
def test_a_dangerous_gemini_part_of_any_kind_and_spelling_never_reaches_the_client(
    blocklist: RunningProxy, fake: FakeProvider, kind: str, data: st.DataObject, stream: bool
) -> None:
    call = Call(fake)
    if stream:
        words = [_gemini_answer([{"text": w}], finished=False) for w in ("Let", " me", " run it.")]
        events = [data.draw(_respelled(e)) for e in [*words, _gemini_answer(_gemini_parts(kind))]]
        wire = b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in events)
        cuts = sorted(set(data.draw(st.lists(st.integers(1, len(wire) - 1), max_size=6))))
        call.script(
            ScriptedReply.sse(*(wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)))
        )
    else:
        answer = data.draw(_respelled(_gemini_answer([{"text": "Let me run it."}, *_gemini_parts(kind)])))
        call.script(ScriptedReply.json(answer))
    note(repr(fake))
    response = ok(
        call.http1(blocklist, "POST", GEMINI_STREAM if stream else GEMINI_CALL, GOOGLE, gemini_request("run"))
    )
    answers = _gemini_events(response.body) if stream else [json.loads(response.body)]
    assert not _dangerous_parts(answers), answers
    assert NOTE in json.dumps(answers)
