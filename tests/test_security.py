"""Security properties, checked against the real thing (see docs/security.md): credentials sent
by the official SDKs reach no log, no database row and no activity event; the dashboard and
control-plane tokens refuse near misses and are compared in constant time; every server binds
to loopback unless told otherwise; and the CA key is private, or refused."""

import asyncio
import inspect
import json
import os
import re
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

import dashboard.auth
from certs import ensure_ca
from certs.authority import CAKeyPermissionError
from controlplane.access import Tokens
from controlplane.activity import InMemoryBus, open_bus
from controlplane.local import ControlPlaneLocal
from controlplane.policies import NoOpPolicy
from controlplane.recording.records import REDACTED, CallRecord
from controlplane.remote import server as control_plane_server
from controlplane.storage import CallQuery, SQLiteStorage, open_storage
from dashboard.app import create_app
from formats.policing import Policing
from luthien.options import build_parser
from tests.conftest import ROOT, RunningProxy, luthien, start_proxy, wait_until_listening
from tests.databases import fresh_postgres_database, require_service
from tests.fake_provider import FakeProvider
from tests.recorded import recorded

pytestmark = pytest.mark.timeout(240)

REDIS_URL = "redis://127.0.0.1:6379/0"
STREAM = "luthien:activity"

# A call with a credential in a custom header: the SDK's own client, configured only by env.
CUSTOM_HEADER_CALL = """
import sys, openai
client = openai.OpenAI(api_key=sys.argv[1], max_retries=0,
                       default_headers={"X-Custom-Authorization": "Bearer " + sys.argv[2]})
reply = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": sys.argv[3]}])
print(reply.choices[0].message.content)
"""


# --- canaries: credentials never stored, logged or published --------------------------------


async def _dump_database(url: str, only: str | None = None) -> str:
    """Every row of every table (or of the table ``only``), as PostgreSQL's own text rendering of the row."""
    connection = await asyncpg.connect(url)
    try:
        tables = await connection.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema') "
            "AND ($1::text IS NULL OR table_name = $1)",
            only,
        )
        assert tables, "the proxy created no tables"
        lines = []
        for table in tables:
            name = f'"{table["table_schema"]}"."{table["table_name"]}"'
            lines += [row[0] for row in await connection.fetch(f"SELECT t::text FROM {name} t")]
        return "\n".join(lines)
    finally:
        await connection.close()


async def _stream_entries(after_ms: int) -> str:
    client = aioredis.from_url(REDIS_URL)
    try:
        entries = await client.xrange(STREAM, min=f"{after_ms}-0", max="+")
    finally:
        await client.aclose()
    return "\n".join(f"{entry_id!r} {fields!r}" for entry_id, fields in entries)


