"""The dashboard's HTTP API, served by uvicorn over a real SQLite storage and an in-memory bus:
auth, readiness, the calls list and detail with their diffs, and the live activity stream, which
also runs on the real Redis through a relay cut under it."""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis

from controlplane.activity import ActivityBus, InMemoryBus, RedisStreamBus
from controlplane.models import ActivityEvent, ActivityType, WireFormat
from controlplane.recording.records import (
    CallOutcome,
    CallRecord,
    DebugEvent,
    Decision,
    Output,
    ToolCall,
    Usage,
)
from controlplane.storage import PostgresStorage, SQLiteStorage, Storage
from dashboard import activity
from dashboard.app import SECURITY_HEADERS, create_app
from dashboard.diff import MAX_WORD_DIFF_CHARS, Row, Skip, diff_lines, word_diff
from dashboard.sessions import code_block
from tests.background_server import BackgroundServer
from tests.databases import fresh_postgres_database, require_service
from tests.tcp_relay import TcpRelay

TOKEN = "test-dashboard-token-5f2a9c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
SYSTEM = "You are a careful coding assistant."
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}"


# --- Records as the proxy writes them (shared with the browser tests) ---------------------------


def anthropic_events(text: str) -> list[tuple[str | None, str]]:
    """A Messages API stream that answers ``text``, one word per delta."""
    deltas = [
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}},
        )
        for word in text.split(" ")
    ]
    events = [
        ("message_start", {"type": "message_start", "message": {"id": "msg_01", "role": "assistant"}}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        *deltas,
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return [(name, json.dumps(data)) for name, data in events]


def call_record(
    call_id: str,
    prompt: str,
    answer: str,
    *,
    final_answer: str | None = None,
    started_at: datetime = T0,
    host: str = "api.anthropic.com",
    model: str = "claude-sonnet-4-5",
    stream: bool = True,
    outcome: CallOutcome = CallOutcome.COMPLETED,
    status: int = 200,
    decisions: tuple[Decision, ...] = (),
) -> CallRecord:
    """One recorded call. ``final_answer`` (when it differs) is what policy turned ``answer`` into;
    a ``blocked`` outcome with a request decision means the provider never saw the request."""
    final_answer = answer if final_answer is None else final_answer
    blocked_before_sending = outcome is CallOutcome.BLOCKED and any(d.stage == "request" for d in decisions)
    if host == "api.openai.com":
        wire, path, agent = WireFormat.OPENAI_CHAT, "/v1/chat/completions", "codex"
        request: dict[str, Any] = {
            "model": model,
            "stream": stream,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        }
    else:
        wire, path, agent = WireFormat.ANTHROPIC_MESSAGES, "/v1/messages", "claude-code"
        request = {
            "model": model,
            "max_tokens": 4096,
            "stream": stream,
            "system": SYSTEM,
            "messages": [{"role": "user", "content": prompt}],
        }

    def response(text: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
        }

    record = CallRecord(
        call_id=call_id,
        started_at=started_at,
        finished_at=started_at + timedelta(milliseconds=1840),
        method="POST",
        host=host,
        path=path,
        wire_format=wire,
        model=model,
        stream=stream,
        agent=agent,
        user_agent=f"{agent}/1.0",
        status=status,
        outcome=outcome,
        response_modified=final_answer != answer,
        ttfb_ms=412.5,
        duration_ms=1840.0,
        usage=Usage(prompt_tokens=1200, completion_tokens=85, total_tokens=1285),
        request_headers=[
            ("content-type", "application/json"),
            ("x-api-key", "sk-ant-secret"),
            ("user-agent", f"{agent}/1.0"),
        ],
        original_request=request,
        final_request=None if blocked_before_sending else request,
        decisions=list(decisions),
    )
    if blocked_before_sending:
        return record
    record.original_output = Output(text=answer, finish_reason="stop")
    record.final_output = Output(text=final_answer, finish_reason="stop")
    if stream:
        record.original_events = anthropic_events(answer)
        record.final_events = anthropic_events(final_answer)
    else:
        record.original_response = response(answer)
        record.final_response = response(final_answer)
    return record


# --- A served dashboard ------------------------------------------------------------------------


@dataclass
class Dashboard:
    url: str
    storage: Storage
    bus: ActivityBus
    server: BackgroundServer

    def on_server[T](self, work: Coroutine[Any, Any, T]) -> "asyncio.Future[T]":
        """Runs ``work`` on the server's event loop: the in-memory bus belongs to that loop."""
        assert self.server.loop is not None
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self.server.loop))

    async def publish(self, *events: ActivityEvent) -> None:
        for event in events:
            await self.on_server(self.bus.publish(event))


@contextmanager
def serve(storage: Storage, bus: ActivityBus) -> Iterator[Dashboard]:
    server = BackgroundServer(create_app(storage, bus, TOKEN), "dashboard")
    url = server.start()
    try:
        yield Dashboard(url, storage, bus, server)
    finally:
        server.stop()


# loop_scope="function": the storage and the clients live in the loop of the test that uses them.
@pytest_asyncio.fixture(loop_scope="function")
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    storage = SQLiteStorage(tmp_path / "calls.db")
    await storage.migrate()
    yield storage
    await storage.close()


@pytest.fixture
def dashboard(storage: SQLiteStorage) -> Iterator[Dashboard]:
    with serve(storage, InMemoryBus()) as served:
        yield served


@pytest_asyncio.fixture(loop_scope="function")
async def client(dashboard: Dashboard) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=dashboard.url, headers=AUTH, timeout=10) as client:
        yield client


# --- Auth --------------------------------------------------------------------------------------


async def test_healthz_needs_no_token(dashboard: Dashboard) -> None:
    async with httpx.AsyncClient(base_url=dashboard.url) as anonymous:
        response = await anonymous.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize(
    "credentials",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": TOKEN},
        {"Cookie": "luthien_dashboard=wrong"},
    ],
)
async def test_api_routes_refuse_a_missing_or_wrong_token_with_json(
    dashboard: Dashboard, credentials: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=dashboard.url, headers=credentials) as anonymous:
        for path in [
            "/api/calls",
            "/api/calls/some-id",
            "/api/activity/recent",
            "/api/activity/stream",
            "/readyz",
        ]:
            response = await anonymous.get(path)
            assert response.status_code == 401, path
            assert response.json() == {"error": "missing or wrong dashboard token"}
            assert TOKEN not in response.text


