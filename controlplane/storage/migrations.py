"""The schema: numbered migrations, applied in order and recorded in ``schema_migrations``.

SQLite and PostgreSQL share this one schema, so it sticks to SQL both understand: TEXT, INTEGER,
BIGINT and DOUBLE PRECISION. JSON is TEXT; times are epoch seconds and booleans 0/1, which both
databases index and compare the same way. A released migration never changes; a change to the
schema is a new migration at the end of the list.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


#: A decision row whose metadata (compact JSON) has the removed-tool key ("blocked_tool", fixed
#: here as released): inside a JSON string a quote is escaped, so only a key matches; ``_`` is a
#: LIKE wildcard, hence escaped.
_REMOVED_TOOL = """decisions.metadata LIKE '%"blocked\\_tool":%' ESCAPE '\\'"""

# The calls table from migration 3 on: every small column before the text that can be long (the
# search text, headers and bodies). cost_usd is estimated when a call is stored
# (controlplane.pricing); calls stored before have none.
_CALLS_V3 = """
    call_id TEXT PRIMARY KEY,
    started_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION NOT NULL,
    method TEXT NOT NULL,
    host TEXT NOT NULL,
    path TEXT NOT NULL,
    wire_format TEXT,
    model TEXT,
    stream INTEGER NOT NULL,
    agent TEXT,
    user_agent TEXT,
    user_id TEXT,
    session_id TEXT,
    api_key_hash TEXT NOT NULL,
    trace_id TEXT,
    status INTEGER,
    outcome TEXT NOT NULL,
    error TEXT,
    request_modified INTEGER NOT NULL,
    response_modified INTEGER NOT NULL,
    policy_version TEXT,
    unpoliced INTEGER NOT NULL,
    blocked INTEGER NOT NULL,
    block_kind TEXT,
    modified INTEGER NOT NULL,
    ttfb_ms DOUBLE PRECISION,
    duration_ms DOUBLE PRECISION NOT NULL,
    prompt_tokens BIGINT,
    completion_tokens BIGINT,
    total_tokens BIGINT,
    cost_usd DOUBLE PRECISION,
    preview TEXT NOT NULL,
    search_text TEXT NOT NULL,
    request_headers TEXT NOT NULL,
    original_request TEXT,
    final_request TEXT,
    original_response TEXT,
    final_response TEXT,
    original_events TEXT,
    final_events TEXT,
    original_output TEXT,
    final_output TEXT
