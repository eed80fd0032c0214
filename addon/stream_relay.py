"""Runs one upstream SSE stream through the stream policy and yields what the client receives.

While the policy gives back exactly the chunks an upstream event produced, that event's original
bytes are forwarded (a no-op policy is invisible). Events the policy holds back wait, in order,
together with the structural events behind them. At the first chunk the policy changes, drops
or injects, the stream "diverges": from then on the format's transcoder writes the events,
continuing from what the client has already seen, and closes the stream validly at the end.
"""

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from addon.call_trace import StreamCapture
from controlplane.chunks import StreamChunk, same_content
from controlplane.interface import ControlPlaneUnavailable, StreamsAndRecords
from controlplane.models import ChunkVerdict, StreamingContext
from formats.base import StreamTranscoder
from formats.sse import SSEEvent, SSEParser, parse_event

#: How long an abandoned stream waits for the control plane to release its policy state.
_RELEASE_TIMEOUT = 2.0


@dataclass
class _PendingEvent:
    event: SSEEvent
    # The event's chunks, as decoded, that the policy has not given back yet: what it is given,
    # and what the record keeps when it gives them back unchanged.
    expected: deque[StreamChunk] = field(default_factory=deque)


@dataclass
class StreamOutcome:
    """What happened to a stream, for recording."""

    chunks_in: int = 0
    chunks_out: int = 0
    diverged: bool = False
    ended_by_policy: bool = False
    upstream_error: bool = False
    control_plane_lost: str | None = None  # why the stream was ended with an error event
    malformed: str | None = None  # the provider's stream could not be policed: ended with an error
    unpoliced: bool = False
    decisions: list[ChunkVerdict] = field(default_factory=list)