async def test_pages_and_assets_refuse_a_missing_token_with_a_login_hint(dashboard: Dashboard) -> None:
    async with httpx.AsyncClient(base_url=dashboard.url) as anonymous:
        for path in ["/", "/calls", "/calls/some-id", "/static/monitor.js", "/no-such-page"]:
            response = await anonymous.get(path)
            assert response.status_code == 401, path
            assert response.headers["content-type"].startswith("text/html")
            assert "luthien up" in response.text
            assert "LUTHIEN_DASHBOARD_TOKEN" in response.text


async def test_the_login_page_has_a_public_stylesheet_of_its_own(dashboard: Dashboard) -> None:
    async with httpx.AsyncClient(base_url=dashboard.url) as anonymous:
        page = await anonymous.get("/calls", params={"q": "<b>echoed</b>"}, headers={"X-Note": "echoed"})
        sheet = await anonymous.get("/login.css")
        other = await anonymous.get("/static/style.css")
    assert page.status_code == 401
    assert '<link rel="stylesheet" href="/login.css">' in page.text
    assert "echoed" not in page.text
    assert sheet.status_code == 200
    assert sheet.headers["content-type"].startswith("text/css")
    assert "prefers-color-scheme: dark" in sheet.text
    assert {name: sheet.headers[name] for name in SECURITY_HEADERS} == SECURITY_HEADERS
    assert other.status_code == 401  # the dashboard's own stylesheet still needs the token


async def test_a_bearer_token_opens_the_api_and_the_pages(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/calls")).status_code == 200
    page = await client.get("/calls")
    assert page.status_code == 200
    assert '<script type="module" src="/static/calls.js">' in page.text


async def test_the_login_link_sets_a_strict_http_only_cookie(dashboard: Dashboard) -> None:
    async with httpx.AsyncClient(base_url=dashboard.url) as browser:
        response = await browser.get("/login", params={"token": TOKEN})
        assert response.status_code == 303
        assert response.headers["location"] == "/"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("luthien_dashboard=")
        assert {"HttpOnly", "SameSite=strict", "Path=/"} <= {part.strip() for part in cookie.split(";")}
        # The client now holds the cookie: the pages and the API open without a header.
        assert (await browser.get("/")).status_code == 200
        assert (await browser.get("/api/activity/recent")).status_code == 200


async def test_a_wrong_login_token_sets_nothing(dashboard: Dashboard) -> None:
    async with httpx.AsyncClient(base_url=dashboard.url) as browser:
        for params in [{"token": "wrong"}, {"token": "tëst"}, {}]:
            response = await browser.get("/login", params=params)
            assert response.status_code == 401
            assert "set-cookie" not in response.headers
            assert "luthien up" in response.text
        assert (await browser.get("/")).status_code == 401


async def test_every_answer_carries_the_security_headers(
    dashboard: Dashboard, client: httpx.AsyncClient
) -> None:
    async with httpx.AsyncClient(base_url=dashboard.url) as anonymous:
        responses = [
            await anonymous.get("/healthz"),
            await anonymous.get("/"),
            await anonymous.get("/api/calls"),
        ]
    responses += [
        await client.get(path)
        for path in ["/", "/calls/x", "/static/style.css", "/api/calls", "/api/calls/x"]
    ]
    for response in responses:
        for name, value in SECURITY_HEADERS.items():
            assert response.headers[name] == value, (response.url, name)


async def test_pages_have_no_inline_scripts_or_styles(client: httpx.AsyncClient) -> None:
    for path in ["/", "/calls", "/calls/some-id"]:
        html = (await client.get(path)).text
        assert "<style" not in html and "style=" not in html
        assert html.count("<script") == html.count('<script type="module" src="/static/')


# --- Readiness ---------------------------------------------------------------------------------


async def test_readyz_is_ready_when_the_storage_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


async def test_readyz_is_unavailable_when_the_database_cannot_be_opened(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    broken = SQLiteStorage(tmp_path / "a-file" / "calls.db")
    with serve(broken, InMemoryBus()) as served:
        async with httpx.AsyncClient(base_url=served.url, headers=AUTH) as client:
            ready = await client.get("/readyz")
            calls = await client.get("/api/calls")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert "a-file" in ready.json()["reason"]
    assert calls.status_code == 503
    assert calls.json()["error"].startswith("storage unavailable")


# --- Calls list and detail ---------------------------------------------------------------------

BLOCKED = Decision(stage="request", allowed=False, reason="no recursive deletes here")
REWRITTEN = Decision(stage="stream", allowed=True, reason="uppercased every 2nd word")


def sample_calls() -> list[CallRecord]:
    """Five calls, one minute apart; the last is the newest."""
    at = [T0 + timedelta(minutes=n) for n in range(5)]
    return [
        call_record("c0", "Write a fibonacci function", "def fib(n): ...", started_at=at[0]),
        call_record(
            "c1",
            "Explain this stack trace",
            "The error comes from line 3.",
            started_at=at[1],
            host="api.openai.com",
            model="gpt-5",
            stream=False,
        ),
        call_record(
            "c2",
            "Clean up: rm -rf /",
            "",
            started_at=at[2],
            outcome=CallOutcome.BLOCKED,
            status=403,
            decisions=(BLOCKED,),
        ),
        call_record(
            "c3",
            "Summarise the README",
            "The quick brown fox",
            final_answer="The QUICK brown FOX",
            started_at=at[3],
            decisions=(REWRITTEN,),
        ),
        call_record(
            "c4",
            "Rate limited request",
            "",
            started_at=at[4],
            host="api.openai.com",
            model="gpt-5",
            outcome=CallOutcome.PROVIDER_ERROR,
            status=429,
        ),
    ]


async def list_ids(client: httpx.AsyncClient, **params: Any) -> list[str]:
    response = await client.get("/api/calls", params=params)
    assert response.status_code == 200, response.text
    return [call["call_id"] for call in response.json()["calls"]]


async def test_the_calls_list_filters_and_pages(storage: SQLiteStorage, client: httpx.AsyncClient) -> None:
    await storage.write(sample_calls())

    page = (await client.get("/api/calls")).json()
    assert page["total"] == 5 and page["limit"] == 50 and page["offset"] == 0
    assert [call["call_id"] for call in page["calls"]] == ["c4", "c3", "c2", "c1", "c0"]
    first = page["calls"][0]
    assert (
        first["host"] == "api.openai.com" and first["status"] == 429 and first["outcome"] == "provider_error"
    )
    assert page["calls"][1]["preview"] == "Summarise the README"

    assert await list_ids(client, limit=2) == ["c4", "c3"]
    assert await list_ids(client, limit=2, offset=2) == ["c2", "c1"]
    assert await list_ids(client, limit=2, offset=4) == ["c0"]
    assert await list_ids(client, search="FIBONACCI") == ["c0"]
    assert await list_ids(client, search="quick brown") == ["c3"]
    assert await list_ids(client, host="api.openai.com") == ["c4", "c1"]
    assert await list_ids(client, model="claude-sonnet-4-5") == ["c3", "c2", "c0"]
    assert await list_ids(client, outcome="blocked") == ["c2"]
    assert await list_ids(client, blocked="true") == ["c2"]
    assert await list_ids(client, modified="true") == ["c3"]
    assert await list_ids(client, status=429) == ["c4"]
    assert await list_ids(
        client, since=(T0 + timedelta(minutes=1)).isoformat(), until="2026-03-02T09:33:00Z"
    ) == ["c2", "c1"]
    assert await list_ids(client, host="api.openai.com", outcome="completed") == ["c1"]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 501},
        {"offset": -1},
        {"outcome": "exploded"},
        {"since": "yesterday"},
        {"blocked": "maybe"},
        {"block_kind": "tool_removed"},
        {"sort": "price"},
        {"order": "up"},
    ],
)
async def test_bad_list_parameters_are_422(client: httpx.AsyncClient, params: dict[str, Any]) -> None:
    response = await client.get("/api/calls", params=params)
    assert response.status_code == 422
    assert response.json()["error"].startswith("invalid parameters: query.")


