"""The storage layer against real databases: every behaviour runs on SQLite and on PostgreSQL,
plus the outage behaviour of PostgreSQL through a relay the test cuts."""

import asyncio
import sqlite3
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import pytest_asyncio

from controlplane.models import WireFormat
from controlplane.pricing import estimate_cost
from controlplane.recording.records import (
    REDACTED,
    BlockKind,
    CallOutcome,
    CallRecord,
    DebugEvent,
    Decision,
    Output,
    ToolCall,
    Usage,
)
from controlplane.storage import (
    CallQuery,
    Facet,
    PolicyVersion,
    PostgresStorage,
    SessionPosition,
    SessionQuery,
    SQLiteStorage,
    Storage,
    StorageUnavailable,
    open_storage,
)
from controlplane.storage.migrations import MIGRATIONS
from tests.conftest import free_port
from tests.databases import POSTGRES_ADMIN_URL, database_url, fresh_postgres_database, require_service
from tests.tcp_relay import TcpRelay

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
UNICODE = "Grüße, 日本語 and 👋🏽 <script>alert('x')</script> & \"quotes\""
CANARY = "sk-canary-4f1d2e9b7c"


@dataclass
class Backend:
    """One database, with its own ways to open storages on it and to query it raw."""

    connect: Callable[[], Storage]
    query: Callable[[str], Awaitable[list[tuple[Any, ...]]]]
    tables_sql: str
    opened: list[Storage] = field(default_factory=list)

    def open(self) -> Storage:
        storage = self.connect()
        self.opened.append(storage)
        return storage

    async def close(self) -> None:
        for storage in self.opened:
            await storage.close()

    async def all_values(self) -> list[Any]:
        """Every value in every column of every table."""
        values: list[Any] = []
        for (table,) in await self.query(self.tables_sql):
            for row in await self.query(f"SELECT * FROM {table}"):
                values += row
        return values


# loop_scope="function": the storages live in the loop of the test that uses them.
@pytest_asyncio.fixture(params=["sqlite", "postgres"], loop_scope="function")
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "data" / "luthien.db"

        async def sqlite_query(sql: str) -> list[tuple[Any, ...]]:
            with closing(sqlite3.connect(path)) as connection:
                rows = connection.execute(sql).fetchall()
                connection.commit()  # a test may change rows, as another version would have
                return rows

        tables = "SELECT name FROM sqlite_master WHERE type = 'table'"
        backend = Backend(lambda: SQLiteStorage(path), sqlite_query, tables)
        yield backend
        await backend.close()
    else:
        async with fresh_postgres_database() as url:

            async def postgres_query(sql: str) -> list[tuple[Any, ...]]:
                connection = await asyncpg.connect(url)
                try:
                    return [tuple(row) for row in await connection.fetch(sql)]
                finally:
                    await connection.close()

            tables = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            backend = Backend(lambda: PostgresStorage(url), postgres_query, tables)
            yield backend
            await backend.close()  # before the database is dropped


@pytest_asyncio.fixture(loop_scope="function")
async def storage(backend: Backend) -> Storage:
    storage = backend.open()
    await storage.migrate()
    return storage


def make_call(call_id: str, *, started_at: datetime = T0, prompt: str = "hello", **fields: Any) -> CallRecord:
    """A small completed Chat call whose user message is ``prompt``."""
    values: dict[str, Any] = {
        "call_id": call_id,
        "started_at": started_at,
        "finished_at": started_at + timedelta(seconds=1),
        "method": "POST",
        "host": "api.openai.com",
        "path": "/v1/chat/completions",
        "wire_format": WireFormat.OPENAI_CHAT,
        "model": "gpt-5",
        "status": 200,
        "outcome": CallOutcome.COMPLETED,
        "original_request": {"model": "gpt-5", "messages": [{"role": "user", "content": prompt}]},
    }
    return CallRecord(**(values | fields))


def full_call(call_id: str, *, stream: bool) -> CallRecord:
    """A call with every field set, text that tests the encodings, and bodies in the given mode."""
    request = {
        "model": "claude-sonnet-4",
        "stream": stream,
        "system": [{"type": "text", "text": "Be terse."}],
        "messages": [
            {"role": "user", "content": f"first {UNICODE}"},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
            # NUL and half an emoji: valid JSON strings that neither database takes as text.
            {"role": "user", "content": [{"type": "text", "text": f"second {UNICODE} nul\x00 half\ud83d"}]},
        ],
    }
    original = Output(
        text=f"Answer {UNICODE}",
        reasoning="Thinking… 🤔",
        tool_calls=[ToolCall(id="toolu_1", name="bash", arguments='{"command":"ls -la ~/"}')],
        finish_reason="tool_use",
    )
    final = original.model_copy(update={"text": f"ANSWER {UNICODE}"})
    bodies: dict[str, Any]
    if stream:
        events = [("message_start", '{"type":"message_start"}'), (None, f'{{"text":"{UNICODE}"}}')]
        bodies = {"original_events": events, "final_events": [*events, ("ping", "{}")]}
    else:
        response = {
            "id": "msg_1",
            "content": [{"type": "text", "text": original.text}],
            "n": [1, 2.5, None, True],
        }
        bodies = {"original_response": response, "final_response": response | {"id": "msg_2"}}
    return CallRecord(
        call_id=call_id,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=2, microseconds=654321),
        method="POST",
        host="api.anthropic.com",
        path="/v1/messages?beta=true",
        wire_format=WireFormat.ANTHROPIC_MESSAGES,
        model="claude-sonnet-4",
        stream=stream,
        agent="claude-code",
        user_agent="claude-cli/2.0 (external, cli)",
        user_id="user-42",
        session_id="session-7",
        api_key_hash="9f86d081884c7d65",
        trace_id="trace-abc",
        status=200,
        outcome=CallOutcome.BLOCKED,
        error="ended by policy: 🚫",
        request_modified=True,
        response_modified=True,
        ttfb_ms=123.456,
        duration_ms=2654.321,
        usage=Usage(prompt_tokens=1200, completion_tokens=34, total_tokens=1234),
        request_headers=[("content-type", "application/json"), ("x-claude-code-session-id", "session-7")],
        original_request=request,
        final_request=request | {"model": "claude-haiku-4"},
        original_output=original,
        final_output=final,
        decisions=[
            Decision(stage="request", allowed=True, reason="model swapped", metadata={"from": "sonnet"}),
            Decision(
                stage="stream", allowed=False, reason=f"blocked {UNICODE}", metadata={"n": [1, {"x": None}]}
            ),
        ],
        **bodies,
    )


