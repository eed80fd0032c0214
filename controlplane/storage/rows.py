"""What both backends share: records as column values, rows back as records, and the SQL.

The statements differ between the backends only in their placeholders (``?`` for sqlite3, ``$1``
for asyncpg), so each backend builds one ``Sql`` with its own placeholder style.
"""

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from controlplane.pricing import estimate_cost
from controlplane.recording.records import CallRecord, DebugEvent, Record, Usage
from controlplane.storage.base import (
    CallPage,
    CallQuery,
    CallSort,
    CallSummary,
    CallTotals,
    Facet,
    SessionPage,
    SessionPosition,
    SessionQuery,
    SessionSummary,
)

PREVIEW_CHARS = 200

#: The placeholder for the n-th parameter of a statement (counting from 1).
Placeholder = Callable[[int], str]


def qmark(_: int) -> str:
    return "?"


def numbered(n: int) -> str:
    return f"${n}"


# CallRecord fields kept in a column of the same name, as they are.
_SCALAR_FIELDS = (
    "call_id", "method", "host", "path", "wire_format", "model", "stream", "agent", "user_agent",
    "user_id", "session_id", "api_key_hash", "trace_id", "status", "outcome", "error",
    "request_modified", "response_modified", "policy_version", "unpoliced", "ttfb_ms", "duration_ms",
)  # fmt: skip
# CallRecord fields kept as JSON text in a column of the same name.
_JSON_FIELDS = (
    "request_headers", "original_request", "final_request", "original_response", "final_response",
    "original_events", "final_events", "original_output", "final_output",
)  # fmt: skip
_USAGE_COLUMNS = ("prompt_tokens", "completion_tokens", "total_tokens")
_CALL_COLUMNS = (
    *_SCALAR_FIELDS,
    *("started_at", "finished_at", "blocked", "block_kind", "modified", *_USAGE_COLUMNS, "cost_usd"),
    *("preview", "search_text"),
    *_JSON_FIELDS,
)
# CallSummary fields read from a column of the same name, as they are.
_SUMMARY_FIELDS = (
    "call_id", "duration_ms", "ttfb_ms", "method", "host", "path", "wire_format", "model", "stream",
    "agent", "user_id", "session_id", "api_key_hash", "status", "outcome", "blocked", "block_kind",
    "request_modified", "response_modified", "cost_usd", "preview",
)  # fmt: skip
_SORT_COLUMNS: dict[CallSort, str] = {
    "time": "started_at",
    "duration": "duration_ms",
    "ttfb": "ttfb_ms",
    "tokens": "total_tokens",
    "cost": "cost_usd",
}
# Sums of no rows are NULL; the casts keep PostgreSQL's SUM of BIGINT (a NUMERIC) an integer.
_TOTALS = (
    "COUNT(*) AS total, "
    "CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) AS prompt_tokens, "
    "CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS completion_tokens, "
    "CAST(COALESCE(SUM(total_tokens), 0) AS BIGINT) AS total_tokens, "
    "SUM(cost_usd) AS cost_usd, "
    "COUNT(CASE WHEN cost_usd IS NULL AND (prompt_tokens IS NOT NULL OR completion_tokens IS NOT NULL) "
    "THEN 1 END) AS unpriced_calls"
)
# A session from its calls (in the sessions index, migration 4). A session's agent, user and
# credential are those of its calls, which agree unless the agent changed mid-session.
_SESSION = (
    "session_id, MAX(agent) AS agent, MAX(user_id) AS user_id, MAX(api_key_hash) AS api_key_hash, "
    "MIN(started_at) AS first_call_at, MAX(started_at) AS last_call_at, MAX(finished_at) AS ended_at, "
    "COUNT(*) AS turns, SUM(blocked) AS blocks, SUM(modified) AS modified, "
    "CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) AS prompt_tokens, "
    "CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS completion_tokens, "
    "CAST(COALESCE(SUM(total_tokens), 0) AS BIGINT) AS total_tokens, "
    "SUM(cost_usd) AS cost_usd"
)
_SESSION_ORDER = "last_call_at DESC, session_id DESC"
# The session page reads what each turn asked and answered: not the stream events or response
# bodies, which can be megabytes a call.
_UNREAD_IN_SESSIONS = frozenset({"original_events", "final_events", "original_response", "final_response"})
_SESSION_CALL_COLUMNS = ", ".join(
    f"NULL AS {column}" if column in _UNREAD_IN_SESSIONS else column for column in _CALL_COLUMNS
)
_DECISION_COLUMNS = ("call_id", "seq", "stage", "allowed", "reason", "metadata")
_DEBUG_EVENT_COLUMNS = ("id", "call_id", "at", "type", "payload")