# --- The calls list on each database ----------------------------------------------------------


@dataclass
class OnDatabase:
    writer: Storage  # the test's own: a PostgreSQL pool belongs to the loop that made it
    client: httpx.AsyncClient


@pytest_asyncio.fixture(params=["sqlite", "postgres"], loop_scope="function")
async def on_each_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OnDatabase]:
    async with AsyncExitStack() as stack:
        if request.param == "sqlite":
            path = tmp_path / "calls.db"
            writer, served = SQLiteStorage(path), SQLiteStorage(path)
        else:
            url = await stack.enter_async_context(fresh_postgres_database())
            writer, served = PostgresStorage(url), PostgresStorage(url)
        stack.push_async_callback(writer.close)
        await writer.migrate()
        dashboard = stack.enter_context(serve(served, InMemoryBus()))
        stack.push_async_callback(lambda: dashboard.on_server(served.close()))
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=dashboard.url, headers=AUTH, timeout=10)
        )
        yield OnDatabase(writer, client)


@pytest.mark.parametrize(
    "path",
    [
        "/api/calls?session=abc",
        "/api/calls?model=gpt&Model=gpt",
        "/api/sessions?session=abc",
        "/api/sessions/abc?session=abc",
        "/api/sessions/abc/export?format=md&session=abc",
        "/api/activity/recent?limit=5&session_id=abc",
        "/api/activity/stream?after=0&session_id=abc",
    ],
)
async def test_an_unknown_parameter_is_422_naming_it(on_each_database: OnDatabase, path: str) -> None:
    response = await on_each_database.client.get(path)
    assert response.status_code == 422
    unknown = "Model" if "Model=" in path else "session_id" if "/api/activity" in path else "session"
    assert response.json() == {"error": f"invalid parameters: query.{unknown}: unknown parameter"}


async def test_the_known_parameters_of_each_list_are_accepted(on_each_database: OnDatabase) -> None:
    client = on_each_database.client
    every_filter = {
        **{"search": "x", "host": "x", "model": "x", "outcome": "completed", "status": 200},
        **{"blocked": "false", "block_kind": "stream_ended", "modified": "false"},
        **{"session_id": "x", "agent": "x", "api_key_hash": "x"},
        **{"since": "2026-03-02T09:30:00Z", "until": "2026-03-03T09:30:00Z"},
        **{"sort": "cost", "order": "asc", "limit": 10, "offset": 0},
    }
    assert (await client.get("/api/calls", params=every_filter)).status_code == 200
    session_filter = {"agent": "x", "api_key_hash": "x", "blocked": "true", "limit": 10, "offset": 0}
    assert (await client.get("/api/sessions", params=session_filter)).status_code == 200
    activity_filter = {"host": "x", "model": "x", "type": "completed", "outcome": "completed"}
    assert (await client.get("/api/activity/recent", params={**activity_filter, "limit": 5})).json() == []


def priced_calls() -> list[CallRecord]:
    """Three calls a minute apart: Sonnet at $3 in and $15 out per million tokens (LiteLLM's map),
    GPT-5 at $1.25 and $10, and a model the map does not price."""
    sonnet = call_record("sonnet", "Refactor the parser", "Done.", started_at=T0)
    gpt = call_record(
        "gpt",
        "Explain the diff",
        "It renames.",
        started_at=T0 + timedelta(minutes=1),
        host="api.openai.com",
        model="gpt-5",
    )
    unknown = call_record(
        "unknown", "Hello", "Hi.", started_at=T0 + timedelta(minutes=2), model="acme-coder-2-preview"
    )
    return [
        sonnet.model_copy(update={"duration_ms": 2500.0, "ttfb_ms": 600.0, "session_id": "sess-1"}),
        gpt.model_copy(
            update={
                "duration_ms": 900.0,
                "ttfb_ms": None,
                "usage": Usage(prompt_tokens=40000, completion_tokens=1000, total_tokens=41000),
            }
        ),
        unknown.model_copy(update={"duration_ms": 300.0, "ttfb_ms": 120.0}),
    ]