def minimal_call(call_id: str) -> CallRecord:
    """A call with every optional field left empty, as an unparsed passthrough call is recorded."""
    return CallRecord(
        call_id=call_id,
        started_at=T0,
        finished_at=T0,
        method="GET",
        host="example.test",
        path="/",
        outcome=CallOutcome.PASSTHROUGH,
    )


async def ids(storage: Storage, **filters: Any) -> list[str]:
    page = await storage.list_calls(CallQuery(**filters))
    assert page.total == len(page.calls), "these tests expect a single page"
    return [call.call_id for call in page.calls]


async def test_migrate_is_idempotent_and_records_each_version(backend: Backend, storage: Storage) -> None:
    await storage.migrate()
    await storage.migrate()
    rows = await backend.query("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
    assert [(version, name) for version, name, _ in rows] == [(m.version, m.name) for m in MIGRATIONS]
    assert all(abs(applied_at - datetime.now(UTC).timestamp()) < 60 for _, _, applied_at in rows)
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))


async def test_rows_stored_before_block_kinds_read_back_as_blocks(backend: Backend, storage: Storage) -> None:
    """Migration 2 on rows as the version before it stored them: a removed tool call was an
    allowed decision on a completed call, and no call had a block kind."""
    removed = Decision(
        stage="stream",
        allowed=True,
        reason="rule no-rm",
        metadata={"blocked_tool": "bash", "rule_id": "no-rm"},
    )
    ended = Decision(stage="stream", allowed=False, reason="ended")
    # A note that quotes the key in a value is not a removal.
    quoted = Decision(stage="stream", allowed=True, reason="note", metadata={"note": '"blocked_tool": x'})
    await storage.write(
        [
            make_call("a-removed", decisions=[removed]),
            make_call("b-ended", outcome=CallOutcome.BLOCKED, decisions=[removed, ended]),
            make_call("c-refused", outcome=CallOutcome.BLOCKED, status=403),  # no decision: an endpoint
            make_call("d-quoted", decisions=[quoted]),
            make_call("e-plain"),
        ]
    )
    await backend.query("UPDATE calls SET outcome = 'completed', blocked = 0 WHERE call_id = 'a-removed'")
    await backend.query("UPDATE decisions SET allowed = 1 WHERE metadata LIKE '%blocked%'")
    await backend.query("DROP INDEX calls_block_kind")
    await backend.query("ALTER TABLE calls DROP COLUMN block_kind")
    await backend.query("DELETE FROM schema_migrations WHERE version = 2")

    upgraded = backend.open()  # a new version starting on the old database
    await upgraded.migrate()
    rows = await backend.query("SELECT call_id, outcome, blocked, block_kind FROM calls ORDER BY call_id")
    assert rows == [
        ("a-removed", "blocked", 1, "tool_call_removed"),
        ("b-ended", "blocked", 1, "stream_ended"),
        ("c-refused", "blocked", 1, "request_blocked"),
        ("d-quoted", "completed", 0, None),
        ("e-plain", "completed", 0, None),
    ]
    assert await ids(upgraded, blocked=True) == ["c-refused", "b-ended", "a-removed"]
    assert await ids(upgraded, block_kind=BlockKind.TOOL_CALL) == ["a-removed"]
    stored = await upgraded.get_call("a-removed")
    assert stored is not None and stored.block_kind is BlockKind.TOOL_CALL
    assert [(d.allowed, d.block) for d in stored.decisions] == [(False, BlockKind.TOOL_CALL)]


async def test_the_rebuild_of_the_calls_table_keeps_every_call_as_it_was(
    backend: Backend, storage: Storage
) -> None:
    """Migration 3 rebuilds the calls table. Run again on stored calls, as on a database of the
    version before, it keeps every field; the calls stored before it have no cost estimate."""
    records = [
        full_call("a-stream", stream=True),
        full_call("b-whole", stream=False),
        minimal_call("c-minimal"),
        make_call("d-priced", usage=Usage(prompt_tokens=1000, completion_tokens=10, total_tokens=1010)),
    ]
    await storage.write(records)
    assert (await storage.list_calls(CallQuery(search="hello"))).calls[0].cost_usd is not None
    await backend.query("DELETE FROM schema_migrations WHERE version = 3")

    upgraded = backend.open()
    await upgraded.migrate()
    for record in records:
        assert await upgraded.get_call(record.call_id) == record
    page = await upgraded.list_calls(CallQuery(sort="cost"))
    assert [call.cost_usd for call in page.calls] == [None] * len(records)
    assert page.totals.unpriced_calls == 3
    assert await backend.query("SELECT COUNT(*) FROM decisions") == [(4,)]