class StreamRelay:
    def __init__(
        self,
        transcoder: StreamTranscoder,
        control_plane: StreamsAndRecords,
        context: StreamingContext,
        capture: StreamCapture | None = None,
    ) -> None:
        self._transcoder = transcoder
        self._capture = capture
        self._control_plane = control_plane
        self._context = context
        self._parser = SSEParser()
        self._pending: deque[_PendingEvent] = deque()
        self._deferred_errors: list[SSEEvent] = []
        self.outcome = StreamOutcome()

    @property
    def client_has_end(self) -> bool:
        """What was sent so far holds the stream's terminal event (or an error that ends it)."""
        return self._transcoder.ended

    @property
    def ended(self) -> bool:
        """The policy ended the stream, or the control plane went away: stop reading upstream."""
        outcome = self.outcome
        return (
            outcome.ended_by_policy or outcome.control_plane_lost is not None or outcome.malformed is not None
        )

    async def feed(self, data: bytes) -> AsyncIterator[bytes]:
        """The events in ``data``: their chunks go to the policy together, in one call."""
        async for out in self._events(self._parser.feed(data)):
            yield out

    async def _events(self, events: list[SSEEvent]) -> AsyncIterator[bytes]:
        chunks: list[StreamChunk] = []
        for event in events:
            if self.ended:
                return
            if self.outcome.diverged and self._transcoder.is_error(event):
                # The client has its stream from the transcoder, which must not write after this.
                async for out in self._police(chunks):  # what came before the error goes first
                    yield out
                chunks = []
                if self.ended:
                    return
                self.outcome.upstream_error = True
                self._transcoder.observe_emitted(event)
                yield self._forward([event])
                continue
            try:
                chunks += self._receive(event)
                out = self._drain()
            except Exception as exc:  # the provider's stream breaks its format, or contradicts itself
                async for out in self._police(chunks):  # what came before it was fine
                    yield out
                if not self.ended:
                    yield self._malformed(exc)
                return
            if out:
                yield out
        async for out in self._police(chunks):
            yield out

    async def close(self) -> AsyncIterator[bytes]:
        """The upstream stream is over (or abandoned): flush and end validly."""
        if leftover := self._parser.flush():
            # The stream ended mid-event: a client may still read what arrived, so it is policed
            # like any event (and forwarded as it came when the policy lets it pass).
            async for out in self._events([parse_event(leftover)]):
                yield out
        if self.ended:
            return  # nothing to release: the control plane is gone, or the stream was ended
        async for out in self._police(self._transcoder.unsettled()):
            yield out
        if self.ended:
            return
        try:
            results = [r async for r in self._control_plane.close_streaming_context(self._context)]
        except ControlPlaneUnavailable as exc:
            yield self._lose_control_plane(exc)
            return
        if self.ended:
            return
        for result in results:
            if out := self._applied(result, ()):
                yield out
            if self.ended:
                return
        if self._pending:  # held back and never released: dropped
            self._diverge()
        if self._deferred_errors:
            yield self._forward(self._deferred_errors)
        elif self.outcome.diverged and not self.outcome.upstream_error:
            yield self._written(self._transcoder.finish())

    async def abandon(self) -> None:
        """The stream ends early (the provider broke off, the client left): release the policy's
        state, send nothing more. Harmless after ``close``. Bounded: nobody waits for what a
        hung control plane would answer, and the call is recorded only after this."""
        with contextlib.suppress(ControlPlaneUnavailable, TimeoutError):
            async with asyncio.timeout(_RELEASE_TIMEOUT):
                async for _ in self._control_plane.close_streaming_context(self._context):
                    pass

    def _malformed(self, exc: Exception) -> bytes:
        """Fail closed on a stream that cannot be policed: the client gets an error event."""
        self._diverge()
        self.outcome.malformed = f"Luthien could not police the provider's stream: {exc}"
        return self._written(self._transcoder.error_event(self.outcome.malformed))

    def _lose_control_plane(self, exc: ControlPlaneUnavailable) -> bytes:
        """Fail closed mid-stream: the client gets the provider's own kind of error event."""
        self._diverge()
        self.outcome.control_plane_lost = f"Luthien's control plane became unavailable: {exc}"
        return self._written(self._transcoder.error_event(self.outcome.control_plane_lost))

    def _receive(self, event: SSEEvent) -> list[StreamChunk]:
        """Decodes an upstream event; until the stream diverges, it waits to be forwarded as it
        came once the policy has given back each of its chunks unchanged."""
        chunks = self._decoded(event)
        if not self.outcome.diverged:
            self._pending.append(_PendingEvent(event, deque(chunks)))
        return chunks

    def _decoded(self, event: SSEEvent) -> list[StreamChunk]:
        """The chunks of an upstream event, counted and captured. Raises MalformedStream."""
        self.outcome.upstream_error |= self._transcoder.is_error(event)
        chunks = self._transcoder.decode(event)
        self.outcome.chunks_in += len(chunks)
        if self._capture is not None:
            self._capture.upstream_event(event, chunks)
        return chunks

    async def _police(self, chunks: list[StreamChunk]) -> AsyncIterator[bytes]:
        if not chunks:
            return
        try:
            async for result in self._control_plane.process_streaming_chunks(chunks, self._context):
                if out := self._applied(result, chunks):
                    yield out
                if self.ended:
                    return
        except ControlPlaneUnavailable as exc:
            yield self._lose_control_plane(exc)

    def _applied(self, result: ChunkVerdict, given: Sequence[StreamChunk]) -> bytes:
        """``_apply``; a stream the transcoder cannot continue (events that break their format,
        a policy's chunk it cannot write) ends with an error instead."""
        try:
            return self._apply(result, given)
        except Exception as exc:
            return self._malformed(exc)

    def _apply(self, result: ChunkVerdict, given: Sequence[StreamChunk]) -> bytes:
        """``given``: the chunks the result may answer (``result.answers`` indexes them)."""
        self.outcome.unpoliced |= result.unpoliced
        if result.reason is not None or not result.allowed:
            self.outcome.decisions.append(result)
        out = b""
        answered = given[result.answers] if result.unchanged and result.answers is not None else None
        if result.value is not None or answered is not None:
            self.outcome.chunks_out += 1
            out += self._emit_chunk(result.value, answered)
        if not result.allowed:
            out += self._end_by_policy()
        return out

    def _emit_chunk(self, value: StreamChunk | None, answered: StreamChunk | None) -> bytes:
        """A chunk for the client: ``value``, or (``answered``) an upstream chunk given back as
        it came, which may leave out ``value``."""
        if not self.outcome.diverged and self._pending:
            head = self._pending[0]
            if head.expected and self._is_next(head.expected[0], value, answered):
                self._policy_chunk(head.expected.popleft())
                return self._drain()
        chunk = answered if answered is not None else value
        assert chunk is not None
        self._policy_chunk(chunk)
        self._diverge()
        return self._written(self._transcoder.encode(chunk))

    @staticmethod
    def _is_next(expected: StreamChunk, value: StreamChunk | None, answered: StreamChunk | None) -> bool:
        """Whether the chunk is the one the client's next original bytes carry: the chunk itself
        (the control plane tells the usual case, at no cost here), or one that says the same (a
        held chunk the policy releases later, say)."""
        if answered is expected:
            return True
        return value is not None and same_content(value, expected)

    def _policy_chunk(self, chunk: StreamChunk) -> None:
        if self._capture is not None:
            self._capture.policy_chunk(chunk)

    def _drain(self) -> bytes:
        """Forwards, verbatim, every leading event whose chunks have all come back unchanged."""
        events = []
        while self._pending and not self._pending[0].expected:
            event = self._pending.popleft().event
            self._transcoder.observe_emitted(event)
            events.append(event)
        return self._forward(events)

    def _forward(self, events: list[SSEEvent]) -> bytes:
        """Upstream events sent to the client as they came."""
        if self._capture is not None:
            self._capture.client_events(events)
        return b"".join(event.raw for event in events)

    def _written(self, data: bytes) -> bytes:
        """Events the transcoder wrote for the client."""
        if self._capture is not None:
            self._capture.sent(data)
        return data

    def _diverge(self) -> None:
        if self.outcome.diverged:
            return
        self.outcome.diverged = True
        self._deferred_errors = [p.event for p in self._pending if self._transcoder.is_error(p.event)]
        self._pending.clear()

    def _end_by_policy(self) -> bytes:
        self._diverge()
        self.outcome.ended_by_policy = True
        return self._written(self._transcoder.finish())