async def test_the_list_sorts_filters_by_part_of_a_model_and_totals_costs(
    on_each_database: OnDatabase,
) -> None:
    await on_each_database.writer.write(priced_calls())
    client = on_each_database.client

    page = (await client.get("/api/calls")).json()
    calls = {call["call_id"]: call for call in page["calls"]}
    sonnet_cost = 1200 * 3e-6 + 85 * 15e-6
    gpt_cost = 40000 * 1.25e-6 + 1000 * 10e-6
    assert calls["sonnet"]["cost_usd"] == pytest.approx(sonnet_cost)
    assert calls["gpt"]["cost_usd"] == pytest.approx(gpt_cost)
    assert calls["unknown"]["cost_usd"] is None
    assert (calls["sonnet"]["session_id"], calls["gpt"]["session_id"]) == ("sess-1", None)
    assert page["totals"] == {
        "prompt_tokens": 42400,
        "completion_tokens": 1170,
        "total_tokens": 43570,
        "cost_usd": pytest.approx(sonnet_cost + gpt_cost),
        "unpriced_calls": 1,
    }

    assert await list_ids(client) == ["unknown", "gpt", "sonnet"]
    assert await list_ids(client, sort="time", order="asc") == ["sonnet", "gpt", "unknown"]
    assert await list_ids(client, sort="duration") == ["sonnet", "gpt", "unknown"]
    assert await list_ids(client, sort="duration", order="asc") == ["unknown", "gpt", "sonnet"]
    assert await list_ids(client, sort="ttfb") == ["sonnet", "unknown", "gpt"]  # none last
    assert await list_ids(client, sort="ttfb", order="asc") == ["unknown", "sonnet", "gpt"]
    assert await list_ids(client, sort="tokens") == ["gpt", "unknown", "sonnet"]
    assert await list_ids(client, sort="cost") == ["gpt", "sonnet", "unknown"]
    assert await list_ids(client, sort="cost", order="asc") == ["sonnet", "gpt", "unknown"]

    assert await list_ids(client, model="SONNET") == ["sonnet"]
    assert await list_ids(client, model="c") == ["unknown", "sonnet"]  # claude-…, acme-coder-…
    assert await list_ids(client, host="OpenAI") == ["gpt"]
    filtered = (await client.get("/api/calls", params={"model": "acme", "sort": "cost"})).json()
    assert filtered["totals"] == {
        "prompt_tokens": 1200,
        "completion_tokens": 85,
        "total_tokens": 1285,
        "cost_usd": None,
        "unpriced_calls": 1,
    }


async def test_the_detail_of_a_rewritten_stream_shows_what_changed(
    storage: SQLiteStorage, client: httpx.AsyncClient
) -> None:
    await storage.write([*sample_calls(), DebugEvent(call_id="c3", type="judge", payload={"score": 0.2})])

    detail = (await client.get("/api/calls/c3")).json()
    assert detail["call"]["call_id"] == "c3"
    listed = (await client.get("/api/calls", params={"call_id": "c3"})).json()["calls"]
    assert [c["call_id"] for c in listed] == ["c3"]
    assert detail["cost_usd"] == listed[0]["cost_usd"] and detail["cost_usd"] > 0  # as the list has it
    assert detail["call"]["decisions"] == [REWRITTEN.model_dump()]
    assert ["x-api-key", "[redacted]"] in detail["call"]["request_headers"]
    assert [(event["type"], event["payload"]) for event in detail["debug_events"]] == [
        ("judge", {"score": 0.2})
    ]

    diffs = detail["diffs"]
    assert diffs["request"] == {"changed": False, "rows": [{"op": "skip", "count": 12}], "only": None}
    assert diffs["tool_calls"] == {"changed": False, "rows": [], "only": None}
    assert diffs["output_text"] == {
        "changed": True,
        "only": None,
        "rows": [
            {
                "op": "replace",
                "left": "The quick brown fox",
                "right": "The QUICK brown FOX",
                "left_no": 1,
                "right_no": 1,
                # Word by word: what differs, and what is the same on both sides.
                "left_parts": [
                    {"text": "The ", "changed": False},
                    {"text": "quick", "changed": True},
                    {"text": " brown ", "changed": False},
                    {"text": "fox", "changed": True},
                ],
                "right_parts": [
                    {"text": "The ", "changed": False},
                    {"text": "QUICK", "changed": True},
                    {"text": " brown ", "changed": False},
                    {"text": "FOX", "changed": True},
                ],
            }
        ],
    }
    # Events render one per line as "event: data"; the deltas for "quick" and "fox" changed.
    response = diffs["response"]
    assert response["changed"] is True
    changed = [(row["left"], row["right"]) for row in response["rows"] if row["op"] != "equal"]
    delta = 'content_block_delta: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "%s"}}'
    assert changed == [(delta % "quick", delta % "QUICK"), (delta % "fox", delta % "FOX")]
    assert response["rows"][0]["left"].startswith("message_start: ")


async def test_each_kind_of_block_is_a_block_listed_and_filtered_by_its_kind(
    storage: SQLiteStorage, client: httpx.AsyncClient
) -> None:
    removed = Decision(
        stage="stream",
        allowed=True,  # the answer went on without the call: the policy's result allows it
        reason="it matches the blocklist rule no-rm",
        metadata={"blocked_tool": "bash", "rule_id": "no-rm"},
    )
    ended = Decision(stage="stream", allowed=False, reason="stream ended by policy")
    await storage.write(
        [
            *sample_calls(),
            call_record(
                "t1", "Clean up", "Cleaning.", started_at=T0 + timedelta(minutes=6), decisions=(removed,)
            ),
            call_record(
                "t2",
                "Go on",
                "Going",
                started_at=T0 + timedelta(minutes=7),
                outcome=CallOutcome.BLOCKED,
                decisions=(removed, ended),
            ),
        ]
    )
    assert await list_ids(client, blocked="true") == ["t2", "t1", "c2"]
    assert await list_ids(client, outcome="blocked") == ["t2", "t1", "c2"]
    assert await list_ids(client, block_kind="tool_call_removed") == ["t1"]
    assert await list_ids(client, block_kind="stream_ended") == ["t2"]
    assert await list_ids(client, block_kind="request_blocked") == ["c2"]
    kinds = {c["call_id"]: c["block_kind"] for c in (await client.get("/api/calls")).json()["calls"]}
    assert kinds == {
        "t2": "stream_ended",
        "t1": "tool_call_removed",
        "c4": None,
        "c3": None,
        "c2": "request_blocked",
        "c1": None,
        "c0": None,
    }

    call = (await client.get("/api/calls/t1")).json()["call"]
    assert call["outcome"] == "blocked" and call["block_kind"] == "tool_call_removed"
    (decision,) = call["decisions"]
    assert decision["allowed"] is False and decision["block"] == "tool_call_removed"
    assert decision["metadata"]["rule_id"] == "no-rm"


