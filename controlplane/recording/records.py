"""What is stored about each call: the ``CallRecord`` and the debug events.

Records cross the ControlPlaneService boundary (the data plane builds them, the control plane
stores them), so they are plain Pydantic models. Credentials are redacted by the model itself,
so no code path can build a record that holds an API key in a header, in the path's query string
(``?key=…``), in a decision's reason or metadata, in the error, or in the bodies of a call
forwarded unpoliced (``controlplane/credentials.py``).
"""

import re
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, computed_field, field_validator, model_validator

from controlplane.chunks import StreamChunk
from controlplane.credentials import REDACTED as REDACTED
from controlplane.credentials import redact_query, scrub_body, scrub_credentials, scrub_strings
from controlplane.models import REMOVED_TOOL, WireFormat, utcnow

_SECRET_HEADER = re.compile(r"auth|token|secret|key|cookie|session|password|signature", re.IGNORECASE)
# Headers that match the pattern above but name things, not credentials.
_PUBLIC_HEADERS = frozenset({"x-claude-code-session-id", "session_id", "session-id", "idempotency-key"})


def redact_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers with every credential-like value replaced."""
    return [
        (name, REDACTED if _SECRET_HEADER.search(name) and name.lower() not in _PUBLIC_HEADERS else value)
        for name, value in headers
    ]


class CallOutcome(StrEnum):
    COMPLETED = "completed"  # the client got the provider's answer (perhaps rewritten by policy)
    BLOCKED = "blocked"  # policy stopped the request, the response, a tool call or the stream
    PROVIDER_ERROR = "provider_error"  # the provider answered with an error status or error event
    ERROR = "error"  # Luthien could not complete the call (bad request, provider unreachable, cut)
    PASSTHROUGH = "passthrough"  # an endpoint Luthien does not police: forwarded and recorded


class BlockKind(StrEnum):
    """What a block stopped. A call's kind is that of its last block (a stream ended after a tool
    call was removed is ``stream_ended``); a refusal without a decision (an endpoint the table
    refuses) is ``request_blocked``."""

    REQUEST = "request_blocked"  # refused before the provider saw it
    RESPONSE = "response_blocked"  # a whole answer refused
    TOOL_CALL = "tool_call_removed"  # a tool call taken out of the answer, which went on without it
    STREAM = "stream_ended"  # a stream ended by policy


_STAGE_BLOCKS = {"request": BlockKind.REQUEST, "response": BlockKind.RESPONSE, "stream": BlockKind.STREAM}


class Decision(BaseModel):
    """A policy decision that said something: a block, a rewrite with a reason, a judgement.

    ``allowed`` says whether what the decision judged went on; ``block`` what it stopped. Both
    are derived here, from the policy's result, so that records stored before ``block`` existed
    (a removed tool call then read ``allowed: true``) read back the same as new ones."""

    stage: Literal["request", "response", "stream"]
    allowed: bool
    reason: str | None = None  # may quote what was blocked (a tool call's arguments): scrubbed
    metadata: dict[str, Any] = Field(default_factory=dict)
    block: BlockKind | None = None

    @model_validator(mode="after")
    def _block_kind(self) -> "Decision":
        if REMOVED_TOOL in self.metadata:
            self.allowed, self.block = False, BlockKind.TOOL_CALL
        else:
            self.block = None if self.allowed else _STAGE_BLOCKS[self.stage]
        return self

    @field_validator("reason")
    @classmethod
    def _no_credential_reason(cls, reason: str | None) -> str | None:
        return None if reason is None else scrub_credentials(reason)

    @field_validator("metadata")
    @classmethod
    def _no_credentials(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        scrubbed: dict[str, Any] = scrub_strings(metadata)
        return scrubbed


class ToolCall(BaseModel):
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class Output(BaseModel):
    """The model's answer reconstructed from the normalised view: comparable across formats and
    between the stream the provider sent and the stream the client received."""

    text: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    finish_reason: str | None = None


class OutputAssembler:
    """Accumulates stream chunks into an ``Output`` (tool calls by their index)."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._tools: dict[int, ToolCall] = {}
        self._finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def add(self, chunk: StreamChunk) -> None:
        if (usage := chunk.get("usage")) is not None:
            self.usage = dict(usage)
        for choice in (chunk.get("choices") or [])[:1]:
            delta = choice.get("delta") or {}
            if content := delta.get("content"):
                self._text.append(content)
            if reasoning := delta.get("reasoning_content"):
                self._reasoning.append(reasoning)
            for call in delta.get("tool_calls") or []:
                tool = self._tools.setdefault(call.get("index") or 0, ToolCall())
                tool.id = tool.id or call.get("id")
                if function := call.get("function"):
                    tool.name = tool.name or function.get("name")
                    tool.arguments += function.get("arguments") or ""
            self._finish_reason = choice.get("finish_reason") or self._finish_reason

    def output(self) -> Output:
        return Output(
            text="".join(self._text),
            reasoning="".join(self._reasoning),
            tool_calls=[self._tools[i] for i in sorted(self._tools)],
            finish_reason=self._finish_reason,
        )