async def test_storages_migrating_one_database_together_both_succeed(backend: Backend) -> None:
    first, second = backend.open(), backend.open()
    await asyncio.gather(first.migrate(), second.migrate())
    assert await backend.query("SELECT version FROM schema_migrations") == [(m.version,) for m in MIGRATIONS]
    await first.write([make_call("a")])
    assert await ids(second) == ["a"]


@pytest.mark.parametrize("variant", ["non-streaming", "streaming", "minimal"])
async def test_a_call_round_trips_field_by_field(storage: Storage, variant: str) -> None:
    record = minimal_call("c1") if variant == "minimal" else full_call("c1", stream=variant == "streaming")
    await storage.write([record])
    stored = await storage.get_call("c1")
    assert stored is not None
    for name in CallRecord.model_fields:
        assert getattr(stored, name) == getattr(record, name), name
    assert stored == record


async def test_an_unknown_call_is_none(storage: Storage) -> None:
    await storage.write([make_call("known")])
    assert await storage.get_call("unknown") is None


async def test_text_neither_database_accepts_is_stored_cleaned(storage: Storage) -> None:
    record = make_call("c1", model="gpt\x00-5", error="cut \ud83d here", prompt="nul\x00 half\ud83d")
    await storage.write([record])
    stored = await storage.get_call("c1")
    assert stored is not None
    assert (stored.model, stored.error) == ("gpt-5", "cut ? here")
    assert stored.original_request == record.original_request  # JSON bodies are stored exactly
    assert await ids(storage, search="nul half?") == ["c1"]


async def test_headers_are_stored_redacted(backend: Backend, storage: Storage) -> None:
    headers = [
        ("Authorization", f"Bearer {CANARY}"),
        ("x-api-key", CANARY),
        ("Cookie", f"session={CANARY}"),
        ("content-type", "application/json"),
    ]
    await storage.write([make_call("c1", request_headers=headers)])
    values = await backend.all_values()
    assert {table for (table,) in await backend.query(backend.tables_sql)} >= {"calls", "decisions"}
    assert any("content-type" in str(value) for value in values)
    assert not [value for value in values if "sk-canary" in str(value)]
    stored = await storage.get_call("c1")
    assert stored is not None
    assert stored.request_headers == [
        ("Authorization", REDACTED),
        ("x-api-key", REDACTED),
        ("Cookie", REDACTED),
        ("content-type", "application/json"),
    ]


async def test_a_replayed_batch_stores_each_record_once(backend: Backend, storage: Storage) -> None:
    call = full_call("c1", stream=False)
    event = DebugEvent(call_id="c1", type="judge", payload={"score": 0.9})
    await storage.write([call, event])
    await storage.write([call, event])
    # A record already stored is left as it is, even when the replay differs.
    await storage.write([make_call("c1", prompt="changed"), make_call("c2")])
    assert await ids(storage) == ["c2", "c1"]
    assert await storage.get_call("c1") == call
    assert await storage.debug_events("c1") == [event]
    assert await backend.query("SELECT COUNT(*) FROM decisions") == [(2,)]


async def test_calls_are_listed_newest_first_in_pages(storage: Storage) -> None:
    await storage.write(
        [make_call(f"c{i}", started_at=T0 + timedelta(minutes=i)) for i in (3, 0, 6, 1, 5, 2, 4)]
    )
    pages = [await storage.list_calls(CallQuery(limit=3, offset=offset)) for offset in (0, 3, 6, 9)]
    assert [[call.call_id for call in page.calls] for page in pages] == [
        ["c6", "c5", "c4"],
        ["c3", "c2", "c1"],
        ["c0"],
        [],
    ]
    assert [(page.total, page.limit, page.offset) for page in pages] == [
        (7, 3, 0),
        (7, 3, 3),
        (7, 3, 6),
        (7, 3, 9),
    ]