async def test_stream_events_are_compared_by_what_they_say_not_their_bytes(
    storage: SQLiteStorage, client: httpx.AsyncClient
) -> None:
    """Once a stream diverges, Luthien writes every later event itself: the same content with
    its keys in another order and null fields left out. Only the event policy changed differs."""
    chunks = [
        {"id": "c", "choices": [{"index": 0, "delta": {"content": w}}], "usage": None} for w in ("a", "b")
    ]
    rewritten = {"choices": [{"delta": {"content": "A"}, "index": 0}], "id": "c"}
    same = {"choices": [{"delta": {"content": "b"}, "index": 0}], "id": "c"}
    record = call_record("s1", "Say a b", "a b", final_answer="A b", host="api.openai.com", model="gpt-5")
    record.original_events = [(None, json.dumps(chunk)) for chunk in chunks] + [(None, "[DONE]")]
    record.final_events = [(None, json.dumps(rewritten)), (None, json.dumps(same)), (None, "[DONE]")]
    await storage.write([record])

    response = (await client.get("/api/calls/s1")).json()["diffs"]["response"]
    assert response["changed"] is True
    assert [row["op"] for row in response["rows"]] == ["replace", "equal", "equal"]
    replaced = response["rows"][0]
    assert [part["text"] for part in replaced["left_parts"] if part["changed"]] != []
    # The equal row shows each side as it was sent.
    assert response["rows"][1]["left"] == json.dumps(chunks[1]) and response["rows"][1][
        "right"
    ] == json.dumps(same)


async def test_the_detail_of_an_unchanged_call_shows_no_changes(
    storage: SQLiteStorage, client: httpx.AsyncClient
) -> None:
    await storage.write(sample_calls())
    for call_id in ["c0", "c1"]:
        diffs = (await client.get(f"/api/calls/{call_id}")).json()["diffs"]
        assert {name: diff["changed"] for name, diff in diffs.items()} == dict.fromkeys(diffs, False)
        assert {row["op"] for diff in diffs.values() for row in diff["rows"]} <= {"equal", "skip"}


async def test_a_request_blocked_before_sending_has_one_side_only(
    storage: SQLiteStorage, client: httpx.AsyncClient
) -> None:
    """The provider never saw it: that is said, not shown as a body deleted line by line."""
    await storage.write(sample_calls())
    diffs = (await client.get("/api/calls/c2")).json()["diffs"]
    assert diffs["request"] == {"changed": False, "rows": [], "only": "left"}
    assert diffs["response"]["only"] is None


async def test_an_unknown_call_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/calls/no-such-call")
    assert response.status_code == 404
    assert response.json() == {"error": "no call with this id"}


# --- Sessions ----------------------------------------------------------------------------------

CLAUDE_SESSION = "3f9c2a1e-8b7d-4c6f-9e21-5d4a3b2c1f00"
CODEX_SESSION = "0198c7e2-5b1a-7f30-9d4e-2a6c8b1f0e57"
NO_RM = Decision(
    stage="request", allowed=False, reason="matches rm -rf", metadata={"rule_id": "no-rm", "tool": "bash"}
)
TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"command": "pytest -x"}}


def claude_session() -> list[CallRecord]:
    """Claude Code fixing a test in three turns: it runs the tests, reads their result and
    answers; then asks to delete the build directory, which policy refuses."""
    prompt = "Fix the failing test in tests/test_dates.py"
    first = call_record("cc-1", prompt, "Let me run the tests.", started_at=T0)
    first.final_output = Output(
        text="Let me run the tests.",
        tool_calls=[ToolCall(id="toolu_1", name="bash", arguments='{"command": "pytest -x"}')],
    )
    second = call_record(
        "cc-2", prompt, "The date parser drops the zone.", started_at=T0 + timedelta(seconds=20)
    )
    second.original_request = {
        "model": "claude-sonnet-4-5",
        "system": SYSTEM,
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me run the tests."}, TOOL_USE]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "FAILED test_parse_dates"}
                ],
            },
        ],
    }
    third = call_record(
        "cc-3",
        "Now clean up: rm -rf build",
        "",
        started_at=T0 + timedelta(seconds=50),
        outcome=CallOutcome.BLOCKED,
        status=403,
        decisions=(NO_RM,),
    )
    update = {"session_id": CLAUDE_SESSION, "agent": "claude-cli", "api_key_hash": "hash-claude"}
    return [call.model_copy(update=update) for call in (first, second, third)]


def codex_session() -> list[CallRecord]:
    """Codex on the Responses API, two turns on another key; its answer was rewritten."""
    first = call_record("cx-1", "Add a --verbose flag", "Done.", host="api.openai.com", model="gpt-5-codex")
    first.wire_format, first.path = WireFormat.OPENAI_RESPONSES, "/v1/responses"
    first.original_request = {"model": "gpt-5-codex", "instructions": SYSTEM, "input": "Add a --verbose flag"}
    second = first.model_copy(
        update={
            "call_id": "cx-2",
            "started_at": T0 + timedelta(minutes=2),
            "response_modified": True,
            "decisions": [REWRITTEN],
            "final_output": Output(text="DONE, flag ADDED."),
            "original_request": {
                "model": "gpt-5-codex",
                "input": [
                    {"role": "user", "content": [{"type": "input_text", "text": "Add a --verbose flag"}]},
                    {"type": "function_call", "call_id": "fc_1", "name": "shell", "arguments": "{}"},
                    {"type": "function_call_output", "call_id": "fc_1", "output": "ok"},
                    {"role": "user", "content": "and document it"},
                ],
            },
        }
    )
    update = {"session_id": CODEX_SESSION, "agent": "codex_cli_rs", "api_key_hash": "hash-codex"}
    return [call.model_copy(update=update) for call in (first, second)]


