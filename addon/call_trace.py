"""What the pipeline saw of one call, turned into a ``CallRecord`` when the call is over."""

import copy
import json
import time
from collections import deque
from typing import Any

from opentelemetry.trace import INVALID_SPAN, Span

from addon.session_identity import session_id
from controlplane.chunks import StreamChunk
from controlplane.models import ChunkVerdict, PolicyResult, RequestMetadata, utcnow
from controlplane.recording.records import (
    CallOutcome,
    CallRecord,
    Decision,
    Output,
    OutputAssembler,
    StoredEvent,
    Usage,
)
from formats.sse import EventParser, SSEEvent, SSEParser

#: A provider's error body kept for the record; longer ones are cut (they are not the point).
_MAX_ERROR_BODY = 64 * 1024
#: Event data kept whole for each side of a stream; past it, only the last TAIL_EVENTS are kept.
MAX_RECORDED_EVENT_BYTES = 2 * 1024 * 1024
TAIL_EVENTS = 64
#: The name of the event that stands in a record for the events left out of it.
OMITTED_EVENT = "luthien-omitted"
#: The error of a call whose proxy stopped (was killed) before the call ended.
INTERRUPTED = "Luthien stopped before this call ended: what happened after its request is not known"


def agent_name(user_agent: str | None) -> str | None:
    """``claude-cli/2.1.3 (external, cli)`` → ``claude-cli``; ``OpenAI/Python 2.5`` → ``OpenAI``."""
    if not user_agent:
        return None
    return user_agent.split("/", 1)[0].split(" ", 1)[0] or None


def body_for_record(data: bytes) -> Any:
    """JSON when the body is JSON, else its text (cut): a record keeps what it can read."""
    try:
        return json.loads(data)
    except ValueError:
        return data[:_MAX_ERROR_BODY].decode("utf-8", errors="replace")


class EventLog:
    """One side of a stream's events, for the record, in bounded memory: every event while their
    data fits MAX_RECORDED_EVENT_BYTES, then the first ones, an OMITTED_EVENT saying how many were
    left out, and the last TAIL_EVENTS (where the finish reason and usage are). The record's
    assembled output keeps the whole text either way."""

    def __init__(self, budget: int = MAX_RECORDED_EVENT_BYTES, tail: int = TAIL_EVENTS) -> None:
        self._head: list[StoredEvent] = []
        self._tail: deque[StoredEvent] = deque(maxlen=tail)
        self._room = budget
        self._omitted_events = 0
        self._omitted_bytes = 0

    def add(self, event: StoredEvent) -> None:
        size = len(event[1])
        if not self._tail and size <= self._room:
            self._head.append(event)
            self._room -= size
            return
        if len(self._tail) == self._tail.maxlen:
            self._omitted_events += 1
            self._omitted_bytes += len(self._tail[0][1])
        self._tail.append(event)

    def events(self) -> list[StoredEvent]:
        if not self._omitted_events:
            return [*self._head, *self._tail]
        omitted = {"omitted_events": self._omitted_events, "omitted_bytes": self._omitted_bytes}
        return [*self._head, (OMITTED_EVENT, json.dumps(omitted)), *self._tail]


class StreamCapture:
    """Both sides of a stream: the provider's events and chunks, the policy's chunks and the
    events the client received.

    A mirrored capture (the passive path, where the client gets exactly what the provider sent)
    keeps one side and copies it into the other only if the two ever part: at the first thing
    written for the client rather than forwarded.
    """

    def __init__(self, *, mirrored: bool = False, parser: EventParser | None = None) -> None:
        self.original_events = EventLog()
        self.original = OutputAssembler()
        self._mirrored = mirrored
        self._final_events = EventLog()
        self._final = OutputAssembler()
        self._sent = parser or SSEParser()  # framed as the stream is

    @property
    def final_events(self) -> EventLog:
        return self.original_events if self._mirrored else self._final_events

    @property
    def final(self) -> OutputAssembler:
        return self.original if self._mirrored else self._final

    def upstream_event(self, event: SSEEvent, chunks: list[StreamChunk]) -> None:
        self.original_events.add((event.event, event.data))
        for chunk in chunks:
            self.original.add(chunk)

    def policy_chunk(self, chunk: StreamChunk) -> None:
        self._part()
        self._final.add(chunk)

    def client_events(self, events: list[SSEEvent]) -> None:
        self._part()
        for event in events:
            self._final_events.add((event.event, event.data))

    def sent(self, data: bytes) -> None:
        """Bytes written for the client (whole events) rather than forwarded."""
        self.client_events(self._sent.feed(data))

    def _part(self) -> None:
        if self._mirrored:
            self._mirrored = False
            self._final_events = copy.deepcopy(self.original_events)
            self._final = copy.deepcopy(self.original)