class PassiveRelay(StreamRelay):
    """The relay of a stream no policy inspects: each event is framed, checked against its
    format (a stream that breaks it still ends with an error), recorded and forwarded as it
    came. Nothing goes to the control plane, nothing is compared, and the record keeps one copy
    of what both sides saw."""

    async def _events(self, events: list[SSEEvent]) -> AsyncIterator[bytes]:
        passed: list[SSEEvent] = []
        for event in events:
            if self.ended:
                break
            try:
                self._check(event)
            except Exception as exc:  # the provider's stream breaks its format
                yield self._passed(passed) + self._malformed(exc)
                return
            passed.append(event)
        if passed:
            yield self._passed(passed)

    def _check(self, event: SSEEvent) -> None:
        self.outcome.chunks_out += len(self._decoded(event))  # every chunk passes as it came

    def _passed(self, events: list[SSEEvent]) -> bytes:
        for event in events:
            self._transcoder.observe_emitted(event)
        return b"".join(event.raw for event in events)

    async def close(self) -> AsyncIterator[bytes]:
        if leftover := self._parser.flush():  # the stream ended mid-event: forwarded as it came
            async for out in self._events([parse_event(leftover)]):
                yield out

    async def abandon(self) -> None:
        """Nothing to release: the control plane holds nothing for this stream."""


def relay_for(
    transcoder: StreamTranscoder,
    control_plane: StreamsAndRecords,
    context: StreamingContext,
    capture: StreamCapture | None = None,
) -> StreamRelay:
    """The relay for a stream: the passive one when no policy inspects its chunks."""
    kind = StreamRelay if context.inspects_chunks else PassiveRelay
    return kind(transcoder, control_plane, context, capture)
