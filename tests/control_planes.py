"""The control planes the policy and pipeline tests run against: one contract, two implementations.

- ``local``: ``ControlPlaneLocal(policy)``, in the test's own process and event loop.
- ``http``: the control-plane service (``create_control_plane_app``) holding a
  ``ControlPlaneLocal(policy)``, served by uvicorn on a thread and event loop of its own, and a
  ``ControlPlaneHTTP`` client in the test's loop: JSON over HTTP for the request and response
  policies, streams over WebSockets.

A uvicorn server takes ~40 ms to start and ~0.2 s to stop (it polls for the exit every 0.1 s): too
much for the hundreds of tests that use one. So a single server serves the session, started on first
use: every control plane is a fresh app of its own on it (its own ``ControlPlaneLocal``, activity bus
and streams), reached under a path prefix of its own; making one and its client takes ~5 ms. Every
app runs on the server's one loop, so a policy object shared by two control planes in one test (e.g.
a judge's cache) stays on one loop.
"""

import asyncio
import itertools
import secrets
import shutil
import tempfile
import weakref
from collections.abc import AsyncIterator, Coroutine, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, cast

from starlette.types import ASGIApp, Receive, Scope, Send

from controlplane.chunk_views import chunk_model
from controlplane.chunks import StreamChunk
from controlplane.interface import ControlPlaneService
from controlplane.llm import ModelResponse, ModelResponseStream
from controlplane.local import ControlPlaneLocal
from controlplane.models import (
    ActivityEvent,
    ChunkVerdict,
    NormalizedRequest,
    PolicyResult,
    RequestMetadata,
    StreamingContext,
    WireFormat,
)
from controlplane.policies.base import PolicyHandler
from controlplane.policies.chunks import chunk_text
from controlplane.recording.records import CallRecord
from controlplane.recording.spool import Spool
from controlplane.remote.client import ControlPlaneHTTP
from controlplane.remote.server import create_control_plane_app
from controlplane.storage.sqlite import SQLiteStorage
from formats.policing import Policing
from tests.background_server import BackgroundServer

Kind = Literal["local", "http"]  # the params of the control_plane_kind fixture (tests/conftest.py)
TOKEN = "contract-" + secrets.token_hex(8)


class _Router:
    """An ASGI app: ``/<key>/rest`` goes to the app registered as ``<key>``, as ``/rest``."""

    def __init__(self) -> None:
        self.apps: dict[str, ASGIApp] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key, _, rest = scope["path"][1:].partition("/")
        app = self.apps.get(key)
        if app is None:
            await _refuse(scope, send)
            return
        path = "/" + rest
        await app({**scope, "path": path, "raw_path": path.encode()}, receive, send)


async def _refuse(scope: Scope, send: Send) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
    else:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})


class ServiceHost:
    """The session's control-plane server, serving each control plane's app under a prefix."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="luthien-control-planes-"))
        self.storage = SQLiteStorage(self.root / "controlplane.db")
        self._router = _Router()
        self._keys = itertools.count(1)
        # ws: the streams are WebSockets; "auto" is what `luthien controlplane` serves with.
        self._server = BackgroundServer(self._router, "control-plane", ws="auto")
        self.url = self._server.start()

    def add(self, app: ASGIApp) -> str:
        """Serves ``app``; returns its base URL."""
        key = f"cp{next(self._keys)}"
        self._router.apps[key] = app
        return f"{self.url}/{key}"

    def remove(self, url: str) -> None:
        self._router.apps.pop(url.rsplit("/", 1)[1], None)

    def run[T](self, coroutine: Coroutine[Any, Any, T]) -> "Future[T]":
        """Runs ``coroutine`` on the server's loop, where the served control planes live."""
        assert self._server.loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._server.loop)

    def stop(self) -> None:
        self.run(self.storage.close()).result(10)
        self._server.stop()
        shutil.rmtree(self.root, ignore_errors=True)


_host: ServiceHost | None = None
#: The ControlPlaneLocal behind each ControlPlaneHTTP client: the one that runs the policy.
_served: "weakref.WeakKeyDictionary[ControlPlaneHTTP, ControlPlaneLocal]" = weakref.WeakKeyDictionary()


def plain(*chunks: ModelResponseStream) -> list[StreamChunk]:
    """Chunks as the relay hands them to a control plane: decoded, not yet LiteLLM's objects."""
    return [cast(StreamChunk, chunk.model_dump()) for chunk in chunks]


def text_of(chunk: StreamChunk) -> str:
    """The text a plain chunk carries, as a policy reads it."""
    return chunk_text(chunk_model(chunk))


def delivered(result: ChunkVerdict, given: Sequence[StreamChunk]) -> ModelResponseStream | None:
    """What the client gets from a result: its value, or the given chunk a verdict passes on."""
    if result.value is not None:
        return chunk_model(result.value)
    if result.unchanged and result.answers is not None:
        return chunk_model(given[result.answers])
    return None


def service_host() -> ServiceHost:
    """The session's server, started on first use."""
    global _host
    if _host is None:
        _host = ServiceHost()
    return _host


