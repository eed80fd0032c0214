"""The storage interface: what the recorder writes and the dashboard reads.

Two implementations share one schema and one set of tests: SQLite (the embedded default, a file
in the data dir) and PostgreSQL (``DATABASE_URL=postgresql://…``).
"""

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from controlplane.credentials import redact_query
from controlplane.models import WireFormat
from controlplane.recording.records import (
    BlockKind,
    CallOutcome,
    CallRecord,
    DebugEvent,
    Decision,
    Record,
    Usage,
)

# A storage is a record sink: these are the writer's (a sidecar proxy has a sink but no storage).
from controlplane.recording.writer import StorageRefused as StorageRefused
from controlplane.recording.writer import StorageUnavailable as StorageUnavailable

#: What the calls list can be sorted by. A call without the value (no TTFB, no tokens, no cost
#: estimate) comes last in either order.
CallSort = Literal["time", "duration", "ttfb", "tokens", "cost"]


class CallQuery(BaseModel):
    """Filters for the calls list; every filter is optional and they combine with AND."""

    # A parameter the list does not know would otherwise be ignored, showing every call.
    model_config = ConfigDict(extra="forbid")

    search: str | None = Field(default=None, description="Case-insensitive text in prompts or answers.")
    host: str | None = Field(default=None, description="Any part of the host, ignoring case.")
    model: str | None = Field(default=None, description="Any part of the model name, ignoring case.")
    outcome: CallOutcome | None = None
    status: int | None = None
    blocked: bool | None = None
    block_kind: BlockKind | None = Field(default=None, description="What the call's last block stopped.")
    modified: bool | None = None
    call_id: str | None = Field(default=None, description="Exactly this call.")
    session_id: str | None = Field(default=None, description="Exactly this session.")
    agent: str | None = Field(
        default=None, description="Exactly this agent (``claude-cli``, ``codex_exec``)."
    )
    api_key_hash: str | None = Field(default=None, description="Exactly this credential hash.")
    since: datetime | None = None
    until: datetime | None = None
    sort: CallSort = "time"
    order: Literal["asc", "desc"] = "desc"
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0)


class CallSummary(BaseModel):
    """A calls-list row: everything but the bodies."""

    call_id: str
    started_at: datetime
    duration_ms: float
    ttfb_ms: float | None
    method: str
    host: str
    path: str
    wire_format: WireFormat | None
    model: str | None
    stream: bool
    agent: str | None
    user_id: str | None
    session_id: str | None
    api_key_hash: str = ""
    status: int | None
    outcome: CallOutcome
    blocked: bool
    block_kind: BlockKind | None = None
    request_modified: bool
    response_modified: bool
    usage: Usage | None
    cost_usd: float | None = Field(description="Estimated when recorded; None without a price or tokens.")
    decision_count: int
    preview: str = Field(description="The start of the last user message, for the list.")

    @field_validator("path")
    @classmethod
    def _no_query_credentials(cls, path: str) -> str:
        # Rows stored before CallRecord redacted the query string are shown redacted too.
        return redact_query(path)


class CallTotals(BaseModel):
    """Sums over every call the filters select, not only the page."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float | None = Field(description="Over the calls with an estimate; None when none has one.")
    unpriced_calls: int = Field(description="Calls that counted tokens but have no estimate (unknown model).")


class CallPage(BaseModel):
    calls: list[CallSummary]
    total: int
    totals: CallTotals
    limit: int
    offset: int


#: Where an activation came from: the policy file, the control-plane API, or ``luthien policy``.
PolicySourceKind = Literal["file", "api", "cli"]


class PolicyVersion(BaseModel):
    """A policy document as stored: once per content, under its hash."""

    version: str = Field(description="The start of the SHA-256 of the document as canonical JSON.")
    document: dict[str, Any]
    created_at: datetime
    created_by: str = Field(description="The name of the credential that stored it first (never a secret).")
    note: str


class PolicyActivation(BaseModel):
    """One change of the active policy: an entry of the audit log."""

    seq: int = Field(description="Activations are numbered from 1, in order.")
    version: str
    activated_at: datetime
    activated_by: str = Field(description="The name of the credential that activated it (never a secret).")
    source: PolicySourceKind
    note: str


class ActivePolicy(BaseModel):
    activation: PolicyActivation
    version: PolicyVersion


class ShadowSetting(BaseModel):
    """One change of the shadow slot (set, cleared or promoted): an entry of its audit log."""

    seq: int = Field(description="Changes are numbered from 1, in order.")
    version: str | None = Field(description="The shadow version; None: the slot was cleared.")
    set_at: datetime
    set_by: str = Field(description="The name of the credential that changed it (never a secret).")
    note: str


class ShadowPolicy(BaseModel):
    """The shadow slot as the last change left it."""

    setting: ShadowSetting
    version: PolicyVersion | None = Field(description="None: no shadow runs.")


#: What a shadow would have done to a call: blocked something in it (a request, a tool call, a
#: stream), rewritten it, nothing different, or nothing known (the call was not replayed).
ShadowOutcome = Literal["would_block", "would_modify", "same", "skipped"]


class ShadowDecision(BaseModel):
    """What the shadow policy would have done to one live call."""

    call_id: str
    shadow_version: str
    decided_at: datetime
    outcome: ShadowOutcome
    block_kind: BlockKind | None = None
    rules: list[str] = Field(default=[], description="The rules of the blocks it would have made.")
    decisions: list[Decision] = Field(default=[], description="The replay's policy decisions.")
    notes: list[str] = Field(default=[], description="What limits the replay, or why there was none.")
    replayed: CallRecord | None = Field(
        default=None, description="The call as the shadow would have recorded it (kept when it differs)."
    )


class SessionQuery(BaseModel):
    """Filters for the sessions list, which is newest (last call) first."""

    model_config = ConfigDict(extra="forbid")

    agent: str | None = Field(default=None, description="Sessions of exactly this agent.")
    api_key_hash: str | None = Field(default=None, description="Sessions on exactly this credential hash.")
    blocked: bool | None = Field(default=None, description="Sessions with (true) or without (false) a block.")
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0)


class SessionSummary(BaseModel):
    """A session: the calls that carried one session id. A turn is one call (a request and its
    answer); an agent's tool loop is a turn per step."""

    session_id: str
    agent: str | None
    user_id: str | None
    api_key_hash: str
    first_call_at: datetime
    last_call_at: datetime
    duration_ms: float = Field(description="From the first call's start to the last answer's end.")
    turns: int
    blocks: int = Field(description="Turns that policy blocked (a request, a tool call, a stream...).")
    modified: int = Field(description="Turns whose request or answer policy changed.")
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float | None = Field(description="Over the turns with an estimate; None when none has one.")
    preview: str = Field(description="The start of the first turn's last user message.")


