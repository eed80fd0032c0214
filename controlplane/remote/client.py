"""ControlPlaneHTTP: the PolicingService of a proxy whose control plane runs elsewhere.

Request and response bodies go as they are, in the provider's format: the control plane
normalises them, runs the policy and maps its change back, so this side never loads LiteLLM.
Policies are asked over pooled HTTP; a stream talks over a WebSocket, kept open afterwards for a
later stream. Records go through a local ``RecordWriter`` whose sink is the control plane, so they
are spooled on this machine while it is away; activity is sent in batches from a bounded buffer.
When the control plane cannot be reached the proxy fails closed (``ControlPlaneUnavailable``), or
with ``fail_open`` lets the call through unchanged and marks it unpoliced. Nothing is cached about
the outage: every new call tries again.
"""

import asyncio
import contextlib
import functools
import json
import logging
import ssl
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import certifi
import httpx
from pydantic import BaseModel
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException
from websockets.protocol import State

from controlplane.chunks import StreamChunk
from controlplane.interface import JSON, ControlPlaneUnavailable, RequestVerdict, ResponseVerdict
from controlplane.models import (
    ActivityEvent,
    ChunkVerdict,
    NormalizedRequest,
    PolicyResult,
    RequestMetadata,
    StreamingContext,
    WireFormat,
)
from controlplane.recording.records import CallRecord, DebugEvent, Record
from controlplane.recording.spool import Spool
from controlplane.recording.writer import RecordWriter, StorageUnavailable
from controlplane.remote.wire import (
    API,
    STREAMS_PATH,
    ActivityBatch,
    PoliceCall,
    PoliceResponseCall,
    RecordBatch,
    StreamChunks,
    StreamClose,
    StreamOpen,
    StreamOpened,
    StreamResult,
    StreamResults,
)
from controlplane.tracing import trace_headers

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 2.0
# A request policy may wait on an LLM judge: allow it time, but not forever.
_POLICY_TIMEOUT = 60.0
_ACTIVITY_BUFFER = 10_000
# Stream connections kept open between streams: a new one costs a WebSocket handshake (about a
# millisecond of both processes' time). Beyond this many idle ones, a finished stream's closes.
_IDLE_STREAM_CONNECTIONS = 32
_ACTIVITY_INTERVAL = 0.2


async def _answer(connection: ClientConnection) -> dict[str, Any]:
    """The control plane's next message on a stream. A policy may wait on an LLM judge, so the
    wait is as long as a request policy's; a control plane that hangs past it is lost."""
    async with asyncio.timeout(_POLICY_TIMEOUT):
        message: dict[str, Any] = json.loads(await connection.recv())
    return message


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """What httpx verifies with by default (certifi's CAs), built once per process: loading the CAs
    takes tens of milliseconds, every time a client is made."""
    return ssl.create_default_context(cafile=certifi.where())


class ControlPlaneRefused(ControlPlaneUnavailable):
    """The control plane answered that what was sent is wrong (4xx): sending it again won't help."""


@dataclass
class _Stream:
    connection: ClientConnection
    # Messages sent whose answer has not been read to its "done": a consumer may stop reading a
    # chunk's results early (the relay does once the policy ends the stream).
    unread: int = 0


def _result(answer: StreamResult) -> ChunkVerdict:
    """The policy's result; a verdict (``passed``) gives back the chunk it answers, which the
    proxy has."""
    return answer.result.chunk(answer.index, answer.passed)


def _unpoliced(index: int) -> ChunkVerdict:
    """Fail-open: the chunk passes as it came."""
    return ChunkVerdict(answers=index, unchanged=True, unpoliced=True)


#: What a stream's policy is given for a request the control plane never saw (fail-open).
_UNSEEN_REQUEST: NormalizedRequest = {"messages": []}