class Sql:
    """The statements both backends run, written in one placeholder style."""

    def __init__(self, placeholder: Placeholder) -> None:
        self._placeholder = placeholder
        self.insert_call = self._insert("calls", _CALL_COLUMNS, "call_id")
        self.insert_decision = self._insert("decisions", _DECISION_COLUMNS, "call_id, seq")
        self.insert_debug_event = self._insert("debug_events", _DEBUG_EVENT_COLUMNS, "id")
        self.get_call = f"SELECT * FROM calls WHERE call_id = {placeholder(1)}"
        self.get_decisions = f"SELECT * FROM decisions WHERE call_id = {placeholder(1)} ORDER BY seq"
        self.debug_events = f"SELECT * FROM debug_events WHERE call_id = {placeholder(1)} ORDER BY at, id"
        self.get_session = (
            f"SELECT page.*, {_OPENING_PREVIEW} FROM (SELECT {_SESSION} FROM calls "
            f"WHERE session_id = {placeholder(1)} GROUP BY session_id) AS page"
        )
        # Sessions by agent, credential and whether one was blocked: the sessions list's filter
        # options, and the count of the sessions any of its filters selects.
        self.session_facets = (
            "SELECT agent, api_key_hash, blocked, COUNT(*) AS sessions FROM (SELECT MAX(agent) AS agent, "
            "MAX(api_key_hash) AS api_key_hash, MAX(blocked) AS blocked FROM calls "
            "WHERE session_id IS NOT NULL GROUP BY session_id) AS s GROUP BY agent, api_key_hash, blocked"
        )
        page = f"LIMIT {placeholder(2)} OFFSET {placeholder(3)}"
        in_order = f"FROM calls WHERE session_id = {placeholder(1)} ORDER BY started_at, call_id {page}"
        self.session_calls = f"SELECT {_SESSION_CALL_COLUMNS} {in_order}"
        self.session_decisions = (
            f"SELECT * FROM decisions WHERE call_id IN (SELECT call_id {in_order}) ORDER BY call_id, seq"
        )
        self.session_position = _position(placeholder(1))
        self.applied_versions = "SELECT version FROM schema_migrations"
        self.record_migration = self._insert(
            "schema_migrations", ("version", "name", "applied_at"), "version"
        )

    def _insert(self, table: str, columns: Sequence[str], key: str) -> str:
        # DO NOTHING on a stored key: a replayed batch neither duplicates nor fails.
        values = ", ".join(self._placeholder(n) for n in range(1, len(columns) + 1))
        return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values}) ON CONFLICT ({key}) DO NOTHING"

    def inserts(self, records: Sequence[Record]) -> list[tuple[str, list[tuple[Any, ...]]]]:
        """The statements that store a batch, each with its rows; statements without rows are left out."""
        calls = [record for record in records if isinstance(record, CallRecord)]
        events = [record for record in records if isinstance(record, DebugEvent)]
        statements = [
            (self.insert_call, [call_values(call) for call in calls]),
            (self.insert_decision, [row for call in calls for row in decision_values(call)]),
            (self.insert_debug_event, [debug_event_values(event) for event in events]),
        ]
        return [(sql, rows) for sql, rows in statements if rows]

    def list_calls(self, query: CallQuery) -> tuple[tuple[str, list[Any]], tuple[str, list[Any]]]:
        """Two statements with their parameters: the count and totals of matching calls, and the page."""
        where, params = self._where(query)
        limit, offset = self._placeholder(len(params) + 1), self._placeholder(len(params) + 2)
        totals = f"SELECT {_TOTALS} FROM calls{where}"
        order = _order(query)
        # The decisions are counted for the page's rows only: counted in the same SELECT as the
        # OFFSET, PostgreSQL counts them for every row it skips too (9,000 on a deep page).
        page = (
            "SELECT page.*, (SELECT COUNT(*) FROM decisions WHERE decisions.call_id = page.call_id) "
            f"AS decision_count FROM (SELECT {', '.join((*_SUMMARY_FIELDS, 'started_at', *_USAGE_COLUMNS))} "
            f"FROM calls{where} ORDER BY {order} LIMIT {limit} OFFSET {offset}) AS page ORDER BY {order}"
        )
        return (totals, params), (page, [*params, query.limit, query.offset])

    def list_sessions(self, query: SessionQuery) -> tuple[str, list[Any]]:
        """The page of sessions, with its parameters (``session_facets`` counts them all)."""
        having: list[tuple[str, Any]] = [
            (f"MAX({column}) = {{}}", value)
            for column, value in (("agent", query.agent), ("api_key_hash", query.api_key_hash))
            if value is not None
        ]
        clauses = [sql.format(self._placeholder(n)) for n, (sql, _) in enumerate(having, 1)]
        if query.blocked is not None:
            clauses.append(f"MAX(blocked) = {int(query.blocked)}")
        params = [_column(value) for _, value in having]
        grouped = "FROM calls WHERE session_id IS NOT NULL GROUP BY session_id"
        if clauses:
            grouped += " HAVING " + " AND ".join(clauses)
        limit, offset = self._placeholder(len(params) + 1), self._placeholder(len(params) + 2)
        # The page's sessions are found by their last call alone; only theirs are summed up and
        # their first prompts read (summing up every session first took twice as long).
        chosen = (
            f"SELECT session_id {grouped} ORDER BY MAX(started_at) DESC, session_id DESC "
            f"LIMIT {limit} OFFSET {offset}"
        )
        page = (
            f"SELECT page.*, {_OPENING_PREVIEW} FROM (SELECT {_SESSION} FROM calls "
            f"WHERE session_id IN ({chosen}) GROUP BY session_id) AS page ORDER BY {_SESSION_ORDER}"
        )
        return page, [*params, query.limit, query.offset]

    def _where(self, query: CallQuery) -> tuple[str, list[Any]]:
        conditions: list[tuple[str, Any]] = []  # (condition with {} for its placeholder, parameter)
        equal = {
            "outcome": query.outcome,
            "status": query.status,
            "blocked": query.blocked,
            "block_kind": query.block_kind,
            "modified": query.modified,
            "call_id": query.call_id,
            "session_id": query.session_id,
            "agent": query.agent,
            "api_key_hash": query.api_key_hash,
        }
        conditions += [
            (f"{column} = {{}}", _column(value)) for column, value in equal.items() if value is not None
        ]
        if query.since is not None:
            conditions.append(("started_at >= {}", epoch(query.since)))
        if query.until is not None:
            conditions.append(("started_at < {}", epoch(query.until)))
        # Any part of the name, as the live monitor matches; LOWER because PostgreSQL's LIKE,
        # unlike SQLite's, minds case.
        conditions += [
            (f"LOWER({column}) LIKE {{}} ESCAPE '\\'", _containing(wanted))
            for column, wanted in (("host", query.host), ("model", query.model))
            if wanted
        ]
        if query.search:
            # search_text is lowercase, so lowering the needle makes the match case-insensitive.
            conditions.append(("search_text LIKE {} ESCAPE '\\'", _containing(query.search)))
        if not conditions:
            return "", []
        clauses = [sql.format(self._placeholder(n)) for n, (sql, _) in enumerate(conditions, 1)]
        return " WHERE " + " AND ".join(clauses), [param for _, param in conditions]