async def test_sessions_are_listed_with_their_agents_and_keys(on_each_database: OnDatabase) -> None:
    await on_each_database.writer.write([*claude_session(), *codex_session(), *sample_calls()])
    client = on_each_database.client

    page = (await client.get("/api/sessions")).json()
    assert page["total"] == 2
    assert [s["session_id"] for s in page["sessions"]] == [CODEX_SESSION, CLAUDE_SESSION]
    claude = page["sessions"][1]
    assert {k: claude[k] for k in ("agent", "api_key_hash", "turns", "blocks", "modified", "preview")} == {
        "agent": "claude-cli",
        "api_key_hash": "hash-claude",
        "turns": 3,
        "blocks": 1,
        "modified": 0,
        "preview": "Fix the failing test in tests/test_dates.py",
    }
    assert claude["duration_ms"] == pytest.approx(51_840)  # the last turn ends 1.84 s after its start
    assert claude["total_tokens"] == 3 * 1285
    assert page["agents"] == [
        {"value": "claude-cli", "sessions": 1},
        {"value": "codex_cli_rs", "sessions": 1},
    ]
    assert [f["value"] for f in page["api_key_hashes"]] == ["hash-claude", "hash-codex"]

    only = (await client.get("/api/sessions", params={"agent": "codex_cli_rs"})).json()
    assert [s["session_id"] for s in only["sessions"]] == [CODEX_SESSION]
    blocked = (await client.get("/api/sessions", params={"blocked": "true"})).json()
    assert [s["session_id"] for s in blocked["sessions"]] == [CLAUDE_SESSION]
    keyed = (await client.get("/api/sessions", params={"api_key_hash": "hash-claude"})).json()
    assert [s["session_id"] for s in keyed["sessions"]] == [CLAUDE_SESSION]
    # The calls list filters by the same.
    assert await list_ids(client, session_id=CLAUDE_SESSION) == ["cc-3", "cc-2", "cc-1"]
    assert await list_ids(client, agent="codex_cli_rs") == ["cx-2", "cx-1"]
    assert await list_ids(client, api_key_hash="hash-claude", blocked="true") == ["cc-3"]
    assert (await client.get("/api/sessions", params={"limit": 501})).status_code == 422


async def test_a_session_reads_as_its_conversation_with_policy_inline(on_each_database: OnDatabase) -> None:
    await on_each_database.writer.write([*claude_session(), *codex_session()])
    client = on_each_database.client

    detail = (await client.get(f"/api/sessions/{CLAUDE_SESSION}")).json()
    assert detail["session"]["turns"] == 3 and (detail["offset"], detail["limit"]) == (0, 100)
    first, second, third = detail["turns"]
    assert [t["call_id"] for t in detail["turns"]] == ["cc-1", "cc-2", "cc-3"]
    assert first["input"] == [
        {
            "role": "user",
            "parts": [
                {
                    "kind": "text",
                    "text": "Fix the failing test in tests/test_dates.py",
                    "name": None,
                    "omitted_chars": 0,
                }
            ],
        }
    ]
    assert [(p["kind"], p["name"], p["text"]) for p in first["output"]] == [
        ("text", None, "Let me run the tests."),
        ("tool_call", "bash", '{"command": "pytest -x"}'),
    ]
    # The second turn's input is what followed the first answer: the tool's result.
    assert [(m["role"], [p["kind"] for p in m["parts"]]) for m in second["input"]] == [
        ("tool", ["tool_result"])
    ]
    assert second["input"][0]["parts"][0]["text"] == "FAILED test_parse_dates"
    assert second["actions"] == []
    assert (third["outcome"], third["block_kind"], third["output"]) == ("blocked", "request_blocked", [])
    assert third["actions"] == [
        {"stage": "request", "block": "request_blocked", "rule": "no-rm", "reason": "matches rm -rf"}
    ]

    codex = (await client.get(f"/api/sessions/{CODEX_SESSION}")).json()
    one, two = codex["turns"]
    assert [p["text"] for m in one["input"] for p in m["parts"]] == ["Add a --verbose flag"]
    assert [(m["role"], m["parts"][0]["text"]) for m in two["input"]] == [
        ("tool", "ok"),
        ("user", "and document it"),
    ]
    assert two["response_modified"] and [p["text"] for p in two["output"]] == ["DONE, flag ADDED."]
    assert two["actions"] == [
        {"stage": "stream", "block": None, "rule": None, "reason": "uppercased every 2nd word"}
    ]

    paged = (await client.get(f"/api/sessions/{CLAUDE_SESSION}", params={"offset": 1, "limit": 1})).json()
    assert [t["call_id"] for t in paged["turns"]] == ["cc-2"]
    missing = await client.get("/api/sessions/no-such-session")
    assert (missing.status_code, missing.json()) == (404, {"error": "no session with this id"})


async def test_a_call_knows_its_neighbours_in_its_session(on_each_database: OnDatabase) -> None:
    await on_each_database.writer.write([*claude_session(), *sample_calls()])
    client = on_each_database.client
    middle = (await client.get("/api/calls/cc-2")).json()
    assert middle["session"] == {
        "session_id": CLAUDE_SESSION,
        "turn": 2,
        "turns": 3,
        "previous": "cc-1",
        "next": "cc-3",
    }
    assert (await client.get("/api/calls/cc-1")).json()["session"]["previous"] is None
    assert (await client.get("/api/calls/c0")).json()["session"] is None


async def test_a_session_exports_as_json_and_markdown(on_each_database: OnDatabase) -> None:
    await on_each_database.writer.write([*claude_session(), *codex_session()])
    client = on_each_database.client

    exported = await client.get(f"/api/sessions/{CLAUDE_SESSION}/export", params={"format": "json"})
    assert exported.status_code == 200
    assert exported.headers["content-type"] == "application/json"
    assert exported.headers["content-disposition"] == (
        f'attachment; filename="luthien-session-{CLAUDE_SESSION}.json"'
    )
    whole = exported.json()
    assert whole["turns"] == (await client.get(f"/api/sessions/{CLAUDE_SESSION}")).json()["turns"]
    assert whole["session"]["session_id"] == CLAUDE_SESSION

    md = await client.get(f"/api/sessions/{CLAUDE_SESSION}/export", params={"format": "md"})
    assert md.status_code == 200 and md.headers["content-type"] == "text/markdown; charset=utf-8"
    text = md.text
    assert text.startswith(f"# Session {CLAUDE_SESSION}\n")
    assert "- Agent: claude-cli" in text and "- Credential hash: hash-claude" in text
    assert "3 turns · 1 blocked" in text
    order = [
        "## Turn 1",
        "Fix the failing test in tests/test_dates.py",
        "Tool call `bash`",
        '{"command": "pytest -x"}',
        "## Turn 2",
        "**Tool result**",
        "FAILED test_parse_dates",
        "The date parser drops the zone.",
        "## Turn 3",
        "> Policy (request): request blocked by rule `no-rm`: matches rm -rf",
    ]
    places = [text.index(piece) for piece in order]
    assert places == sorted(places), "the turns are in order"
    assert "sk-ant-secret" not in text and "sk-ant-secret" not in exported.text  # the x-api-key header

    codex_md = (await client.get(f"/api/sessions/{CODEX_SESSION}/export", params={"format": "md"})).text
    assert "> Policy changed the answer" in codex_md
    assert (await client.get(f"/api/sessions/{CLAUDE_SESSION}/export")).headers["content-type"] == (
        "application/json"
    )
    assert (
        await client.get(f"/api/sessions/{CLAUDE_SESSION}/export", params={"format": "pdf"})
    ).status_code == 422
    assert (await client.get("/api/sessions/nope/export", params={"format": "md"})).status_code == 404


