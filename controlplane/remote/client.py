"""ControlPlaneHTTP: the ControlPlaneService of a proxy whose control plane runs elsewhere.

Policies are asked over pooled HTTP (and one WebSocket per stream). Records go through a local
``RecordWriter`` whose sink is the control plane, so they are spooled on this machine while it is
away; activity is sent in batches from a bounded buffer. When the control plane cannot be reached
the proxy fails closed (``ControlPlaneUnavailable``), or with ``fail_open`` lets the call through
unchanged and marks it unpoliced. Nothing is cached about the outage: every new call tries again.
"""

import asyncio
import contextlib
import json
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
from pydantic import BaseModel
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from controlplane.interface import ControlPlaneUnavailable
from controlplane.llm import ModelResponse, ModelResponseStream
from controlplane.models import (
    ActivityEvent,
    ChunkResult,
    NormalizedRequest,
    PolicyResult,
    RequestMetadata,
    StreamingContext,
)
from controlplane.recording.records import CallRecord, DebugEvent, Record
from controlplane.recording.spool import Spool
from controlplane.recording.writer import RecordWriter
from controlplane.remote.wire import (
    API,
    STREAMS_PATH,
    ActivityBatch,
    RecordBatch,
    RequestPolicyCall,
    ResponsePolicyCall,
    StreamChunk,
    StreamClose,
    StreamOpen,
    StreamOpened,
    StreamResult,
    WireResult,
)
from controlplane.storage.base import StorageUnavailable

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 2.0
# A request policy may wait on an LLM judge: allow it time, but not forever.
_POLICY_TIMEOUT = 60.0
_ACTIVITY_BUFFER = 10_000
_ACTIVITY_INTERVAL = 0.2


class ControlPlaneHTTP:
    def __init__(self, base_url: str, token: str, spool: Spool, *, fail_open: bool = False) -> None:
        self._base_url = base_url.rstrip("/")
        self._headers = {"authorization": f"Bearer {token}"}
        self._fail_open = fail_open
        self._http = httpx.AsyncClient(
            base_url=self._base_url,
            headers=self._headers,
            timeout=httpx.Timeout(_POLICY_TIMEOUT, connect=_CONNECT_TIMEOUT),
            trust_env=False,  # the control plane is never reached through a proxy variable
        )
        self._streams: dict[str, ClientConnection] = {}
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
        for connection in list(self._streams.values()):
            await connection.close()
        await self._http.aclose()

    # --- policies --------------------------------------------------------------------------

    async def apply_request_policies(
        self, request_data: NormalizedRequest, metadata: RequestMetadata
    ) -> PolicyResult[NormalizedRequest]:
        try:
            answer = await self._post(
                "request-policy", RequestPolicyCall(request_data=request_data, metadata=metadata)
            )
        except ControlPlaneUnavailable as exc:
            return self._unpoliced(request_data, exc)
        return WireResult.model_validate(answer).request()

    async def apply_response_policy(
        self, response: ModelResponse, metadata: RequestMetadata
    ) -> PolicyResult[ModelResponse]:
        call = ResponsePolicyCall(response=response.model_dump(mode="json"), metadata=metadata)
        try:
            answer = await self._post("response-policy", call)
        except ControlPlaneUnavailable as exc:
            return self._unpoliced(response, exc)
        return WireResult.model_validate(answer).response()

    async def create_streaming_context(
        self, request_data: NormalizedRequest, metadata: RequestMetadata
    ) -> StreamingContext:
        context = StreamingContext(
            stream_id=uuid.uuid4().hex, call_id=metadata.call_id, metadata=metadata, request_data=request_data
        )
        url = self._base_url.replace("http", "ws", 1) + STREAMS_PATH
        try:
            connection = await connect(
                url, additional_headers=self._headers, open_timeout=_CONNECT_TIMEOUT, max_size=None
            )
            await connection.send(StreamOpen(request_data=request_data, metadata=metadata).model_dump_json())
            opened = StreamOpened.model_validate_json(await connection.recv())
        except (OSError, TimeoutError, WebSocketException) as exc:
            lost = ControlPlaneUnavailable(f"could not open a stream: {type(exc).__name__}")
            if not self._fail_open:
                raise lost from exc
            log.warning("stream %s passes unpoliced: %s", metadata.call_id, lost)
            context.unpoliced = True
            return context
        context.stream_id, context.policy_version = opened.stream_id, opened.policy_version
        self._streams[context.stream_id] = connection
        return context

    def process_streaming_chunk(
        self, chunk: ModelResponseStream, context: StreamingContext
    ) -> AsyncIterator[ChunkResult]:
        return self._exchange(context, StreamChunk(chunk=chunk.model_dump(mode="json")), chunk)

    async def close_streaming_context(self, context: StreamingContext) -> AsyncIterator[ChunkResult]:
        async for result in self._exchange(context, StreamClose(), None):
            yield result
        if (connection := self._streams.pop(context.stream_id, None)) is not None:
            await connection.close()

    async def _exchange(
        self, context: StreamingContext, message: BaseModel, chunk: ModelResponseStream | None
    ) -> AsyncIterator[ChunkResult]:
        connection = self._streams.get(context.stream_id)
        if connection is None:  # an unpoliced stream (fail-open): everything passes
            if chunk is not None:
                yield PolicyResult[ModelResponseStream](value=chunk, unpoliced=True)
            return
        try:
            await connection.send(message.model_dump_json())
            while (reply := json.loads(await connection.recv()))["type"] == "result":
                yield StreamResult.model_validate(reply).result.chunk()
        except (OSError, WebSocketException) as exc:
            self._streams.pop(context.stream_id, None)
            lost = ControlPlaneUnavailable(f"the stream's connection broke: {type(exc).__name__}")
            if not self._fail_open:
                raise lost from exc
            log.warning("stream %s continues unpoliced: %s", context.call_id, lost)
            if chunk is not None:
                yield PolicyResult[ModelResponseStream](value=chunk, unpoliced=True)

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
                headers={"content-type": "application/json"},
            )
        except httpx.TransportError as exc:
            raise ControlPlaneUnavailable(f"{type(exc).__name__} reaching {self._base_url}") from exc
        if response.status_code == 401:
            raise ControlPlaneUnavailable("the control plane refused this proxy's token (401)")
        if response.status_code >= 400:
            raise ControlPlaneUnavailable(f"the control plane answered {response.status_code}")
        return response.json() if response.content else None

    # --- recording and activity ------------------------------------------------------------

    async def record_call(self, record: CallRecord) -> None:
        self._writer.submit(record)

    async def log_debug_event(self, debug_type: str, payload: dict[str, Any]) -> None:
        call_id = payload.get("call_id")
        event = DebugEvent(
            call_id=call_id if isinstance(call_id, str) else None, type=debug_type, payload=payload
        )
        self._writer.submit(event)

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