#: The widest integer every database column here can hold (PostgreSQL's INTEGER). A record the
#: database could not store must be refused when it is built, not fail when it is written.
MAX_STORED_INT = 2**31 - 1
TokenCount = Annotated[int, Field(ge=0, le=MAX_STORED_INT)]


class Usage(BaseModel):
    prompt_tokens: TokenCount | None = None
    completion_tokens: TokenCount | None = None
    total_tokens: TokenCount | None = None

    @classmethod
    def from_mapping(cls, usage: dict[str, Any] | None) -> "Usage | None":
        """The counts a provider reported; one that is not a plausible count is left out."""
        counts = cls(**{name: _count((usage or {}).get(name)) for name in cls.model_fields})
        return counts if counts.model_dump(exclude_none=True) else None


def _count(value: Any) -> int | None:
    is_count = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_STORED_INT
    return value if is_count else None


#: One SSE event as stored: ``[event name or None, data]``, compact and in order.
StoredEvent = tuple[str | None, str]


class CallRecord(BaseModel):
    """Everything stored about one call through the proxy."""

    call_id: str
    started_at: datetime
    finished_at: datetime
    method: str
    host: str
    path: str
    wire_format: WireFormat | None = None
    model: str | None = None
    stream: bool = False
    # Who called: from headers and the body's user fields when present; credentials only hashed.
    agent: str | None = None
    user_agent: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    api_key_hash: str = ""
    trace_id: str | None = None

    status: int | None = Field(default=None, ge=0, le=999)  # the HTTP status the client received
    outcome: CallOutcome
    error: str | None = None
    request_modified: bool = False
    response_modified: bool = False
    policy_version: str | None = None  # which version of the policy file handled the call
    unpoliced: bool = False  # the control plane was unreachable and the proxy fails open
    ttfb_ms: float | None = None  # request received → first byte from the provider
    duration_ms: float = 0.0  # request received → last byte to the client
    usage: Usage | None = None

    request_headers: list[tuple[str, str]] = Field(default_factory=list)
    original_request: Any = None  # the JSON body the client sent
    final_request: Any = None  # the JSON body sent to the provider (None: never sent)
    original_response: Any = None  # non-streaming: the provider's JSON body
    final_response: Any = None  # non-streaming: the JSON body the client received
    original_events: list[StoredEvent] | None = None  # streaming: what the provider sent
    final_events: list[StoredEvent] | None = None  # streaming: what the client received
    original_output: Output | None = None
    final_output: Output | None = None
    decisions: list[Decision] = Field(default_factory=list)

    @field_validator("request_headers")
    @classmethod
    def _no_secrets(cls, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return redact_headers(headers)

    @field_validator("path")
    @classmethod
    def _no_query_credentials(cls, path: str) -> str:
        return redact_query(path)

    @field_validator("error")
    @classmethod
    def _no_credential_error(cls, error: str | None) -> str | None:
        return None if error is None else scrub_credentials(error)

    @model_validator(mode="after")
    def _no_forwarded_credentials(self) -> "CallRecord":
        """A passthrough call's bodies were never policed, so no policy redacts them; sign-in
        endpoints on provider hosts answer with tokens and keys."""
        if self.outcome is CallOutcome.PASSTHROUGH:
            for name in ("original_request", "final_request", "original_response", "final_response"):
                setattr(self, name, scrub_body(getattr(self, name)))
        return self

    @model_validator(mode="after")
    def _blocked_outcome(self) -> "CallRecord":
        self.outcome = settled_outcome(self.outcome, self.decisions)
        return self

    @property
    def blocked(self) -> bool:
        return self.outcome is CallOutcome.BLOCKED

    @computed_field  # type: ignore[prop-decorator]
    @property
    def block_kind(self) -> BlockKind | None:
        return block_kind(self.outcome, self.decisions)

    @property
    def modified(self) -> bool:
        return self.request_modified or self.response_modified


def settled_outcome(outcome: CallOutcome, decisions: list[Decision]) -> CallOutcome:
    """A call that completed with a block on record (a tool call removed) was blocked."""
    if outcome is CallOutcome.COMPLETED and any(d.block is not None for d in decisions):
        return CallOutcome.BLOCKED
    return outcome


def block_kind(outcome: CallOutcome, decisions: list[Decision]) -> BlockKind | None:
    """What the call's last block stopped (see ``BlockKind``); None for a call not blocked."""
    if outcome is not CallOutcome.BLOCKED:
        return None
    kinds = [d.block for d in decisions if d.block is not None]
    return kinds[-1] if kinds else BlockKind.REQUEST


class DebugEvent(BaseModel):
    """A free-form event a policy or the proxy logs for later debugging."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    call_id: str | None = None
    at: datetime = Field(default_factory=utcnow)
    type: str
    payload: dict[str, Any] = Field(default_factory=dict)


#: What the recorder queues, spools and writes.
Record = CallRecord | DebugEvent