# The first turn's preview, for a row of sessions named ``page``.
_OPENING_PREVIEW = (
    "(SELECT preview FROM calls AS opening WHERE opening.session_id = page.session_id "
    "ORDER BY opening.started_at, opening.call_id LIMIT 1) AS preview"
)


def _position(call_id: str) -> str:
    """A call's neighbours in its session and its place there; no row for a call without one."""
    same = "FROM calls AS other WHERE other.session_id = c.session_id"
    tie = "other.started_at = c.started_at AND other.call_id"
    before = f"(other.started_at < c.started_at OR ({tie} < c.call_id))"
    after = f"(other.started_at > c.started_at OR ({tie} > c.call_id))"
    return (
        "SELECT c.session_id, "
        f"(SELECT other.call_id {same} AND {before} "
        "ORDER BY other.started_at DESC, other.call_id DESC LIMIT 1) AS previous, "
        f"(SELECT other.call_id {same} AND {after} "
        "ORDER BY other.started_at, other.call_id LIMIT 1) AS next, "
        f"(SELECT COUNT(*) {same} AND {before}) + 1 AS turn, "
        f"(SELECT COUNT(*) {same}) AS turns "
        f"FROM calls AS c WHERE c.call_id = {call_id} AND c.session_id IS NOT NULL"
    )