def _filter_calls() -> list[CallRecord]:
    anthropic = {
        "host": "api.anthropic.com",
        "model": "claude-sonnet-4",
        "wire_format": WireFormat.ANTHROPIC_MESSAGES,
    }
    return [
        make_call("c1", started_at=T0, prompt="Is it 100% SAFE to DEPLOY?"),
        make_call(
            "c2",
            started_at=T0 + timedelta(hours=1),
            outcome=CallOutcome.BLOCKED,
            status=403,
            original_request={
                "system": "You review an Été release",
                "messages": [{"role": "user", "content": [{"type": "text", "text": "rename file_name"}]}],
            },
            **anthropic,
        ),
        make_call(
            "c3",
            started_at=T0 + timedelta(hours=2),
            model="gpt-5-mini",
            outcome=CallOutcome.PROVIDER_ERROR,
            status=500,
            prompt="rename fileXname",
            final_output=Output(text="A Rewritten Answer"),
        ),
        make_call(
            "c4",
            started_at=T0 + timedelta(hours=3),
            response_modified=True,
            prompt="scored 100 out of 100, safe enough",
            original_output=Output(tool_calls=[ToolCall(name="read", arguments='{"path":"/etc/passwd"}')]),
            **anthropic,
        ),
        make_call(
            "c5",
            started_at=T0 + timedelta(hours=4),
            outcome=CallOutcome.ERROR,
            status=None,
            request_modified=True,
            path="/v1/responses",
            wire_format=WireFormat.OPENAI_RESPONSES,
            original_request={"instructions": "Work in C:\\Temp", "input": "list the files"},
        ),
    ]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, ["c5", "c4", "c3", "c2", "c1"]),
        ({"host": "api.anthropic.com"}, ["c4", "c2"]),
        ({"host": "ANTHROPIC"}, ["c4", "c2"]),  # any part, ignoring case, as the monitor matches
        ({"model": "gpt-5"}, ["c5", "c3", "c1"]),
        ({"model": "Mini"}, ["c3"]),
        ({"model": "sonnet-4"}, ["c4", "c2"]),
        ({"model": "gpt_5"}, []),  # _ is literal, not "any character"
        ({"model": "%"}, []),
        ({"model": ""}, ["c5", "c4", "c3", "c2", "c1"]),  # an empty box filters nothing
        ({"outcome": CallOutcome.PROVIDER_ERROR}, ["c3"]),
        ({"status": 200}, ["c4", "c1"]),
        ({"blocked": True}, ["c2"]),
        ({"blocked": False}, ["c5", "c4", "c3", "c1"]),
        ({"modified": True}, ["c5", "c4"]),
        ({"modified": False}, ["c3", "c2", "c1"]),
        ({"since": T0 + timedelta(hours=2)}, ["c5", "c4", "c3"]),
        ({"until": T0 + timedelta(hours=2)}, ["c2", "c1"]),
        ({"since": T0 + timedelta(hours=1), "until": T0 + timedelta(hours=3)}, ["c3", "c2"]),
        ({"since": (T0 + timedelta(hours=3)).replace(tzinfo=None)}, ["c5", "c4"]),  # naive means UTC
        ({"host": "api.openai.com", "status": 200}, ["c1"]),
        ({"search": "deploy"}, ["c1"]),
        ({"search": "SAFE"}, ["c4", "c1"]),
        ({"search": "été"}, ["c2"]),  # in the system prompt; non-ASCII case folding
        ({"search": "ÉTÉ"}, ["c2"]),
        ({"search": "rewritten answer"}, ["c3"]),  # in the final output
        ({"search": "/etc/passwd"}, ["c4"]),  # in tool-call arguments
        ({"search": "c:\\temp"}, ["c5"]),  # in the instructions, with a backslash
        ({"search": "list the"}, ["c5"]),  # a Responses string input
        ({"search": "100% safe"}, ["c1"]),  # % is literal, not "anything"
        ({"search": "%"}, ["c1"]),
        ({"search": "file_name"}, ["c2"]),  # _ is literal, not "any character"
        ({"search": "nowhere"}, []),
        ({"search": "rename", "outcome": CallOutcome.BLOCKED}, ["c2"]),
    ],
)
async def test_each_filter_selects_its_calls(
    storage: Storage, filters: dict[str, Any], expected: list[str]
) -> None:
    await storage.write(_filter_calls())
    assert await ids(storage, **filters) == expected


async def test_a_summary_has_the_fields_of_its_call(storage: Storage) -> None:
    record = full_call("c1", stream=True)
    await storage.write([record])
    (summary,) = (await storage.list_calls(CallQuery())).calls
    for name in type(summary).model_fields.keys() - {"blocked", "decision_count", "preview", "cost_usd"}:
        assert getattr(summary, name) == getattr(record, name), name
    assert (summary.blocked, summary.decision_count) == (True, 2)
    assert summary.cost_usd == estimate_cost(record.model, record.usage)
    assert summary.preview == f"second {UNICODE} nul half?"


@pytest.mark.parametrize(
    ("body", "preview"),
    [
        (
            {
                "messages": [
                    {"role": "user", "content": "first"},
                    {"role": "user", "content": " second\n\n  line "},
                ]
            },
            "second line",
        ),
        ({"messages": [{"role": "system", "content": "only system"}]}, ""),
        ({"input": "a Responses string"}, "a Responses string"),
        (
            {
                "instructions": "ignored",
                "input": [
                    {"role": "user", "content": "older"},
                    {
                        "type": "message",
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "look at"},
                            {"type": "input_image", "image_url": "x"},
                            {"type": "input_text", "text": "this"},
                        ],
                    },
                    {"type": "function_call_output", "call_id": "c", "output": "tool said"},
                ],
            },
            "look at this",
        ),
        ({"system": "ignored", "messages": [{"role": "user", "content": "to Claude"}]}, "to Claude"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "part one"},
                            {"type": "image", "source": {}},
                            {"type": "text", "text": "part two"},
                        ],
                    }
                ]
            },
            "part one part two",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "t",
                                "content": [{"type": "text", "text": "exit 0"}],
                            }
                        ],
                    }
                ]
            },
            "exit 0",
        ),
        ({"messages": [{"role": "user", "content": "x" * 500}]}, "x" * 200),
        (
            {
                "systemInstruction": {"parts": [{"text": "ignored"}]},
                "contents": [
                    {"role": "user", "parts": [{"text": "to"}, {"inlineData": {}}, {"text": "Gemini"}]},
                    {"role": "model", "parts": [{"text": "a reply"}]},
                ],
            },
            "to Gemini",
        ),
        (None, ""),
    ],
)
async def test_the_preview_is_the_start_of_the_last_user_message(
    storage: Storage, body: Any, preview: str
) -> None:
    await storage.write([make_call("c1", original_request=body)])
    (summary,) = (await storage.list_calls(CallQuery())).calls
    assert summary.preview == preview