async def test_a_session_id_with_a_slash_has_its_pages(on_each_database: OnDatabase) -> None:
    """An SDK app's user (its session) may be a path-like name."""
    call = call_record("app-1", "Hello", "Hi").model_copy(update={"session_id": "team/alice"})
    await on_each_database.writer.write([call])
    client = on_each_database.client
    assert (await client.get("/api/sessions/team%2Falice")).json()["session"]["turns"] == 1
    assert (await client.get("/api/sessions/team/alice/export", params={"format": "md"})).status_code == 200
    assert (await client.get("/sessions/team%2Falice")).status_code == 200


def test_markdown_fences_outlast_the_backticks_they_hold() -> None:
    assert code_block("plain") == ["```", "plain", "```"]
    assert code_block("a ```` b") == ["`````", "a ```` b", "`````"]


def test_long_unchanged_runs_collapse_around_each_change() -> None:
    left = [f"line {n}" for n in range(1, 31)]
    right = [*left[:9], "changed", *left[10:28], "added", *left[28:]]
    rows = diff_lines(left, right).rows
    assert [row.op for row in rows] == [
        "skip",
        *["equal"] * 3,
        "replace",
        *["equal"] * 3,
        "skip",
        *["equal"] * 3,
        "insert",
        *["equal"] * 2,
    ]
    assert rows[0] == Skip(count=6)
    replaced = rows[4]
    assert isinstance(replaced, Row)
    assert (replaced.op, replaced.left, replaced.right, replaced.left_no, replaced.right_no) == (
        "replace",
        "line 10",
        "changed",
        10,
        10,
    )
    assert rows[8] == Skip(count=12)
    assert rows[12] == Row(op="insert", left=None, right="added", left_no=None, right_no=29)


def test_a_replaced_line_is_marked_word_by_word_unless_it_is_very_long() -> None:
    left, right = 'rm -rf "/tmp/build" now', 'rm -rf "/tmp/[REDACTED]" now'
    left_parts, right_parts = word_diff(left, right)
    assert left_parts is not None and right_parts is not None
    assert "".join(p.text for p in left_parts) == left and "".join(p.text for p in right_parts) == right
    assert [p.text for p in left_parts if p.changed] == ["build"]
    assert [p.text for p in right_parts if p.changed] == ["[REDACTED]"]
    long = "x " * MAX_WORD_DIFF_CHARS
    assert word_diff(long, long + "y") == (None, None)


def test_a_replace_of_unequal_length_pairs_what_it_can() -> None:
    rows = diff_lines(["a", "b", "c"], ["a", "x", "y", "z", "c"]).rows
    assert [(row.op, row.left, row.right) for row in rows if isinstance(row, Row)] == [
        ("equal", "a", "a"),
        ("replace", "b", "x"),
        ("insert", None, "y"),
        ("insert", None, "z"),
        ("equal", "c", "c"),
    ]


# --- Live activity -----------------------------------------------------------------------------


def event(
    call_id: str,
    kind: ActivityType,
    host: str = "api.anthropic.com",
    model: str = "claude-sonnet-4-5",
    **data: Any,
) -> ActivityEvent:
    return ActivityEvent(call_id=call_id, type=kind, host=host, model=model, data=data)


@asynccontextmanager
async def sse(
    client: httpx.AsyncClient, headers: dict[str, str] | None = None, **params: Any
) -> AsyncIterator[AsyncIterator[dict[str, str]]]:
    """The stream's frames as {field: value}; comments appear under the field "". Returns once
    the first frame has arrived, which is when the server has subscribed."""
    async with client.stream("GET", "/api/activity/stream", params=params, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")

        async def frames() -> AsyncIterator[dict[str, str]]:
            fields: dict[str, str] = {}
            async for line in response.aiter_lines():
                if line:
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
                elif fields:
                    yield fields
                    fields = {}

        stream = frames()
        async with asyncio.timeout(5):
            assert await anext(stream) == {"retry": "2000"}
        yield stream


async def activities(stream: AsyncIterator[dict[str, str]], count: int) -> list[tuple[str, ActivityEvent]]:
    received: list[tuple[str, ActivityEvent]] = []
    async with asyncio.timeout(5):
        while len(received) < count:
            frame = await anext(stream)
            if frame.get("event") == "activity":
                received.append((frame["id"], ActivityEvent.model_validate_json(frame["data"])))
    return received


async def statuses(
    stream: AsyncIterator[dict[str, str]], until: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The stream's ``status`` events, read until one matches ``until`` (keepalives skipped)."""
    async with asyncio.timeout(10):
        while True:
            frame = await anext(stream)
            if frame.get("event") == "status" and until(status := json.loads(frame["data"])):
                return status


async def test_published_events_arrive_on_the_stream_with_their_ids(
    dashboard: Dashboard, client: httpx.AsyncClient
) -> None:
    async with sse(client) as stream:
        sent = [event("c1", ActivityType.REQUEST_RECEIVED), event("c1", ActivityType.COMPLETED, status=200)]
        await dashboard.publish(*sent)
        received = await activities(stream, 2)
    ids = [published.id for published in await dashboard.bus.recent(10)]
    assert received == list(zip(ids, sent, strict=True))


@pytest.mark.parametrize("how", ["header", "query"])
async def test_a_reconnecting_client_gets_exactly_the_events_it_missed(
    dashboard: Dashboard, client: httpx.AsyncClient, how: str
) -> None:
    await dashboard.publish(*[event(f"c{n}", ActivityType.COMPLETED) for n in range(5)])
    seen = (await dashboard.bus.recent(10))[1].id  # the client saw c0 and c1, then lost the connection
    resume = {"headers": {"Last-Event-ID": seen}} if how == "header" else {"after": seen}
    async with sse(client, **resume) as stream:
        await dashboard.publish(event("live", ActivityType.COMPLETED))
        received = await activities(stream, 4)
    assert [e.call_id for _, e in received] == ["c2", "c3", "c4", "live"]


async def test_last_event_id_wins_over_after(dashboard: Dashboard, client: httpx.AsyncClient) -> None:
    await dashboard.publish(*[event(f"c{n}", ActivityType.COMPLETED) for n in range(3)])
    ids = [published.id for published in await dashboard.bus.recent(10)]
    async with sse(client, headers={"Last-Event-ID": ids[1]}, after=ids[0]) as stream:
        assert [e.call_id for _, e in await activities(stream, 1)] == ["c2"]


async def test_the_stream_filters_by_host_model_type_and_outcome(
    dashboard: Dashboard, client: httpx.AsyncClient
) -> None:
    def mixed() -> list[ActivityEvent]:
        """New events each time: the bus would not publish the same ones again."""
        return [
            event("a-done", ActivityType.COMPLETED),
            event("a-start", ActivityType.REQUEST_RECEIVED),
            event("o-blocked", ActivityType.BLOCKED, host="api.openai.com", model="gpt-5"),
            event("a-blocked", ActivityType.BLOCKED),
            event("a-error", ActivityType.ERROR, model="claude-haiku-4-5"),
        ]

    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"host": "ANTHROPIC"}, ["a-done", "a-start", "a-blocked", "a-error"]),
        ({"model": "haiku"}, ["a-error"]),
        ({"type": ["request_received", "error"]}, ["a-start", "a-error"]),
        ({"outcome": ["blocked", "error"], "host": "anthropic"}, ["a-blocked", "a-error"]),
    ]
    for params, expected in cases:
        async with sse(client, **params) as stream:
            await dashboard.publish(
                *mixed(),
                event("end", ActivityType.ERROR, host="api.anthropic.com.end", model="claude-haiku-4-5"),
            )
            received = [e.call_id for _, e in await activities(stream, len(expected) + 1)]
        assert received == [*expected, "end"], params