def _containing(text: str) -> str:
    """A LIKE pattern for lowercase text containing ``text``, its wildcards taken literally."""
    needle = _storable(text.lower()).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{needle}%"


def _order(query: CallQuery) -> str:
    """The page's order. Calls without the sorted value come last either way; ties go newest first."""
    column, direction = _SORT_COLUMNS[query.sort], query.order.upper()
    if query.sort == "time":  # never NULL
        return f"{column} {direction}, call_id {direction}"
    return f"{column} {direction} NULLS LAST, started_at DESC, call_id DESC"


def call_values(record: CallRecord) -> tuple[Any, ...]:
    dumped = record.model_dump(mode="json", include=set(_JSON_FIELDS))
    usage = record.usage or Usage()
    values = {name: _column(getattr(record, name)) for name in _SCALAR_FIELDS}
    values |= {name: _json(dumped[name]) for name in _JSON_FIELDS}
    values |= {
        "started_at": epoch(record.started_at),
        "finished_at": epoch(record.finished_at),
        "blocked": int(record.blocked),
        "block_kind": _column(record.block_kind),
        "modified": int(record.modified),
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "cost_usd": estimate_cost(record.model, record.usage),
        "preview": _storable(preview(record.original_request)),
        "search_text": _storable(search_text(record)),
    }
    return tuple(values[column] for column in _CALL_COLUMNS)


def decision_values(record: CallRecord) -> list[tuple[Any, ...]]:
    return [
        (
            _column(record.call_id),
            seq,
            decision.stage,
            int(decision.allowed),
            _column(decision.reason),
            _json(decision.model_dump(mode="json")["metadata"]),
        )
        for seq, decision in enumerate(record.decisions)
    ]


def debug_event_values(event: DebugEvent) -> tuple[Any, ...]:
    payload = event.model_dump(mode="json")["payload"]
    return (_column(event.id), _column(event.call_id), epoch(event.at), _column(event.type), _json(payload))


def call_from_row(row: Mapping[str, Any], decisions: Iterable[Mapping[str, Any]]) -> CallRecord:
    return CallRecord.model_validate(
        {
            **{name: row[name] for name in _SCALAR_FIELDS},
            **{name: _load(row[name]) for name in _JSON_FIELDS},
            "started_at": from_epoch(row["started_at"]),
            "finished_at": from_epoch(row["finished_at"]),
            "usage": _usage(row),
            "decisions": [{**decision, "metadata": _load(decision["metadata"])} for decision in decisions],
        }
    )


def page_from_rows(
    totals: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], query: CallQuery
) -> CallPage:
    """The calls page from ``list_calls``' two statements: its totals row and its page rows."""
    return CallPage(
        calls=[summary_from_row(dict(row)) for row in rows],
        total=totals["total"],
        totals=CallTotals.model_validate(dict(totals)),
        limit=query.limit,
        offset=query.offset,
    )


def session_from_row(row: Mapping[str, Any]) -> SessionSummary:
    first, ended = from_epoch(row["first_call_at"]), from_epoch(row["ended_at"])
    return SessionSummary.model_validate(
        {
            **row,
            "first_call_at": first,
            "last_call_at": from_epoch(row["last_call_at"]),
            "duration_ms": max(0.0, (ended - first).total_seconds() * 1000),
        }
    )


def sessions_page_from_rows(
    rows: Sequence[Mapping[str, Any]], facets: Sequence[Mapping[str, Any]], query: SessionQuery
) -> SessionPage:
    """The sessions page from the ``list_sessions`` and ``session_facets`` statements."""
    wanted = {"agent": query.agent, "api_key_hash": query.api_key_hash, "blocked": query.blocked}
    selected = [
        facet
        for facet in facets
        if all(value is None or _column(value) == facet[name] for name, value in wanted.items())
    ]
    return SessionPage(
        sessions=[session_from_row(row) for row in rows],
        total=sum(facet["sessions"] for facet in selected),
        agents=_facets(facets, "agent"),
        api_key_hashes=_facets(facets, "api_key_hash"),
        limit=query.limit,
        offset=query.offset,
    )