class ControlPlaneHTTP:
    def __init__(self, base_url: str, token: str, spool: Spool, *, fail_open: bool = False) -> None:
        self._base_url = base_url.rstrip("/")
        self._headers = {"authorization": f"Bearer {token}"}
        self._fail_open = fail_open
        self._http = httpx.AsyncClient(
            base_url=self._base_url,
            headers=self._headers,
            timeout=httpx.Timeout(_POLICY_TIMEOUT, connect=_CONNECT_TIMEOUT),
            verify=_tls_context(),
            trust_env=False,  # the control plane is never reached through a proxy variable
        )
        self._streams: dict[str, _Stream] = {}
        self._idle: list[ClientConnection] = []  # stream connections free for the next stream
        self._writer = RecordWriter(_ControlPlaneSink(self), spool)
        self._activity: deque[ActivityEvent] = deque(maxlen=_ACTIVITY_BUFFER)
        self._sender: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._writer.start()
        self._sender = asyncio.create_task(self._send_activity(), name="activity-sender")

    async def aclose(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        await self._writer.close()
        for connection in [*(stream.connection for stream in self._streams.values()), *self._idle]:
            await connection.close()
        await self._http.aclose()

    @property
    def recorder(self) -> RecordWriter:
        return self._writer

    # --- policies --------------------------------------------------------------------------

    async def police_request(
        self, wire_format: WireFormat, body: JSON, metadata: RequestMetadata
    ) -> RequestVerdict:
        call = PoliceCall(wire_format=wire_format, body=body, metadata=metadata)
        try:
            answer = await self._post("police-request", call)
        except ControlPlaneUnavailable as exc:
            # The body is sent as it came; a stream's policy, should there be one, never saw it.
            return RequestVerdict(result=self._unpoliced(_UNSEEN_REQUEST, exc))
        return RequestVerdict.model_validate(answer)

    async def police_response(
        self, wire_format: WireFormat, body: JSON, metadata: RequestMetadata
    ) -> ResponseVerdict:
        call = PoliceResponseCall.model_construct(wire_format=wire_format, body=body, metadata=metadata)
        try:
            answer = await self._post("police-response", call)
        except ControlPlaneUnavailable as exc:
            return ResponseVerdict(result=self._unpoliced(None, exc))
        return ResponseVerdict.model_validate(answer)

    async def create_streaming_context(
        self, request_data: NormalizedRequest, metadata: RequestMetadata
    ) -> StreamingContext:
        context = StreamingContext(
            stream_id=uuid.uuid4().hex, call_id=metadata.call_id, metadata=metadata, request_data=request_data
        )
        opening = StreamOpen(request_data=request_data, metadata=metadata, trace=trace_headers())
        try:
            connection, opened = await self._open_stream(opening.model_dump_json())
        except (OSError, TimeoutError, WebSocketException) as exc:
            lost = ControlPlaneUnavailable(f"could not open a stream: {type(exc).__name__}")
            if not self._fail_open:
                raise lost from exc
            log.warning("stream %s passes unpoliced: %s", metadata.call_id, lost)
            context.unpoliced = True
            return context
        context.stream_id, context.policy_version = opened.stream_id, opened.policy_version
        context.inspects_chunks = opened.inspects_chunks
        if context.inspects_chunks:
            self._streams[context.stream_id] = _Stream(connection)
        else:  # nothing more is said on it for this stream
            await self._release(_Stream(connection))
        return context

    async def _open_stream(self, opening: str) -> tuple[ClientConnection, StreamOpened]:
        """Opens a stream on an idle connection if there is one, else on a new one. An idle one
        that died unnoticed (the control plane restarted or vanished) took the others with it:
        they are all dropped, and a new connection is tried."""
        if self._idle:
            connection = self._idle.pop()
            try:
                return connection, await self._opened(connection, opening)
            except (OSError, TimeoutError, WebSocketException):
                for stale in (connection, *self._idle):
                    stale.transport.abort()  # not close(): its handshake would wait on a dead peer
                self._idle.clear()
        connection = await connect(
            self._base_url.replace("http", "ws", 1) + STREAMS_PATH,
            additional_headers=self._headers,
            open_timeout=_CONNECT_TIMEOUT,
            max_size=None,
            # Chunk messages are small and many: compressing them costs the proxy's CPU
            # (about a third of a stream's time on loopback) to save little bandwidth.
            compression=None,
        )
        try:
            return connection, await self._opened(connection, opening)
        except BaseException:
            connection.transport.abort()
            raise

    @staticmethod
    async def _opened(connection: ClientConnection, opening: str) -> StreamOpened:
        # Bounded: a connection whose peer vanished without closing it would not fail, only hang.
        async with asyncio.timeout(_CONNECT_TIMEOUT):
            await connection.send(opening)
            return StreamOpened.model_validate_json(await connection.recv())

    def process_streaming_chunks(
        self, chunks: Sequence[StreamChunk], context: StreamingContext
    ) -> AsyncIterator[ChunkVerdict]:
        # Not validated: the relay's own decoded chunks, serialised at once.
        message = StreamChunks.model_construct(chunks=list(chunks))
        return self._exchange(self._streams.get(context.stream_id), context, message, chunks)

    async def close_streaming_context(self, context: StreamingContext) -> AsyncIterator[ChunkVerdict]:
        stream = self._streams.pop(context.stream_id, None)  # released even if not read to the end
        try:
            async for result in self._exchange(stream, context, StreamClose(), ()):
                yield result
        finally:
            if stream is not None:
                await self._release(stream)

    async def _release(self, stream: _Stream) -> None:
        """Keeps a stream's connection for the next stream if every answer on it was read (the
        server is then waiting for an ``open``), else closes it."""
        connection = stream.connection
        if stream.unread or connection.state is not State.OPEN:
            connection.transport.abort()  # not close(): its handshake would wait on a hung peer
        elif len(self._idle) >= _IDLE_STREAM_CONNECTIONS:
            await connection.close()
        else:
            self._idle.append(connection)

    async def _exchange(
        self,
        stream: _Stream | None,
        context: StreamingContext,
        message: BaseModel,
        chunks: Sequence[StreamChunk],
    ) -> AsyncIterator[ChunkVerdict]:
        if stream is None:  # an unpoliced stream (fail-open): everything passes
            for index in range(len(chunks)):
                yield _unpoliced(index)
            return
        connection = stream.connection
        unanswered = 0  # the first of ``chunks`` the policy has not answered yet
        try:
            while stream.unread:  # what the consumer left unread answers earlier messages: skip it
                if (await _answer(connection)).get("done"):
                    stream.unread -= 1
            await connection.send(message.model_dump_json())
            stream.unread += 1
            done = False
            while not done:
                reply = StreamResults.model_validate(await _answer(connection))
                if done := reply.done:  # read: the consumer may stop amid its results
                    stream.unread -= 1
                for answer in reply.results:
                    if answer.index is not None:
                        unanswered = answer.index + 1
                    yield _result(answer)
        except (OSError, TimeoutError, WebSocketException) as exc:
            self._streams.pop(context.stream_id, None)
            lost = ControlPlaneUnavailable(f"the stream's connection broke: {type(exc).__name__}")
            if not self._fail_open:
                raise lost from exc
            log.warning("stream %s continues unpoliced: %s", context.call_id, lost)
            for index in range(unanswered, len(chunks)):
                yield _unpoliced(index)

    def _unpoliced[T](self, value: T, exc: ControlPlaneUnavailable) -> PolicyResult[T]:
        if not self._fail_open:
            raise exc
        log.warning("call passes unpoliced: %s", exc)
        return PolicyResult[T](value=value, reason=f"unpoliced: {exc}", unpoliced=True)

    async def _post(self, operation: str, body: BaseModel) -> Any:
        try:
            response = await self._http.post(
                f"{API}/{operation}",
                content=body.model_dump_json(),
                headers={"content-type": "application/json", **trace_headers()},
            )
        except httpx.TransportError as exc:
            raise ControlPlaneUnavailable(f"{type(exc).__name__} reaching {self._base_url}") from exc
        if response.status_code == 401:
            raise ControlPlaneUnavailable("the control plane refused this proxy's token (401)")
        if response.status_code in (400, 413, 422):
            raise ControlPlaneRefused(f"the control plane refused the {operation}: {response.text[:500]}")
        if response.status_code >= 400:
            raise ControlPlaneUnavailable(f"the control plane answered {response.status_code}")
        return response.json() if response.content else None

    # --- recording and activity ------------------------------------------------------------

    def record_call_started(self, stand_in: CallRecord) -> None:
        self._writer.opened(stand_in)

    async def record_call(self, record: CallRecord) -> None:
        await self._writer.store([record])

    async def log_debug_event(self, debug_type: str, payload: dict[str, Any]) -> None:
        call_id = payload.get("call_id")
        event = DebugEvent(
            call_id=call_id if isinstance(call_id, str) else None, type=debug_type, payload=payload
        )
        await self._writer.store([event])

    async def publish_activity(self, event: ActivityEvent) -> None:
        self._activity.append(event)  # the oldest is dropped when the control plane is away long

    async def _send_activity(self) -> None:
        while True:
            await asyncio.sleep(_ACTIVITY_INTERVAL)
            if not self._activity:
                continue
            batch = list(self._activity)
            with contextlib.suppress(ControlPlaneUnavailable):
                await self._post("activity", ActivityBatch(events=batch))
                for _ in batch:
                    self._activity.popleft()

    async def store(self, records: Sequence[Record]) -> None:
        batch = RecordBatch(
            calls=[r for r in records if isinstance(r, CallRecord)],
            debug_events=[r for r in records if isinstance(r, DebugEvent)],
        )
        try:
            await self._post("records", batch)
        except ControlPlaneRefused:
            raise  # not an outage: the writer sets the refused records aside
        except ControlPlaneUnavailable as exc:
            raise StorageUnavailable(str(exc)) from exc


class _ControlPlaneSink:
    """The writer's sink: records are stored by the control plane."""

    def __init__(self, client: ControlPlaneHTTP) -> None:
        self._client = client

    async def migrate(self) -> None:
        """The control plane migrates its own database."""

    async def write(self, records: Sequence[Record]) -> None:
        await self._client.store(records)