async def test_recent_returns_the_latest_matching_events_oldest_first(
    dashboard: Dashboard, client: httpx.AsyncClient
) -> None:
    await dashboard.publish(
        *[event(f"c{n}", ActivityType.COMPLETED if n % 2 else ActivityType.BLOCKED) for n in range(6)]
    )
    recent = (await client.get("/api/activity/recent", params={"limit": 2, "outcome": "blocked"})).json()
    assert [published["event"]["call_id"] for published in recent] == ["c2", "c4"]
    assert all(set(published) == {"id", "event"} for published in recent)
    everything = (await client.get("/api/activity/recent")).json()
    assert [published["event"]["call_id"] for published in everything] == [f"c{n}" for n in range(6)]
    assert (await client.get("/api/activity/recent", params={"type": "nonsense"})).status_code == 422


async def test_an_idle_stream_sends_keepalive_comments(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(activity, "KEEPALIVE_SECONDS", 0.1)
    async with sse(client) as stream, asyncio.timeout(5):
        assert json.loads((await anext(stream))["data"])["reachable"]  # the bus's status comes first
        assert await anext(stream) == {"": "keepalive"}


async def test_the_stream_ends_when_the_client_disconnects(dashboard: Dashboard) -> None:
    async def task_count() -> int:
        return len(asyncio.all_tasks())

    idle = await dashboard.on_server(task_count())
    async with httpx.AsyncClient(base_url=dashboard.url, headers=AUTH) as client, sse(client) as stream:
        await dashboard.publish(event("c1", ActivityType.COMPLETED))
        await activities(stream, 1)
        assert await dashboard.on_server(task_count()) > idle
    # The request's task and its pending read on the subscription are gone, not parked forever.
    async with asyncio.timeout(3):
        while await dashboard.on_server(task_count()) > idle:
            await asyncio.sleep(0.05)


# --- Live activity while Redis is down ---------------------------------------------------------


@pytest.fixture
def redis_stream() -> Iterator[str]:
    """A Redis stream key of this test's own, deleted afterwards."""
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    key = f"luthien:test:{uuid.uuid4().hex}"
    yield key
    with redis.Redis(host=REDIS_HOST, port=REDIS_PORT) as direct:
        direct.delete(key, f"{key}:published")


@asynccontextmanager
async def over_relayed_redis(storage: Storage, stream: str) -> AsyncIterator[tuple[Dashboard, TcpRelay]]:
    """A dashboard following ``stream`` on the real Redis through a relay the test can cut."""
    with TcpRelay(REDIS_HOST, REDIS_PORT) as relay:
        bus = RedisStreamBus(f"redis://127.0.0.1:{relay.port}", stream=stream)
        with serve(storage, bus) as dashboard:
            try:
                yield dashboard, relay
            finally:
                await dashboard.on_server(bus.close())


async def test_recent_activity_is_a_json_503_while_redis_is_down(storage: Storage, redis_stream: str) -> None:
    async with (
        over_relayed_redis(storage, redis_stream) as (dashboard, relay),
        httpx.AsyncClient(base_url=dashboard.url, headers=AUTH, timeout=10) as client,
    ):
        assert (await client.get("/api/activity/recent")).status_code == 200
        relay.cut()
        down = await client.get("/api/activity/recent")
        relay.restore()
        assert (await client.get("/api/activity/recent")).status_code == 200
    assert down.status_code == 503
    assert down.headers["content-type"] == "application/json"
    assert down.json() == {
        "error": f"live activity unavailable: Redis at 127.0.0.1:{relay.port}/{redis_stream} cannot be "
        "reached (ConnectionError)"
    }


async def test_the_activity_stream_outlives_redis_going_down_and_misses_nothing(
    storage: Storage, redis_stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(activity, "KEEPALIVE_SECONDS", 0.2)
    publisher = RedisStreamBus(REDIS_URL, stream=redis_stream)
    async with (
        over_relayed_redis(storage, redis_stream) as (dashboard, relay),
        httpx.AsyncClient(base_url=dashboard.url, headers=AUTH, timeout=10) as client,
        sse(client, after="0") as stream,
    ):
        await publisher.publish(event("before", ActivityType.COMPLETED))
        [(_, before)] = await activities(stream, 1)
        relay.cut()
        await publisher.publish(event("during", ActivityType.COMPLETED))
        # Still open, though nothing can come, and it says so.
        down = await statuses(stream, until=lambda status: not status["reachable"])
        assert "cannot be reached" in down["detail"]
        relay.restore()
        assert (await statuses(stream, until=lambda status: status["reachable"]))["shared"]
        await publisher.publish(event("after", ActivityType.COMPLETED))
        received = [before.call_id, *(e.call_id for _, e in await activities(stream, 2))]
    await publisher.close()
    assert received == ["before", "during", "after"]