def _priced_calls() -> list[CallRecord]:
    """Calls with the values the list sorts by, some of them missing."""

    def call(call_id: str, minutes: int, **fields: Any) -> CallRecord:
        return make_call(call_id, started_at=T0 + timedelta(minutes=minutes), **fields)

    return [
        # The list prices in LiteLLM's map: gpt-5 $1.25 in and $10 out per million tokens,
        # gpt-5-mini $0.25 and $2.
        call(
            "c1",
            0,
            duration_ms=900.0,
            ttfb_ms=300.0,
            usage=Usage(prompt_tokens=1000, completion_tokens=100, total_tokens=1100),
        ),
        call(
            "c2",
            1,
            model="gpt-5-mini",
            duration_ms=4000.0,
            ttfb_ms=None,
            usage=Usage(prompt_tokens=20000, completion_tokens=500, total_tokens=20500),
        ),
        call(
            "c3",
            2,
            model="acme-coder-2",  # no price in the map
            duration_ms=50.0,
            ttfb_ms=40.0,
            usage=Usage(prompt_tokens=300, completion_tokens=20, total_tokens=320),
        ),
        call("c4", 3, outcome=CallOutcome.BLOCKED, status=403, duration_ms=2.0, usage=None),
    ]


@pytest.mark.parametrize(
    ("sort", "descending", "ascending"),
    [
        ("time", ["c4", "c3", "c2", "c1"], ["c1", "c2", "c3", "c4"]),
        ("duration", ["c2", "c1", "c3", "c4"], ["c4", "c3", "c1", "c2"]),
        # A call without the value comes last either way; ties newest first.
        ("ttfb", ["c1", "c3", "c4", "c2"], ["c3", "c1", "c4", "c2"]),
        ("tokens", ["c2", "c1", "c3", "c4"], ["c3", "c1", "c2", "c4"]),
        ("cost", ["c2", "c1", "c4", "c3"], ["c1", "c2", "c4", "c3"]),
    ],
)
async def test_the_list_sorts_by_each_value_either_way(
    storage: Storage, sort: str, descending: list[str], ascending: list[str]
) -> None:
    await storage.write(_priced_calls())
    assert await ids(storage, sort=sort) == descending
    assert await ids(storage, sort=sort, order="asc") == ascending
    pages = [await storage.list_calls(CallQuery(sort=sort, limit=3, offset=offset)) for offset in (0, 3)]
    assert [call.call_id for page in pages for call in page.calls] == descending


async def test_costs_are_estimated_from_the_list_price_and_totalled_for_the_filter(storage: Storage) -> None:
    await storage.write(_priced_calls())
    page = await storage.list_calls(CallQuery())
    costs = {call.call_id: call.cost_usd for call in page.calls}
    assert costs["c1"] == pytest.approx(1000 * 1.25e-6 + 100 * 10e-6)
    assert costs["c2"] == pytest.approx(20000 * 0.25e-6 + 500 * 2e-6)
    assert costs["c3"] is None  # an unknown model: no price, never a made-up one
    assert costs["c4"] is None  # no tokens counted
    assert page.totals.model_dump() == {
        "prompt_tokens": 21300,
        "completion_tokens": 620,
        "total_tokens": 21920,
        "cost_usd": pytest.approx(costs["c1"] + costs["c2"]),
        "unpriced_calls": 1,
    }
    # The totals are those of every call the filters select, not only of the page.
    only = await storage.list_calls(CallQuery(model="gpt", limit=1))
    assert (only.total, len(only.calls)) == (3, 1)  # c4, blocked, counted no tokens
    assert (only.totals.total_tokens, only.totals.unpriced_calls) == (21600, 0)
    assert only.totals.cost_usd == pytest.approx(costs["c1"] + costs["c2"])
    unpriced = await storage.list_calls(CallQuery(model="acme"))
    assert (unpriced.totals.total_tokens, unpriced.totals.cost_usd, unpriced.totals.unpriced_calls) == (
        320,
        None,
        1,
    )
    nothing = await storage.list_calls(CallQuery(model="nowhere"))
    assert nothing.totals.model_dump() == {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "cost_usd": None,
        "unpriced_calls": 0,
    }


# --- Sessions -----------------------------------------------------------------------------------

CLAUDE_SESSION, CODEX_SESSION = "3f9c2a1e-8b7d-4c6f-9e21-5d4a3b2c1f00", "0198c7e2-5b1a-7f30-9d4e-2a6c8b1f0e57"