class Facet(BaseModel):
    """One value of a filter and how many sessions have it."""

    value: str | None
    sessions: int


class SessionPage(BaseModel):
    sessions: list[SessionSummary]
    total: int
    agents: list[Facet] = Field(description="Every agent with sessions, most sessions first.")
    api_key_hashes: list[Facet] = Field(description="Every credential hash with sessions, most first.")
    limit: int
    offset: int


class SessionPosition(BaseModel):
    """Where a call stands in its session: its neighbours, oldest first."""

    session_id: str
    turn: int = Field(description="The call's place, counting from 1.")
    turns: int
    previous: str | None
    next: str | None


class Storage(Protocol):
    async def migrate(self) -> None:
        """Applies the migrations this database has not seen yet (safe with many processes)."""
        ...

    async def write(self, records: Sequence[Record]) -> None:
        """Stores a batch atomically. Idempotent: a record already stored is left as it is, so a
        replayed batch never duplicates. Raises ``StorageUnavailable`` when it could not."""
        ...

    async def get_call(self, call_id: str) -> CallRecord | None: ...

    async def list_calls(self, query: CallQuery) -> CallPage:
        """In the query's order (newest first by default); ties newest first."""
        ...

    async def list_sessions(self, query: SessionQuery) -> SessionPage:
        """The sessions, the one with the latest call first."""
        ...

    async def get_session(self, session_id: str) -> SessionSummary | None: ...

    async def session_calls(self, session_id: str, offset: int, limit: int) -> list[CallRecord]:
        """A session's calls oldest first, without their stream events and response bodies
        (the outputs say what was answered)."""
        ...

    async def session_position(self, call_id: str) -> SessionPosition | None:
        """None for an unknown call or one without a session."""
        ...

    async def debug_events(self, call_id: str) -> list[DebugEvent]:
        """Oldest first."""
        ...

    async def activate_policy(
        self, version: PolicyVersion, by: str, source: PolicySourceKind, note: str, *, unless_active: bool
    ) -> PolicyActivation:
        """Stores ``version`` (kept as first stored if its hash is known) and makes it the active
        one, atomically, one activation at a time across processes. With ``unless_active``, a
        version already active is left as it is and its activation returned: replicas that all
        see the same file change record it once."""
        ...

    async def active_policy(self) -> ActivePolicy | None:
        """The version the last activation names; None before the first."""
        ...

    async def policy_version(self, version: str) -> PolicyVersion | None: ...

    async def policy_history(self, limit: int) -> list[PolicyActivation]:
        """The latest ``limit`` activations, newest first."""
        ...

    async def set_shadow(self, version: PolicyVersion | None, by: str, note: str) -> ShadowSetting:
        """Stores ``version`` (as ``activate_policy`` does) and makes it the shadow; None clears
        the slot. One change at a time across processes, each kept in the slot's audit log."""
        ...

    async def shadow_policy(self) -> ShadowPolicy | None:
        """The slot as the last change left it; None before the first."""
        ...

    async def promote_shadow(self, by: str, source: PolicySourceKind, note: str) -> PolicyActivation | None:
        """Activates the shadow version and clears the slot, in one transaction; None (and
        nothing changed) when no shadow is set."""
        ...

    async def shadow_history(self, limit: int) -> list[ShadowSetting]:
        """The latest ``limit`` changes of the shadow slot, newest first."""
        ...

    async def write_shadow_decisions(self, decisions: Sequence[ShadowDecision]) -> None:
        """Idempotent: a call's first decision under a version is kept."""
        ...

    async def shadow_decisions(self, call_ids: Sequence[str]) -> dict[str, ShadowDecision]:
        """The latest shadow decision of each of ``call_ids`` that has one."""
        ...

    async def shadow_counts(self, version: str, since: datetime) -> dict[ShadowOutcome, int]:
        """How many calls decided since ``since`` the shadow ``version`` would have treated each way."""
        ...

    async def ping(self) -> None:
        """Returns when the database answers; raises ``StorageUnavailable`` otherwise."""
        ...

    async def close(self) -> None: ...
