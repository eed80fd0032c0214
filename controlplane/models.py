"""Plain data that crosses the ControlPlaneService boundary.

Everything here is a Pydantic model that serialises to JSON, so a network implementation of the
interface can carry it unchanged, but ``ChunkVerdict``: one is made per stream chunk, and the
network control plane carries it as its own wire model. Live objects (policy instances, held
chunks) never cross.
"""

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from controlplane.chunks import StreamChunk
from controlplane.credentials import redact_query, scrub_credentials, scrub_strings

#: The normalised request every policy sees: an OpenAI Chat Completions request body, plus what
#: the provider's body carries that it has no place for (see EXTRA_BODY and UNMAPPED_TEXT).
NormalizedRequest = dict[str, Any]
#: Top-level fields of the provider's body that the normalised form does not hold, as they are.
EXTRA_BODY = "extra_body"
#: Every other string of the provider's body that appears nowhere else in the normalised form.
UNMAPPED_TEXT = "unmapped_text"


class WireFormat(StrEnum):
    OPENAI_CHAT = "openai_chat"
    OPENAI_RESPONSES = "openai_responses"
    ANTHROPIC_MESSAGES = "anthropic_messages"
    OPENAI_EMBEDDINGS = "openai_embeddings"
    OPENAI_MODERATIONS = "openai_moderations"
    GEMINI = "gemini"  # generateContent and streamGenerateContent
    GEMINI_COUNT_TOKENS = "gemini_count_tokens"


def utcnow() -> datetime:
    return datetime.now(UTC)


class RequestMetadata(BaseModel):
    """Who made a call and where it goes. Credentials appear only as a hash: the ``path`` keeps
    its query string, but not the values of credential parameters (``?key=…``)."""

    call_id: str
    trace_id: str | None = None
    user_id: str | None = None
    api_key_hash: str = ""
    timestamp: datetime = Field(default_factory=utcnow)
    host: str
    path: str
    wire_format: WireFormat | None = None
    model: str | None = None
    stream: bool = False
    user_agent: str | None = None

    @field_validator("path")
    @classmethod
    def _no_query_credentials(cls, path: str) -> str:
        return redact_query(path)


#: The metadata key a policy sets on a result that removed a tool call from the answer (its name):
#: the result itself is allowed (the answer goes on without the call), but the call was blocked.
REMOVED_TOOL = "blocked_tool"


def unread_request() -> NormalizedRequest:
    """What a stream's policy is given for a request nobody read: a retrieval's (the request that
    produced the output is not known), or one no policy inspected (not normalised)."""
    return {"messages": []}


class Inspection(BaseModel):
    """What a call's policy looks at (``PolicyHandler.inspects_*``), and which version it is.
    What it does not look at takes the passive path: passed on as it came, not normalised."""

    requests: bool = True
    responses: bool = True
    streams: bool = True
    policy_version: str | None = None


class PolicyResult[T](BaseModel):
    """What a policy decided about one value.

    ``allowed=False`` on a request blocks the call; on a stream chunk it ends the stream after
    ``value`` (if any) has been sent, closing the stream validly.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    value: T | None = None
    allowed: bool = True
    reason: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    # Set by the control plane, not by policies: which policy decided, and whether none could.
    policy_version: str | None = None
    unpoliced: bool = False

    @classmethod
    def allow(cls, value: T, reason: str | None = None, **metadata: Any) -> "PolicyResult[T]":
        return cls(value=value, allowed=True, reason=reason, metadata=metadata)

    @classmethod
    def block(cls, reason: str, value: T | None = None, **metadata: Any) -> "PolicyResult[T]":
        return cls(value=value, allowed=False, reason=reason, metadata=metadata)


@dataclass(slots=True)
class ChunkVerdict:
    """What the control plane answers for a stream chunk: a policy's ``PolicyResult`` with its
    chunk as plain data, whatever the policy saw. A plain dataclass, not a model: one is built
    per chunk, from a result that was validated when the policy made it (or off the wire)."""

    value: StreamChunk | None = None
    allowed: bool = True
    reason: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    policy_version: str | None = None
    unpoliced: bool = False
    #: Which of the chunks given it answers (their index), if one.
    answers: int | None = None
    #: It gives that chunk back unchanged: ``value`` may then be left out (the caller has it).
    unchanged: bool = False


class StreamingContext(BaseModel):
    """A handle on one policed stream.

    ``policy_state`` is where a policy keeps per-stream state (held chunks, buffers). It lives with
    the control plane that runs the policy and is never serialised across the interface.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    stream_id: str
    call_id: str
    metadata: RequestMetadata
    request_data: NormalizedRequest
    policy_version: str | None = None  # the policy this stream keeps until it ends
    unpoliced: bool = False  # no control plane could take the stream; it passes unchanged
    inspects_chunks: bool = True  # false: no policy looks at this stream's chunks (the passive path)
    policy_state: dict[str, Any] = Field(default_factory=dict, exclude=True)


class ActivityType(StrEnum):
    REQUEST_RECEIVED = "request_received"
    REQUEST_POLICY = "request_policy"
    UPSTREAM_SENT = "upstream_sent"
    FIRST_BYTE = "first_byte"
    STREAM_CHUNKS = "stream_chunks"  # a rate-limited summary of a stream's progress
    STREAM_POLICY = "stream_policy"  # a stream decision that said something (a block, a reason)
    RESPONSE_POLICY = "response_policy"
    COMPLETED = "completed"
    BLOCKED = "blocked"
    ERROR = "error"
    PASSTHROUGH = "passthrough"


class ActivityEvent(BaseModel):
    """One step in the life of a call, for the live activity view. ``host`` and ``model`` ride on
    every event so that a view can filter without knowing the call's history.

    Every string in ``model`` and ``data`` is scrubbed of credential shapes by the model itself
    (``controlplane/credentials.py``), whoever builds the event and whatever the policy.

    ``event_id`` is given where the event is made (in a sidecar, for a sidecar's call) and travels
    with it, so that a copy sent again after a lost reply is known for the same event and the bus
    drops it (an older sidecar sends none: the control plane then gives each copy an id of its own)."""

    call_id: str
    type: ActivityType
    timestamp: datetime = Field(default_factory=utcnow)
    host: str | None = None
    model: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex, pattern=r"^[0-9A-Za-z_-]{1,64}$")

    @field_validator("model")
    @classmethod
    def _no_credential_model(cls, model: str | None) -> str | None:
        return None if model is None else scrub_credentials(model)

    @field_validator("data")
    @classmethod
    def _no_credentials(cls, data: dict[str, Any]) -> dict[str, Any]:
        scrubbed: dict[str, Any] = scrub_strings(data)
        return scrubbed