def stop_service_host() -> None:
    global _host
    if _host is not None:
        _host.stop()
        _host = None


class OverTheNetwork:
    """The policies' door (normalised requests and responses) through a ``ControlPlaneHTTP``,
    which sends provider bodies: the normalised view is a Chat Completions body, sent as one."""

    def __init__(self, client: ControlPlaneHTTP) -> None:
        self.client = client

    async def apply_request_policies(
        self, request_data: NormalizedRequest, metadata: RequestMetadata
    ) -> PolicyResult[NormalizedRequest]:
        verdict = await self.client.police_request(WireFormat.OPENAI_CHAT, request_data, metadata)
        assert verdict.result is not None, verdict.unpoliceable
        return verdict.result

    async def apply_response_policy(
        self, response: ModelResponse, metadata: RequestMetadata
    ) -> PolicyResult[ModelResponse]:
        body = response.model_dump(mode="json")
        verdict = await self.client.police_response(WireFormat.OPENAI_CHAT, body, metadata)
        result = verdict.result
        assert result is not None, verdict.unpoliceable
        value = None if not result.allowed else ModelResponse(**verdict.body) if verdict.body else response
        return PolicyResult[ModelResponse](value=value, **result.model_dump(exclude={"value"}))

    async def create_streaming_context(
        self, request_data: NormalizedRequest, metadata: RequestMetadata
    ) -> StreamingContext:
        return await self.client.create_streaming_context(request_data, metadata)

    def process_streaming_chunks(
        self, chunks: Sequence[StreamChunk], context: StreamingContext
    ) -> AsyncIterator[ChunkVerdict]:
        return self.client.process_streaming_chunks(chunks, context)

    def close_streaming_context(self, context: StreamingContext) -> AsyncIterator[ChunkVerdict]:
        return self.client.close_streaming_context(context)

    async def publish_activity(self, event: ActivityEvent) -> None:
        await self.client.publish_activity(event)

    async def log_debug_event(self, debug_type: str, payload: dict[str, Any]) -> None:
        await self.client.log_debug_event(debug_type, payload)

    def record_call_started(self, stand_in: CallRecord) -> None:
        self.client.record_call_started(stand_in)

    async def record_call(self, record: CallRecord) -> None:
        await self.client.record_call(record)


def control_plane_app(served: ControlPlaneLocal, storage: SQLiteStorage) -> Any:
    """The service's app for ``served``, normalising as ``luthien controlplane`` does."""
    return create_control_plane_app(served, Policing(served), storage, TOKEN)


@asynccontextmanager
async def control_plane_for(policy: PolicyHandler, kind: Kind) -> AsyncIterator[ControlPlaneService]:
    """A control plane running ``policy``: in-process (``local``) or over the network (``http``)."""
    if kind == "local":
        yield ControlPlaneLocal(policy)
        return
    if kind != "http":
        raise ValueError(f"unknown control plane kind {kind!r}")
    host = service_host()
    served = ControlPlaneLocal(policy)
    url = host.add(control_plane_app(served, host.storage))
    spool_dir = Path(tempfile.mkdtemp(prefix="spool-", dir=host.root))
    client = ControlPlaneHTTP(url, TOKEN, Spool(spool_dir))
    _served[client] = served
    client.start()
    try:
        yield OverTheNetwork(client)
    finally:
        try:
            await client.aclose()
        finally:
            host.remove(url)
            shutil.rmtree(spool_dir, ignore_errors=True)


async def request_decision(
    policy: PolicyHandler, request: NormalizedRequest, metadata: RequestMetadata, kind: Kind
) -> PolicyResult[NormalizedRequest]:
    """``policy``'s decision on a request, asked through a ``kind`` control plane."""
    async with control_plane_for(policy, kind) as control_plane:
        return await control_plane.apply_request_policies(request, metadata)


async def response_decision(
    policy: PolicyHandler, response: ModelResponse, metadata: RequestMetadata, kind: Kind
) -> PolicyResult[ModelResponse]:
    """``policy``'s decision on a whole response, asked through a ``kind`` control plane."""
    async with control_plane_for(policy, kind) as control_plane:
        return await control_plane.apply_response_policy(response, metadata)


def serving(control_plane: ControlPlaneService) -> ControlPlaneLocal:
    """The ControlPlaneLocal that runs the policy: the control plane itself, or the one the
    service holds behind a ControlPlaneHTTP."""
    if isinstance(control_plane, ControlPlaneLocal):
        return control_plane
    client = control_plane.client if isinstance(control_plane, OverTheNetwork) else control_plane
    if isinstance(client, ControlPlaneHTTP) and client in _served:
        return _served[client]
    raise TypeError(f"not a control plane from control_plane_for: {control_plane!r}")


async def published(control_plane: ControlPlaneService) -> list[ActivityEvent]:
    """The activity the control plane published, oldest first. Decisions are published where the
    policy runs: for ``http``, on the service's side (read on the server's loop)."""
    local = serving(control_plane)
    if local is control_plane:
        recent = await local.bus.recent(10_000)
    else:
        recent = await asyncio.wrap_future(service_host().run(local.bus.recent(10_000)))
    return [item.event for item in recent]