def _session_calls() -> list[CallRecord]:
    """Claude Code's session of three turns (the second blocked), Codex's of two on another
    key, a turn of Codex's a minute after the last of Claude's, and a call without a session."""
    tokens = Usage(prompt_tokens=100, completion_tokens=10, total_tokens=110)
    claude = {"agent": "claude-cli", "api_key_hash": "key-a", "session_id": CLAUDE_SESSION, "usage": tokens}
    codex = {"agent": "codex_cli_rs", "api_key_hash": "key-b", "session_id": CODEX_SESSION}
    blocked = Decision(stage="request", allowed=False, reason="rm -rf", metadata={"rule_id": "no-rm"})
    return [
        make_call("claude-1", started_at=T0, prompt="fix the test", **claude),
        make_call(
            "claude-2",
            started_at=T0 + timedelta(minutes=1),
            outcome=CallOutcome.BLOCKED,
            decisions=[blocked],
            **claude,
        ),
        make_call("claude-3", started_at=T0 + timedelta(minutes=2), response_modified=True, **claude),
        make_call("codex-1", started_at=T0 + timedelta(seconds=30), prompt="add a flag", **codex),
        make_call("codex-2", started_at=T0 + timedelta(minutes=3), **codex),
        make_call("lonely", started_at=T0 + timedelta(minutes=4)),
    ]


async def test_calls_are_grouped_into_sessions_newest_first(storage: Storage) -> None:
    await storage.write(_session_calls())
    page = await storage.list_sessions(SessionQuery())
    assert page.total == 2
    codex, claude = page.sessions
    assert (codex.session_id, claude.session_id) == (CODEX_SESSION, CLAUDE_SESSION)
    assert (claude.agent, claude.api_key_hash, claude.turns, claude.blocks, claude.modified) == (
        "claude-cli",
        "key-a",
        3,
        1,
        1,
    )
    assert (claude.first_call_at, claude.last_call_at) == (T0, T0 + timedelta(minutes=2))
    assert claude.duration_ms == pytest.approx(121_000)  # the last call ends a second after it starts
    assert (claude.prompt_tokens, claude.completion_tokens, claude.total_tokens) == (300, 30, 330)
    assert claude.cost_usd == pytest.approx(
        3 * estimate_cost("gpt-5", Usage(prompt_tokens=100, completion_tokens=10))
    )
    assert (claude.preview, codex.preview) == ("fix the test", "add a flag")
    assert (codex.turns, codex.blocks, codex.total_tokens, codex.cost_usd) == (2, 0, 0, None)
    assert page.agents == [Facet(value="claude-cli", sessions=1), Facet(value="codex_cli_rs", sessions=1)]
    assert page.api_key_hashes == [Facet(value="key-a", sessions=1), Facet(value="key-b", sessions=1)]

    async def sessions(**filters: Any) -> list[str]:
        return [s.session_id for s in (await storage.list_sessions(SessionQuery(**filters))).sessions]

    assert await sessions(agent="claude-cli") == [CLAUDE_SESSION]
    assert await sessions(agent="claude") == []  # exactly the agent
    assert await sessions(api_key_hash="key-b") == [CODEX_SESSION]
    assert await sessions(blocked=True) == [CLAUDE_SESSION]
    assert await sessions(blocked=False) == [CODEX_SESSION]
    assert await sessions(limit=1) == [CODEX_SESSION]
    assert await sessions(limit=1, offset=1) == [CLAUDE_SESSION]
    filtered = await storage.list_sessions(SessionQuery(agent="codex_cli_rs"))
    assert filtered.total == 1 and len(filtered.agents) == 2  # the options stay every agent

    assert await storage.get_session(CLAUDE_SESSION) == claude
    assert await storage.get_session("no-such-session") is None


async def test_the_calls_list_filters_by_session_agent_and_key(storage: Storage) -> None:
    await storage.write(_session_calls())
    assert await ids(storage, session_id=CLAUDE_SESSION) == ["claude-3", "claude-2", "claude-1"]
    assert await ids(storage, agent="codex_cli_rs") == ["codex-2", "codex-1"]
    assert await ids(storage, api_key_hash="key-a", blocked=True) == ["claude-2"]
    assert await ids(storage, session_id="3f9c2a1e") == []  # the whole id, not a part
    (summary,) = (await storage.list_calls(CallQuery(session_id=CODEX_SESSION, limit=1))).calls[:1]
    assert (summary.agent, summary.api_key_hash, summary.session_id) == (
        "codex_cli_rs",
        "key-b",
        CODEX_SESSION,
    )


async def test_a_sessions_calls_come_in_order_with_their_decisions_and_neighbours(storage: Storage) -> None:
    records = _session_calls()
    stream = full_call("claude-4", stream=True).model_copy(
        update={"session_id": CLAUDE_SESSION, "started_at": T0 + timedelta(minutes=5)}
    )
    await storage.write([*records, stream])
    calls = await storage.session_calls(CLAUDE_SESSION, offset=0, limit=10)
    assert [call.call_id for call in calls] == ["claude-1", "claude-2", "claude-3", "claude-4"]
    assert [d.reason for d in calls[1].decisions] == ["rm -rf"]
    assert calls[3].decisions == stream.decisions
    # What the turn asked and answered, without the stream's events.
    assert (calls[3].original_request, calls[3].final_output) == (
        stream.original_request,
        stream.final_output,
    )
    assert (calls[3].original_events, calls[3].final_events) == (None, None)
    page = await storage.session_calls(CLAUDE_SESSION, offset=1, limit=2)
    assert [call.call_id for call in page] == ["claude-2", "claude-3"]
    assert [d.reason for d in page[0].decisions] == ["rm -rf"]

    assert await storage.session_position("claude-1") == SessionPosition(
        session_id=CLAUDE_SESSION, turn=1, turns=4, previous=None, next="claude-2"
    )
    assert await storage.session_position("claude-3") == SessionPosition(
        session_id=CLAUDE_SESSION, turn=3, turns=4, previous="claude-2", next="claude-4"
    )
    assert await storage.session_position("claude-4") == SessionPosition(
        session_id=CLAUDE_SESSION, turn=4, turns=4, previous="claude-3", next=None
    )
    assert await storage.session_position("lonely") is None
    assert await storage.session_position("no-such-call") is None