async def test_canary_credentials_appear_in_no_log_row_or_activity_event(
    fake: FakeProvider, tmp_path: Path
) -> None:
    require_service("Redis", "127.0.0.1", 6379)
    openai_key = f"sk-canary-{uuid.uuid4()}"
    anthropic_key = f"sk-ant-canary-{uuid.uuid4()}"
    header_secret = f"canary-header-{uuid.uuid4()}"
    canaries = (openai_key, anthropic_key, header_secret)
    word = f"tag{uuid.uuid4().hex[:12]}"
    started_ms = int(time.time() * 1000) - 1000  # Redis stream ids are milliseconds since the epoch

    async with fresh_postgres_database() as database_url:
        data_dir = tmp_path / "data"
        ensure_ca(data_dir)
        proxy = start_proxy(
            "canary",
            None,
            fake,
            tmp_path,
            data_dir,
            database_url=database_url,
            extra_args=["--redis-url", REDIS_URL, "--log-level", "DEBUG"],
        )
        try:
            await asyncio.to_thread(wait_until_listening, proxy)
            calls = [
                {"api": api, "stream": stream, "prompt": f"{word} {api} {stream}", "key": key}
                for api, key in (("chat", openai_key), ("responses", openai_key), ("messages", anthropic_key))
                for stream in (False, True)
            ]
            results = await asyncio.to_thread(proxy.sdk, *calls)
            assert all(r["ok"] for r in results), results
            custom = await asyncio.to_thread(_custom_header_call, proxy, openai_key, header_secret, word)
            assert custom.returncode == 0, custom.stderr

            records = await recorded(database_url, word, len(calls) + 1)
            for record in records:
                headers = {name.lower(): value for name, value in record.request_headers}
                credential = headers.get("authorization") or headers.get("x-api-key")
                assert credential == REDACTED
                assert record.api_key_hash and record.status == 200
            assert {r.host for r in records} == {"api.openai.com", "api.anthropic.com"}
            (with_header,) = [r for r in records if "x-custom-authorization" in dict(r.request_headers)]
            assert dict(with_header.request_headers)["x-custom-authorization"] == REDACTED

            stored = await _dump_database(database_url)
            assert word in stored and all(r.call_id in stored for r in records)
            activity = await _wait_for_activity(started_ms, [r.call_id for r in records])
        finally:
            proxy.terminate()
            await asyncio.to_thread(proxy.wait)

        log = proxy.log()
        assert "listening on" in log and "DEBUG" in log
        for canary in canaries:
            assert canary not in log, f"{canary} in the proxy log"
            assert canary not in stored, f"{canary} in the database"
            assert canary not in activity, f"{canary} in the activity stream"


def _custom_header_call(
    proxy: RunningProxy, key: str, secret: str, word: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CUSTOM_HEADER_CALL, key, secret, f"{word} custom header"],
        env=proxy.client_env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )


async def _wait_for_activity(after_ms: int, call_ids: list[str]) -> str:
    """The stream's entries since ``after_ms``, once every call has published something."""
    deadline = time.monotonic() + 15
    while True:
        entries = await _stream_entries(after_ms)
        if all(call_id in entries for call_id in call_ids) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    missing = [call_id for call_id in call_ids if call_id not in entries]
    assert not missing, f"no activity in {STREAM} for {missing}"
    return entries


# HTTP/2 through HTTPS_PROXY, as an agent that prefers it (curl, Go, Node's h2) speaks it. httpx
# offers ALPN "http/1.1" before "h2", and mitmproxy follows the client's order, so this client
# offers h2 alone. Each line of stdin is a call; each line of stdout what came back.
HTTP2_CALLS = """
import json, os, ssl, sys, httpx

class OnlyH2(ssl.SSLContext):
    def set_alpn_protocols(self, protocols):
        super().set_alpn_protocols(["h2"])

context = OnlyH2(ssl.PROTOCOL_TLS_CLIENT)
context.load_verify_locations(os.environ["SSL_CERT_FILE"])
with httpx.Client(http2=True, verify=context, timeout=30) as client:  # HTTPS_PROXY from the env
    for line in sys.stdin:
        call = json.loads(line)
        reply = client.request(call["method"], call["url"], headers=call["headers"], json=call.get("body"))
        print(json.dumps({"version": reply.http_version, "status": reply.status_code, "text": reply.text}))
"""