def _facets(rows: Sequence[Mapping[str, Any]], column: str) -> list[Facet]:
    counts: dict[str | None, int] = {}
    for row in rows:
        counts[row[column]] = counts.get(row[column], 0) + row["sessions"]
    # Most sessions first; ties by value, no value last.
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0] is None, item[0] or ""))
    return [Facet(value=value, sessions=sessions) for value, sessions in ordered]


def calls_from_rows(
    rows: Sequence[Mapping[str, Any]], decisions: Sequence[Mapping[str, Any]]
) -> list[CallRecord]:
    """Calls in the rows' order, each with its decisions (``decisions`` in order of seq)."""
    by_call: dict[str, list[Mapping[str, Any]]] = {}
    for decision in decisions:
        by_call.setdefault(decision["call_id"], []).append(decision)
    return [call_from_row(row, by_call.get(row["call_id"], [])) for row in rows]


def position_from_row(row: Mapping[str, Any] | None) -> SessionPosition | None:
    return None if row is None else SessionPosition.model_validate(dict(row))


def summary_from_row(row: Mapping[str, Any]) -> CallSummary:
    return CallSummary.model_validate(
        {
            **{name: row[name] for name in _SUMMARY_FIELDS},
            "started_at": from_epoch(row["started_at"]),
            "usage": _usage(row),
            "decision_count": row["decision_count"],
        }
    )


def debug_event_from_row(row: Mapping[str, Any]) -> DebugEvent:
    return DebugEvent.model_validate({**row, "at": from_epoch(row["at"]), "payload": _load(row["payload"])})


def epoch(moment: datetime) -> float:
    """Epoch seconds; a naive datetime is taken as UTC, the zone of every time stored here."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def preview(body: Any) -> str:
    """The start of the request's last user message, on one line."""
    users = [message for message in _messages(body) if message.get("role") == "user"]
    if not users:
        return ""
    return " ".join(" ".join(_message_texts(users[-1])).split())[:PREVIEW_CHARS]


def search_text(record: CallRecord) -> str:
    """What a search looks in, lowercased: the request's system text and messages, and the
    provider's and the client's answer, with tool-call arguments."""
    body = record.original_request if isinstance(record.original_request, dict) else {}
    parts = [*_texts(body.get("system")), *_texts(body.get("instructions"))]
    for message in _messages(body):
        parts += _message_texts(message)
    for output in (record.original_output, record.final_output):
        if output is not None:
            parts += [output.text, *(call.arguments for call in output.tool_calls)]
    # The client's answer usually repeats the provider's: each text is kept once.
    return "\n".join(dict.fromkeys(part for part in parts if part)).lower()


def _messages(body: Any) -> list[dict[str, Any]]:
    """The conversation: Chat and Anthropic ``messages``, or Responses ``input`` (where a string
    is one user message)."""
    if not isinstance(body, dict):
        return []
    items = body.get("messages", body.get("input"))
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def _message_texts(message: dict[str, Any]) -> list[str]:
    # Responses tool results (function_call_output items) carry their text in ``output``.
    return _texts(message.get("content", message.get("output")))


def _texts(content: Any) -> list[str]:
    """The text in message content: a string, or parts carrying ``text`` (text, input_text,
    output_text) or nested ``content`` (Anthropic tool results)."""
    if isinstance(content, str):
        return [content]
    texts: list[str] = []
    for part in content if isinstance(content, list) else []:
        if isinstance(part, dict):
            text = part.get("text")
            texts += [text] if isinstance(text, str) else _texts(part.get("content"))
    return texts


def _usage(row: Mapping[str, Any]) -> Usage | None:
    # A Usage without any count is stored as no usage at all.
    counts = {column: row[column] for column in _USAGE_COLUMNS}
    return Usage(**counts) if any(count is not None for count in counts.values()) else None


def _column(value: Any) -> Any:
    """A scalar as both drivers take it: booleans as 0/1, enums as their text."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        return _storable(str(value))  # str() turns a StrEnum member into its value
    return value


def _storable(text: str) -> str:
    """Text both databases accept. PostgreSQL refuses NUL in TEXT, and neither takes a lone
    surrogate (half an emoji in a client's JSON); a refused batch would be retried forever."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def _json(value: Any) -> str | None:
    # ASCII JSON escapes NUL and lone surrogates, so any body is stored, and read back, exactly.
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)