async def test_calls_in_the_same_instant_are_ordered_by_id(storage: Storage) -> None:
    await storage.write([make_call(name, session_id="s") for name in ("b", "a", "c")])
    assert [call.call_id for call in await storage.session_calls("s", 0, 10)] == ["a", "b", "c"]
    position = await storage.session_position("b")
    assert position is not None and (position.previous, position.next, position.turn) == ("a", "c", 2)


async def test_calls_stored_before_sessions_get_the_session_of_their_user_id(
    backend: Backend, storage: Storage
) -> None:
    """Migration 4 on calls whose session was only in their user id, as Claude Code and SDK
    apps send it; it reads the same session as addon/session_identity.py."""
    legacy = f"user_{'ab' * 32}_account__session_{CLAUDE_SESSION}"
    modern = f'{{"device_id":"{"cd" * 32}","account_uuid":"","session_id":"{CODEX_SESSION}"}}'
    await storage.write(
        [
            make_call("legacy", user_id=legacy),
            make_call("modern", user_id=modern),
            make_call("sdk-app", user_id="end-user-42"),
            make_call("header", user_id="end-user-42", session_id="from-a-header"),
            make_call("nobody"),
        ]
    )
    await backend.query("DROP INDEX calls_session")
    await backend.query("DELETE FROM schema_migrations WHERE version = 4")

    upgraded = backend.open()
    await upgraded.migrate()
    rows = await backend.query("SELECT call_id, session_id FROM calls ORDER BY call_id")
    assert rows == [
        ("header", "from-a-header"),
        ("legacy", CLAUDE_SESSION),
        ("modern", CODEX_SESSION),
        ("nobody", None),
        ("sdk-app", "end-user-42"),
    ]
    assert (await upgraded.list_sessions(SessionQuery())).total == 4


async def test_debug_events_round_trip_oldest_first(storage: Storage) -> None:
    def event(call_id: str | None, seconds: float) -> DebugEvent:
        payload = {"text": UNICODE, "seconds": seconds, "nested": {"list": [1, None]}}
        return DebugEvent(call_id=call_id, at=T0 + timedelta(seconds=seconds), type="judge", payload=payload)

    later, first, middle = event("c1", 2.5), event("c1", 0.000001), event("c1", 1)
    await storage.write([later, event("c2", 1), first, event(None, 1)])
    await storage.write([middle])
    assert await storage.debug_events("c1") == [first, middle, later]
    assert await storage.debug_events("unknown") == []


async def test_an_empty_batch_is_a_no_op(storage: Storage) -> None:
    await storage.write([])
    assert await ids(storage) == []


@pytest.mark.parametrize("target", ["nothing listens", "no such database"])
async def test_postgres_failures_are_storage_unavailable(target: str) -> None:
    if target == "nothing listens":
        url = f"postgresql://postgres@127.0.0.1:{free_port()}/luthien"
    else:
        require_service("PostgreSQL", "127.0.0.1", 5432)
        url = database_url(POSTGRES_ADMIN_URL, "luthien_test_missing")
    storage = PostgresStorage(url)
    operations: list[Callable[[], Awaitable[Any]]] = [
        storage.ping,
        storage.migrate,
        lambda: storage.write([make_call("c1")]),
        lambda: storage.get_call("c1"),
        lambda: storage.list_calls(CallQuery()),
        lambda: storage.debug_events("c1"),
    ]
    for operation in operations:
        with pytest.raises(StorageUnavailable):
            await operation()
    await storage.close()


async def test_postgres_recovers_after_its_connections_are_cut() -> None:
    async with fresh_postgres_database() as url:
        with TcpRelay("127.0.0.1", 5432) as relay:
            server = urlsplit(url)
            storage = PostgresStorage(
                server._replace(netloc=f"{server.username}@127.0.0.1:{relay.port}").geturl()
            )
            try:
                await storage.migrate()
                await storage.write([make_call("before", started_at=T0)])

                relay.cut()
                during = make_call("during", started_at=T0 + timedelta(seconds=1))
                with pytest.raises(StorageUnavailable):
                    await storage.write([during])
                with pytest.raises(StorageUnavailable):
                    await storage.ping()

                relay.restore()
                await storage.write([during])  # the retry, as the recorder would
                await storage.write([make_call("after", started_at=T0 + timedelta(seconds=2))])
                assert await ids(storage) == ["after", "during", "before"]

                # An outage nobody noticed: the first call after it must not get the dead connection.
                relay.cut()
                await asyncio.sleep(0.2)
                relay.restore()
                await storage.ping()
                assert relay.connections == 3  # one per outage: the pool reconnected, once each time
            finally:
                await storage.close()