async def test_http2_query_string_and_blocked_tool_call_canaries(fake: FakeProvider, tmp_path: Path) -> None:
    """An HTTP/2 client's credential headers (which the hpack logger prints at DEBUG), credentials
    in query strings (Gemini's ``?key=``), and a key in the arguments of a blocked tool call reach
    no log line, no activity event (Redis, and the dashboard's ``/api/activity/recent``) and no
    stored path, header or decision. The tool call's key stays where the design keeps payloads:
    in the bodies, which only a redacting policy changes."""
    require_service("Redis", "127.0.0.1", 6379)
    bearer, api_key = f"sk-canary-{uuid.uuid4()}", f"sk-ant-canary-{uuid.uuid4()}"
    query_key = "AIzaSy" + uuid.uuid4().hex + "Q"  # Google's shape: AIza and 35 characters
    query_token = f"qtok-{uuid.uuid4().hex}"
    tool_key = f"sk-canary-tool-{uuid.uuid4().hex}"
    word = f"tag{uuid.uuid4().hex[:12]}"
    openai = {"authorization": f"Bearer {bearer}", "x-api-key": api_key}
    anthropic = {"x-api-key": api_key, "anthropic-version": "2023-06-01"}
    chat = "https://api.openai.com/v1/chat/completions"
    calls = [
        {
            "method": "POST",
            "url": f"{chat}?key={query_key}",
            "headers": openai,
            "body": _chat(f"{word} a", False),
        },
        {
            "method": "POST",
            "url": f"{chat}?Key={query_key}",
            "headers": openai,
            "body": _chat(f"{word} b", True),
        },
        {
            "method": "GET",
            "url": f"https://api.openai.com/v1/models?api_key={query_token}&access_token={query_token}&limit=5",
            "headers": openai,
        },
        {
            "method": "POST",
            "url": chat,
            "headers": openai,
            "body": _chat(f"{word} [scenario:tool_call rm -rf / --token {tool_key}]", True),
        },
        {
            "method": "POST",
            "url": "https://api.anthropic.com/v1/messages",
            "headers": anthropic,
            "body": {
                "model": "claude-sonnet-4-5",
                "max_tokens": 100,
                "messages": [{"role": "user", "content": f"{word} [scenario:tool_call rm -rf ~ {tool_key}]"}],
            },
        },
    ]
    started_ms = int(time.time() * 1000) - 1000

    async with fresh_postgres_database() as database_url:
        data_dir = tmp_path / "data"
        ensure_ca(data_dir)
        blocklist = {"class": "ToolCallBlocklistPolicy", "config": {"patterns": [r"rm\s+-rf"]}}
        proxy = start_proxy(
            "h2canary", blocklist, fake, tmp_path, data_dir, database_url=database_url,
            extra_args=["--redis-url", REDIS_URL],
        )  # fmt: skip
        try:
            await asyncio.to_thread(wait_until_listening, proxy)
            replies = await asyncio.to_thread(_http2_calls, proxy, calls)
            assert [r["version"] for r in replies] == ["HTTP/2"] * len(calls), replies
            assert [r["status"] for r in replies] == [200] * len(calls), replies
            assert all("Blocked the tool call `bash`" in r["text"] for r in replies[3:]), replies

            records = await _all_recorded(database_url, len(calls))
            stored = await _dump_database(database_url)
            decisions = await _dump_database(database_url, only="decisions")
            activity = await _wait_for_activity(started_ms, [r.call_id for r in records])
            dashboard = await _dashboard_view(database_url, [r.call_id for r in records])
        finally:
            proxy.terminate()
            await asyncio.to_thread(proxy.wait)

    paths = sorted(r.path for r in records)
    assert f"/v1/chat/completions?Key={REDACTED}" in paths and f"/v1/chat/completions?key={REDACTED}" in paths
    assert f"/v1/models?api_key={REDACTED}&access_token={REDACTED}&limit=5" in paths
    for record in records:
        assert all(value == REDACTED for name, value in record.request_headers if name in openai)
    decided = {d.stage: d for r in records for d in r.decisions}
    assert decided["stream"].metadata["blocked_tool"] == "bash"  # with the arguments
    assert decided["stream"].metadata["arguments"] == f'{{"command": "rm -rf / --token {REDACTED}"}}'
    assert f'Blocked the tool call `bash` ({{"command": "rm -rf ~ {REDACTED}"}})' in str(
        decided["response"].reason
    )
    assert f"/v1/models?api_key={REDACTED}&access_token={REDACTED}&limit=5" in activity  # passthrough
    assert tool_key in stored  # the agent's prompt and the provider's answer, recorded as sent

    log = proxy.log()
    assert "DEBUG luthien.logs" in log
    key_body = (data_dir / "ca" / "luthien-ca.key").read_text().splitlines()[1]
    assert key_body not in log
    for canary in (bearer, api_key, query_key, query_token, tool_key):
        assert canary not in log, f"{canary} in the proxy log"
        assert canary not in activity, f"{canary} in the activity stream"
        assert canary not in dashboard["activity"], f"{canary} in /api/activity/recent"
        assert canary not in decisions, f"{canary} in a stored decision"
    for canary in (bearer, api_key, query_key, query_token):
        assert canary not in stored, f"{canary} in the database"
        assert canary not in dashboard["calls"], f"{canary} in the dashboard's calls API"