class CallTrace:
    def __init__(self, method: str, headers: list[tuple[str, str]], metadata: RequestMetadata) -> None:
        self.metadata = metadata
        self._method = method
        self._headers = headers
        self._started_at = utcnow()
        self._clock = time.monotonic()
        self._finished_at = self._started_at
        self._duration_ms = 0.0
        self.ttfb_ms: float | None = None
        self.status: int | None = None
        self.outcome = CallOutcome.COMPLETED
        self.error: str | None = None
        self.original_request: Any = None
        self.final_request: Any = None
        self.request_modified = False
        self.original_response: Any = None
        self.final_response: Any = None
        self.response_modified = False
        self.policy_version: str | None = None
        self.unpoliced = False
        # Whether the policy that took the request inspects a whole response, a stream's chunks
        # (RequestVerdict).
        self.inspects_response = True
        self.inspects_stream = True
        self.original_output: Output | None = None
        self.final_output: Output | None = None
        self.usage: Usage | None = None
        self.stream: StreamCapture | None = None
        self.stream_ended = False  # the stream's outcome is in (at its terminal event, or its end)
        self.decisions: list[Decision] = []
        self.span: Span = INVALID_SPAN  # the call's span, from request to the last byte
        self.stream_span: Span | None = None

    def first_byte(self) -> None:
        if self.ttfb_ms is None:
            self.ttfb_ms = self._elapsed_ms()

    def decide(self, stage: str, result: PolicyResult[Any] | ChunkVerdict) -> None:
        """Keeps a decision that said something: a block or a reason."""
        if result.reason is not None or not result.allowed:
            self.decisions.append(
                Decision.model_validate(
                    {
                        "stage": stage,
                        "allowed": result.allowed,
                        "reason": result.reason,
                        "metadata": result.metadata,
                    }
                )
            )

    def finish(self) -> None:
        """The client has its answer (or left): the call's duration ends here."""
        self._finished_at, self._duration_ms = utcnow(), self._elapsed_ms()

    @property
    def duration_ms(self) -> float:
        """The call's duration, once ``finish`` has been called."""
        return self._duration_ms

    def fail(self, outcome: CallOutcome, status: int | None, error: str) -> None:
        self.outcome, self.status, self.error = outcome, status, error

    def stand_in(self) -> CallRecord:
        """The call's record should the process die before the call ends."""
        return self.record().model_copy(update={"outcome": CallOutcome.ERROR, "error": INTERRUPTED})

    def record(self) -> CallRecord:
        lookup = {k.lower(): v for k, v in self._headers}
        meta = self.metadata
        stream = self.stream
        return CallRecord(
            call_id=meta.call_id,
            started_at=self._started_at,
            finished_at=self._finished_at,
            method=self._method,
            host=meta.host,
            path=meta.path,
            wire_format=meta.wire_format,
            model=meta.model,
            stream=meta.stream,
            agent=agent_name(meta.user_agent),
            user_agent=meta.user_agent,
            user_id=meta.user_id,
            session_id=session_id(lookup, meta.user_id),
            api_key_hash=meta.api_key_hash,
            trace_id=meta.trace_id,
            status=self.status,
            outcome=self.outcome,
            error=self.error,
            request_modified=self.request_modified,
            response_modified=self.response_modified,
            policy_version=self.policy_version,
            unpoliced=self.unpoliced,
            ttfb_ms=self.ttfb_ms,
            duration_ms=self._duration_ms,
            usage=self.usage,
            request_headers=self._client_headers(),
            original_request=self.original_request,
            final_request=self.final_request,
            original_response=self.original_response,
            final_response=self.final_response,
            original_events=stream.original_events.events() if stream else None,
            final_events=stream.final_events.events() if stream else None,
            original_output=stream.original.output() if stream else self.original_output,
            final_output=stream.final.output() if stream else self.final_output,
            decisions=self.decisions,
        )

    def _client_headers(self) -> list[tuple[str, str]]:
        """The headers as the client sent them: without the hop from mitmproxy to the relay."""
        kept = [
            (k, v) for k, v in self._headers if k.lower() != "host" and not k.lower().startswith("x-luthien-")
        ]
        return [("host", self.metadata.host), *kept]

    def _elapsed_ms(self) -> float:
        return (time.monotonic() - self._clock) * 1000