async def test_sqlite_file_is_private_and_readable_while_written(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "luthien.db"
    storage = SQLiteStorage(path)
    try:
        await storage.migrate()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with closing(sqlite3.connect(path, timeout=0.1, autocommit=True)) as other:
            assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            # Another process writing does not stop this one reading, and reading does not stop writing.
            other.execute("BEGIN IMMEDIATE")
            other.execute("DELETE FROM calls")
            assert await ids(storage) == []
            other.execute("ROLLBACK")
            other.execute("BEGIN")
            other.execute("SELECT COUNT(*) FROM calls").fetchone()
            await storage.write([make_call("c1")])
            assert other.execute("SELECT COUNT(*) FROM calls").fetchone() == (0,)  # its snapshot
            other.execute("COMMIT")
            assert other.execute("SELECT call_id FROM calls").fetchall() == [("c1",)]
    finally:
        await storage.close()


async def test_sqlite_failures_are_storage_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    storage = SQLiteStorage(tmp_path / "file" / "luthien.db")
    with pytest.raises(StorageUnavailable):
        await storage.migrate()
    with pytest.raises(StorageUnavailable):
        await storage.write([make_call("c1")])
    await storage.close()


@pytest.mark.parametrize(
    ("url", "kind", "where"),
    [
        (None, SQLiteStorage, "data/luthien.db"),
        ("", SQLiteStorage, "data/luthien.db"),
        ("sqlite:///var/lib/luthien/calls.db", SQLiteStorage, "/var/lib/luthien/calls.db"),
        ("postgresql://u:p@db:5432/luthien", PostgresStorage, None),
        ("postgres://u:p@db/luthien", PostgresStorage, None),
    ],
)
def test_open_storage_picks_the_backend(url: str | None, kind: type, where: str | None) -> None:
    storage = open_storage(url, Path("data"))
    assert isinstance(storage, kind)
    if where is not None:
        assert isinstance(storage, SQLiteStorage)
        assert storage.path == Path(where)


@pytest.mark.parametrize(
    "url",
    [
        "mysql://admin:hunter2@db/x",
        "sqlite://relative.db",
        "sqlite:///",
        "hunter2",
        "postgresql+asyncpg://u@db/x",
    ],
)
def test_open_storage_rejects_other_urls_without_echoing_them(url: str) -> None:
    with pytest.raises(ValueError, match=r"postgresql://.*sqlite:///absolute/path\.db") as error:
        open_storage(url, Path("data"))
    assert "hunter2" not in str(error.value)


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_a_missing_service_fails_in_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("CI", ci)
    port = free_port()
    with pytest.raises(outcome, match=f"PostgreSQL is not reachable at 127.0.0.1:{port}"):
        require_service("PostgreSQL", "127.0.0.1", port)


def policy_version(document: dict[str, Any], version: str, by: str = "alice") -> PolicyVersion:
    return PolicyVersion(
        version=version, document=document, created_at=T0, created_by=by, note=f"note {version}"
    )


async def test_policy_versions_are_stored_once_and_every_activation_is_audited(storage: Storage) -> None:
    assert await storage.active_policy() is None
    assert await storage.policy_history(10) == []
    first = policy_version({"policy": {"class": "NoOpPolicy", "config": {"note": UNICODE}}}, "v1")
    second = policy_version({"policy": {"class": "AllCapsPolicy"}}, "v2", by="bob")
    one = await storage.activate_policy(first, "alice", "api", "first", unless_active=False)
    two = await storage.activate_policy(second, "bob", "file", "", unless_active=False)
    # A rollback to v1: a new activation; the version keeps who stored it first and when.
    back = await storage.activate_policy(
        first.model_copy(update={"created_by": "carol"}), "carol", "cli", "back", unless_active=False
    )
    assert [a.seq for a in (one, two, back)] == [1, 2, 3]
    active = await storage.active_policy()
    assert active is not None and active.activation == back and active.version == first
    assert (back.version, back.activated_by, back.source, back.note) == ("v1", "carol", "cli", "back")
    assert abs(back.activated_at - datetime.now(UTC)) < timedelta(seconds=60)
    assert await storage.policy_history(10) == [back, two, one]
    assert await storage.policy_history(1) == [back]
    assert await storage.policy_version("v2") == second
    assert await storage.policy_version("nope") is None


async def test_an_active_version_is_activated_again_only_when_asked(storage: Storage) -> None:
    version = policy_version({"policy": {"class": "NoOpPolicy"}}, "v1")
    first = await storage.activate_policy(version, "file", "file", "", unless_active=True)
    assert await storage.activate_policy(version, "file", "file", "", unless_active=True) == first
    again = await storage.activate_policy(version, "alice", "api", "", unless_active=False)
    assert again.seq == 2


async def test_concurrent_activations_from_many_processes_are_numbered_without_gaps(backend: Backend) -> None:
    """Replicas that see one file change together record it once; distinct activations all get
    a number of their own."""
    storages = [backend.open() for _ in range(4)]
    await storages[0].migrate()
    same = policy_version({"policy": {"class": "NoOpPolicy"}}, "same")
    await asyncio.gather(*(s.activate_policy(same, "file", "file", "", unless_active=True) for s in storages))
    distinct = [policy_version({"policy": {"class": "NoOpPolicy"}, "n": n}, f"v{n}") for n in range(8)]
    await asyncio.gather(
        *(
            storages[n % 4].activate_policy(v, "x", "api", "", unless_active=False)
            for n, v in enumerate(distinct)
        )
    )
    history = await storages[1].policy_history(100)
    assert sorted(a.seq for a in history) == list(range(1, 10))
    assert [a.version for a in history].count("same") == 1