def _chat(prompt: str, stream: bool) -> dict[str, Any]:
    return {"model": "gpt-4o", "stream": stream, "messages": [{"role": "user", "content": prompt}]}


def _http2_calls(proxy: RunningProxy, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-c", HTTP2_CALLS],
        input="".join(json.dumps(call) + "\n" for call in calls),
        env=proxy.client_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


async def _all_recorded(database_url: str, count: int) -> list[CallRecord]:
    """Every call of the (fresh) database, once ``count`` have landed."""
    storage = open_storage(database_url, Path("/nonexistent"))
    try:
        deadline = time.monotonic() + 15
        while (page := await storage.list_calls(CallQuery(limit=100))).total < count:
            assert time.monotonic() < deadline, f"{page.total} of {count} calls recorded"
            await asyncio.sleep(0.1)
        return [r for s in page.calls if (r := await storage.get_call(s.call_id)) is not None]
    finally:
        await storage.close()


async def _dashboard_view(database_url: str, call_ids: list[str]) -> dict[str, str]:
    """What the dashboard's JSON API shows of these calls and their activity."""
    storage, bus = open_storage(database_url, Path("/nonexistent")), open_bus(REDIS_URL)
    app = create_app(storage, bus, TOKEN)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://d", headers=headers) as client:
            calls = [(await client.get("/api/calls")).text]
            calls += [(await client.get(f"/api/calls/{call_id}")).text for call_id in call_ids]
            recent = (await client.get("/api/activity/recent", params={"limit": 1000})).text
    finally:
        await bus.close()
        await storage.close()
    assert all(call_id in recent for call_id in call_ids)
    return {"calls": "\n".join(calls), "activity": recent}


# --- tokens -----------------------------------------------------------------------------------

TOKEN = "tok-" + "a1b2c3d4e5f6" * 3


def _wrong_tokens(token: str) -> list[str]:
    wrong_last = token[:-1] + ("x" if token[-1] != "x" else "y")
    return ["", "not-the-token", wrong_last, token[: len(token) // 2], token[:-1]]


def _near_misses(token: str) -> list[dict[str, str]]:
    """Missing, wrong, off by the last character, a prefix, and the right token without its scheme."""
    return [{}, *({"Authorization": f"Bearer {t}"} for t in _wrong_tokens(token)), {"Authorization": token}]


async def test_dashboard_refuses_missing_wrong_and_near_miss_tokens(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "calls.db")
    await storage.migrate()
    app = create_app(storage, InMemoryBus(), TOKEN)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://d") as client:
            for headers in _near_misses(TOKEN):
                for path in ("/api/calls", "/", "/readyz"):
                    response = await client.get(path, headers=headers)
                    assert response.status_code == 401, (path, headers)
                    assert TOKEN not in response.text
            for wrong in _wrong_tokens(TOKEN):
                login = await client.get("/login", params={"token": wrong})
                assert login.status_code == 401 and "set-cookie" not in login.headers
            ok = await client.get("/api/calls", headers={"Authorization": f"Bearer {TOKEN}"})
            assert ok.status_code == 200 and ok.json()["total"] == 0
            assert (await client.get("/healthz")).status_code == 200
        for wrong in _wrong_tokens(TOKEN):  # the browser's way: the cookie /login sets
            cookies = {dashboard.auth.COOKIE: wrong}
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://d", cookies=cookies) as client:
                assert (await client.get("/api/calls")).status_code == 401, wrong
    finally:
        await storage.close()


async def test_control_plane_refuses_missing_wrong_and_near_miss_tokens(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "calls.db")
    await storage.migrate()
    served = ControlPlaneLocal(NoOpPolicy())
    app = control_plane_server.create_control_plane_app(served, Policing(served), storage, TOKEN)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://controlplane") as client:
            for headers in _near_misses(TOKEN):
                response = await client.get("/v1/policy", headers=headers)
                assert response.status_code == 401, headers
                assert TOKEN not in response.text
                posted = await client.post(
                    "/v1/records", headers=headers, json={"calls": [], "debug_events": []}
                )
                assert posted.status_code == 401, headers
            ok = await client.get("/v1/policy", headers={"Authorization": f"Bearer {TOKEN}"})
            assert ok.status_code == 200 and ok.json()["policy"] == "NoOpPolicy"
    finally:
        await storage.close()


def test_tokens_are_compared_in_constant_time() -> None:
    """A guard against a refactor to ``==``: both checks go through secrets.compare_digest."""
    for function in (dashboard.auth.token_matches, Tokens.who):
        source = inspect.getsource(function)
        assert "secrets.compare_digest(" in source, function.__qualname__
        assert not re.search(r"(given|token)\s*[!=]=|[!=]=\s*(given|token)", source), function.__qualname__


# --- default binds ----------------------------------------------------------------------------

HOST_VARIABLES = ("LUTHIEN_HOST", "LUTHIEN_DASHBOARD_HOST", "LUTHIEN_CONTROL_PLANE_HOST")


def test_every_server_binds_to_loopback_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in HOST_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    parser = build_parser()  # defaults are read from the environment when the parser is built
    checks = {
        ("up",): ("host", "dashboard_host"),
        ("proxy",): ("host",),
        ("dashboard",): ("dashboard_host",),
        ("controlplane",): ("host",),
    }
    for argv, attributes in checks.items():
        args = parser.parse_args(list(argv))
        for attribute in attributes:
            assert getattr(args, attribute) == "127.0.0.1", (argv, attribute)


def test_help_advertises_loopback_defaults() -> None:
    env = {k: v for k, v in os.environ.items() if k not in HOST_VARIABLES}
    for command in ("up", "proxy", "dashboard", "controlplane"):
        result = subprocess.run(
            [sys.executable, "-m", "luthien", command, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        text = " ".join(result.stdout.split())  # argparse wraps help lines
        assert "default 127.0.0.1" in text
        assert "0.0.0.0" not in text


# --- the CA key -------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_key_is_created_private(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # the widest umask: the mode must come from the code, not the umask
    try:
        files = ensure_ca(tmp_path / "data")
    finally:
        os.umask(old_umask)
    assert _mode(files.key) == 0o600
    assert _mode(files.mitmproxy_confdir / "mitmproxy-ca.pem") == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700])
def test_a_ca_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    files = ensure_ca(tmp_path / "data")
    files.key.chmod(mode)
    key_text = files.key.read_text()
    with pytest.raises(CAKeyPermissionError) as raised:
        ensure_ca(tmp_path / "data")
    message = str(raised.value)
    assert str(files.key) in message and "chmod 600" in message
    assert _mode(files.key) == mode  # not silently "fixed": the key may already have leaked
    assert key_text.splitlines()[1] not in message
    files.key.chmod(0o600)
    assert ensure_ca(tmp_path / "data") == files  # once fixed, the same CA is used again


def test_a_read_only_ca_key_is_accepted(tmp_path: Path) -> None:
    files = ensure_ca(tmp_path / "data")
    files.key.chmod(0o400)
    assert ensure_ca(tmp_path / "data") == files


def test_the_cli_refuses_a_world_readable_ca_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    files = ensure_ca(data)
    files.key.chmod(0o644)
    key_body = "".join(files.key.read_text().splitlines()[1:-1])

    result = luthien("certs", "path", "--data-dir", str(data))

    assert result.returncode == 2, result
    assert str(files.key) in result.stderr and "chmod 600" in result.stderr
    assert "Traceback" not in result.stderr
    output = (result.stdout + result.stderr).replace("\n", "")
    assert key_body[:40] not in output and key_body[-40:] not in output
    assert str(files.cert) not in result.stdout  # nothing printed as if all were well