"""
# The columns of the calls table of migration 2, copied over by migration 3.
_V2_COLUMNS = ", ".join(
    line.split()[0] for line in _CALLS_V3.strip().splitlines() if not line.lstrip().startswith("cost_usd")
)

# Claude Code's metadata.user_id, as addon/session_identity.py reads it, for calls stored before
# their session was read from it: ``user_…_account_…_session_<uuid>`` and, from 2.1.78, JSON
# ending in ``"session_id":"<uuid>"}``. A uuid is 36 characters; ``_`` is a LIKE wildcard.
_UUID_CHARS = "_" * 36
_CLAUDE_CODE_LEGACY = f"user_id LIKE 'user\\_%\\_account\\_%\\_session\\_{_UUID_CHARS}' ESCAPE '\\'"
_CLAUDE_CODE_JSON = f"""user_id LIKE '{{%"session\\_id":"{_UUID_CHARS}"}}' ESCAPE '\\'"""

SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL
)"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "calls, decisions and debug events",
        (
            """
            CREATE TABLE calls (
                call_id TEXT PRIMARY KEY,
                started_at DOUBLE PRECISION NOT NULL,
                finished_at DOUBLE PRECISION NOT NULL,
                method TEXT NOT NULL,
                host TEXT NOT NULL,
                path TEXT NOT NULL,
                wire_format TEXT,
                model TEXT,
                stream INTEGER NOT NULL,
                agent TEXT,
                user_agent TEXT,
                user_id TEXT,
                session_id TEXT,
                api_key_hash TEXT NOT NULL,
                trace_id TEXT,
                status INTEGER,
                outcome TEXT NOT NULL,
                error TEXT,
                request_modified INTEGER NOT NULL,
                response_modified INTEGER NOT NULL,
                policy_version TEXT,
                unpoliced INTEGER NOT NULL,
                blocked INTEGER NOT NULL,
                modified INTEGER NOT NULL,
                ttfb_ms DOUBLE PRECISION,
                duration_ms DOUBLE PRECISION NOT NULL,
                prompt_tokens BIGINT,
                completion_tokens BIGINT,
                total_tokens BIGINT,
                preview TEXT NOT NULL,
                search_text TEXT NOT NULL,
                request_headers TEXT NOT NULL,
                original_request TEXT,
                final_request TEXT,
                original_response TEXT,
                final_response TEXT,
                original_events TEXT,
                final_events TEXT,
                original_output TEXT,
                final_output TEXT
            )""",
            "CREATE INDEX calls_started_at ON calls (started_at)",
            "CREATE INDEX calls_host ON calls (host)",
            "CREATE INDEX calls_model ON calls (model)",
            """
            CREATE TABLE decisions (
                call_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                stage TEXT NOT NULL,
                allowed INTEGER NOT NULL,
                reason TEXT,
                metadata TEXT NOT NULL,
                PRIMARY KEY (call_id, seq)
            )""",
            """
            CREATE TABLE debug_events (
                id TEXT PRIMARY KEY,
                call_id TEXT,
                at DOUBLE PRECISION NOT NULL,
                type TEXT NOT NULL,
                payload TEXT NOT NULL
            )""",
            "CREATE INDEX debug_events_call_id ON debug_events (call_id)",
        ),
    ),
    Migration(
        2,
        "block kinds: a removed tool call is a block",
        (
            "ALTER TABLE calls ADD COLUMN block_kind TEXT",
            "CREATE INDEX calls_block_kind ON calls (block_kind)",
            # Rows written before: a decision that removed a tool call (its metadata names it, see
            # controlplane.models.REMOVED_TOOL) was stored as allowed and its call as completed.
            f"UPDATE decisions SET allowed = 0 WHERE {_REMOVED_TOOL}",
            f"""
            UPDATE calls SET outcome = 'blocked', blocked = 1
            WHERE outcome = 'completed' AND EXISTS (
                SELECT 1 FROM decisions WHERE decisions.call_id = calls.call_id AND {_REMOVED_TOOL})""",
            # The kind of a call's last block (controlplane.recording.records.block_kind).
            f"""
            UPDATE calls SET block_kind = COALESCE(
                (SELECT CASE
                    WHEN {_REMOVED_TOOL} THEN 'tool_call_removed'
                    WHEN decisions.stage = 'request' THEN 'request_blocked'
                    WHEN decisions.stage = 'response' THEN 'response_blocked'
                    ELSE 'stream_ended' END
                 FROM decisions WHERE decisions.call_id = calls.call_id AND decisions.allowed = 0
                 ORDER BY decisions.seq DESC LIMIT 1),
                'request_blocked')
            WHERE outcome = 'blocked'""",
        ),
    ),
    Migration(
        3,
        "cost estimates, the small columns first, and indexes to sort by",
        (
            # A rebuild, not ALTER TABLE ADD COLUMN: SQLite reads a column by walking the row up
            # to it, and a column added after the bodies (block_kind, or cost_usd, which the
            # totals of every listed call read) would mean reading every body of every call.
            f"CREATE TABLE calls_v3 ({_CALLS_V3})",
            f"INSERT INTO calls_v3 ({_V2_COLUMNS}) SELECT {_V2_COLUMNS} FROM calls",
            "DROP TABLE calls",
            "ALTER TABLE calls_v3 RENAME TO calls",
            # The list's order, and every column its totals and its host and model filters (any
            # part of the name, so no index seeks them) read: those read this index, not the rows.
            """
            CREATE INDEX calls_list ON calls (
                started_at, call_id, host, model, prompt_tokens, completion_tokens, total_tokens, cost_usd
            )""",
            "CREATE INDEX calls_block_kind ON calls (block_kind)",
            "CREATE INDEX calls_duration_ms ON calls (duration_ms)",
            "CREATE INDEX calls_ttfb_ms ON calls (ttfb_ms)",
            "CREATE INDEX calls_total_tokens ON calls (total_tokens)",
            "CREATE INDEX calls_cost_usd ON calls (cost_usd)",
        ),
    ),
    Migration(
        4,
        "sessions: an index to group calls by session, and the sessions of calls stored before",
        (
            # A session's calls in order (the session page, a call's neighbours) and every
            # column the sessions list sums: grouping reads this index, not the rows.
            """
            CREATE INDEX calls_session ON calls (
                session_id, started_at, call_id, finished_at, blocked, modified, prompt_tokens,
                completion_tokens, total_tokens, cost_usd, agent, api_key_hash, user_id
            )""",
            f"""
            UPDATE calls SET session_id = CASE
                WHEN {_CLAUDE_CODE_LEGACY} THEN substr(user_id, length(user_id) - 35)
                WHEN {_CLAUDE_CODE_JSON} THEN substr(user_id, length(user_id) - 37, 36)
                ELSE user_id END
            WHERE session_id IS NULL AND user_id IS NOT NULL AND user_id <> ''""",
        ),
    ),
    Migration(
        5,
        "policy versions and their activations",
        (
            # A version is its document, stored once under its content hash, whoever stored it first.
            """
            CREATE TABLE policy_versions (
                version TEXT PRIMARY KEY,
                document TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                created_by TEXT NOT NULL,
                note TEXT NOT NULL
            )""",
            # Every activation, in order (seq): the active version is the last one's, and the
            # table is the audit log of who changed the policy when.
            """
            CREATE TABLE policy_activations (
                seq INTEGER PRIMARY KEY,
                version TEXT NOT NULL REFERENCES policy_versions (version),
                activated_at DOUBLE PRECISION NOT NULL,
                activated_by TEXT NOT NULL,
                source TEXT NOT NULL,
                note TEXT NOT NULL
            )""",
        ),
    ),
    Migration(
        6,
        "shadow policies and what they would have done",
        (
            # Every change of the shadow slot, in order (seq): the shadow is the last one's version
            # (NULL: cleared), and the table is the audit log of who set or cleared it when.
            """
            CREATE TABLE policy_shadows (
                seq INTEGER PRIMARY KEY,
                version TEXT REFERENCES policy_versions (version),
                set_at DOUBLE PRECISION NOT NULL,
                set_by TEXT NOT NULL,
                note TEXT NOT NULL
            )""",
            # A live call replayed under the shadow version: its outcome, and (when it differs
            # from what was enforced) the replayed call, for its diff.
            """
            CREATE TABLE shadow_decisions (
                call_id TEXT NOT NULL,
                shadow_version TEXT NOT NULL,
                decided_at DOUBLE PRECISION NOT NULL,
                outcome TEXT NOT NULL,
                block_kind TEXT,
                rules TEXT NOT NULL,
                decisions TEXT NOT NULL,
                notes TEXT NOT NULL,
                replayed TEXT,
                PRIMARY KEY (call_id, shadow_version)
            )""",
            # The policy page's counts: one version's decisions since it was set.
            "CREATE INDEX shadow_decisions_counts ON shadow_decisions (shadow_version, decided_at, outcome)",
        ),
    ),
)


def pending(applied: set[int]) -> list[Migration]:
    """The migrations a database with these versions applied still needs, in order."""
    return [migration for migration in MIGRATIONS if migration.version not in applied]
