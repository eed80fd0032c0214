"""The control-plane service: every PolicingService operation over HTTP, for proxies that run as
thin sidecars. Request and response bodies arrive as the provider's format has them: the service
normalises them (the sidecar never loads LiteLLM), runs the policy and answers with the body to
send. JSON for those and for records and activity; streams
over WebSockets (one stream at a time on each, one after another), never one request per chunk. A
bearer token guards everything but the health checks and ``/metrics`` (Prometheus, for scraping
inside the cluster)."""

import contextlib
import json
import logging
import secrets
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, Literal

from fastapi import (
    Depends,
    FastAPI,
    HTTPException,
    Request,
    Response,
    Security,
    WebSocket,
    WebSocketDisconnect,
)
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPBearer
from opentelemetry.trace import Span, SpanKind
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from controlplane.interface import PolicingService, RequestVerdict, ResponseVerdict
from controlplane.local import ControlPlaneLocal
from controlplane.metrics import (
    PolicyDecisionMetrics,
    register_policy_stream_metrics,
    register_recording_metrics,
)
from controlplane.models import ChunkVerdict, PolicyResult, StreamingContext
from controlplane.policy_file import PolicyFileError, policy_from_document
from controlplane.policy_reload import document_version
from controlplane.recording.writer import RecordWriter
from controlplane.remote.wire import (
    API,
    STREAMS_PATH,
    ActivityBatch,
    PoliceCall,
    PoliceResponseCall,
    RecordBatch,
    StreamDone,
    StreamOpen,
    StreamOpened,
    StreamResult,
    WireResult,
)
from controlplane.storage.base import Storage, StorageUnavailable
from controlplane.tracing import CALL_ID, context_from, tracer

log = logging.getLogger(__name__)


class PolicyInfo(BaseModel):
    policy: str
    version: str | None


class ErrorBody(BaseModel):
    """Every error but a request validation error (422, FastAPI's own ``detail`` list)."""

    error: str


#: Documents the bearer token in the OpenAPI schema; ``require_token`` does the checking.
_BEARER = HTTPBearer(auto_error=False, description="the control-plane token (LUTHIEN_CONTROL_PLANE_TOKEN)")
_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or wrong bearer token"}
}
_BAD_BODY: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "the body is not JSON"}
}


def _authorized(header: str | None, token: str) -> bool:
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(given.encode(), token.encode())


def create_control_plane_app(
    control_plane: ControlPlaneLocal,
    policing: PolicingService,
    storage: Storage,
    token: str,
    recorder: RecordWriter | None = None,
) -> FastAPI:
    """``policing`` normalises bodies for ``control_plane`` (the formats' ``Policing``, given by
    whoever composes the service: the control plane imports no wire format). ``recorder``, the
    writer behind ``control_plane``, is only read for ``/metrics``."""
    if not token:
        raise ValueError("the control plane needs a non-empty token")
    app = FastAPI(title="Luthien control plane", version="1")
    registry = CollectorRegistry()
    decisions = PolicyDecisionMetrics(registry)
    register_policy_stream_metrics(control_plane, registry)
    if recorder is not None:
        register_recording_metrics(recorder, registry)

    def require_token(request: Request) -> None:
        if not _authorized(request.headers.get("authorization"), token):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    # Starlette's, not only FastAPI's: FastAPI raises Starlette's for a body that is not JSON, and
    # routing for unknown paths and methods; all get the one error shape.
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    guarded = [Security(_BEARER), Depends(require_token)]
    with_body = _UNAUTHORIZED | _BAD_BODY

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "the database is unreachable"}})
    async def readyz() -> JSONResponse:
        try:
            await storage.ping()
        except StorageUnavailable as exc:
            return JSONResponse({"status": "unavailable", "reason": str(exc)}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post(f"{API}/police-request", dependencies=guarded, responses=with_body)
    async def police_request(call: PoliceCall, request: Request) -> RequestVerdict:
        with _span("request_policy", request.headers, call.metadata.call_id):
            verdict = await policing.police_request(call.wire_format, call.body, call.metadata)
        _observe(decisions, "request", verdict.result)
        return verdict

    @app.post(f"{API}/police-response", dependencies=guarded, responses=with_body)
    async def police_response(call: PoliceResponseCall, request: Request) -> ResponseVerdict:
        with _span("response_policy", request.headers, call.metadata.call_id):
            verdict = await policing.police_response(call.wire_format, call.body, call.metadata)
        _observe(decisions, "response", verdict.result)
        return verdict

    @app.post(f"{API}/records", status_code=204, dependencies=guarded, responses=with_body)
    async def records(batch: RecordBatch) -> Response:
        # Answered once the records are in this process's fsynced journal: the sidecar drops its
        # copy on this answer.
        await control_plane.record([*batch.calls, *batch.debug_events])
        return Response(status_code=204)

    @app.post(f"{API}/activity", status_code=204, dependencies=guarded, responses=with_body)
    async def activity(batch: ActivityBatch) -> Response:
        for event in batch.events:
            await control_plane.publish_activity(event)
        return Response(status_code=204)

    @app.get(f"{API}/policy", dependencies=guarded, responses=_UNAUTHORIZED)
    async def current_policy() -> PolicyInfo:
        return PolicyInfo(policy=type(control_plane.policy).__name__, version=control_plane.policy_version)

    @app.put(
        f"{API}/policy",
        dependencies=guarded,
        responses=_UNAUTHORIZED
        | {400: {"model": ErrorBody, "description": "the body is not JSON, or not a valid policy document"}},
    )
    async def replace_policy(document: dict[str, Any]) -> PolicyInfo:
        """Replaces the policy for new calls (a policy file's content, as JSON)."""
        try:
            policy = policy_from_document(document, "request body")
        except PolicyFileError as exc:
            raise HTTPException(400, str(exc)) from exc
        control_plane.replace_policy(policy, document_version(document))
        log.info("policy replaced through the API: %s", control_plane.policy_version)
        return await current_policy()

    @app.websocket(STREAMS_PATH)
    async def stream(websocket: WebSocket) -> None:
        if not _authorized(websocket.headers.get("authorization"), token):
            await websocket.send_denial_response(
                JSONResponse({"error": "missing or wrong bearer token"}, 401)
            )
            return
        await websocket.accept()
        with contextlib.suppress(WebSocketDisconnect):
            while True:  # one stream after another, until the proxy closes the connection
                await _serve_stream(websocket, control_plane, decisions)

    return app


def _observe(
    decisions: PolicyDecisionMetrics, stage: Literal["request", "response"], result: PolicyResult[Any] | None
) -> None:
    if result is not None:  # None: the body could not be read, so no policy decided
        decisions.observe(stage, result)


def _span(operation: str, headers: Mapping[str, str], call_id: str) -> AbstractContextManager[Span]:
    """A server span for one operation, in the trace the proxy's request carries."""
    return tracer.start_as_current_span(
        f"luthien.controlplane.{operation}",
        context=context_from(headers),
        kind=SpanKind.SERVER,
        attributes={CALL_ID: call_id},
    )


async def _serve_stream(
    websocket: WebSocket, control_plane: ControlPlaneLocal, decisions: PolicyDecisionMetrics
) -> None:
    opened = StreamOpen.model_validate_json(await websocket.receive_text())
    with _span("stream", opened.trace, opened.metadata.call_id):
        await _policed_stream(websocket, control_plane, opened, decisions)


async def _policed_stream(
    websocket: WebSocket,
    control_plane: ControlPlaneLocal,
    opened: StreamOpen,
    decisions: PolicyDecisionMetrics,
) -> None:
    context = await control_plane.create_streaming_context(opened.request_data, opened.metadata)
    answer = StreamOpened(
        stream_id=context.stream_id,
        policy_version=context.policy_version,
        inspects_chunks=context.inspects_chunks,
    )
    await websocket.send_text(answer.model_dump_json())
    if not context.inspects_chunks:
        return
    closed = False
    try:
        while not closed:
            message = json.loads(await websocket.receive_text())
            closed = message.get("type") == "close"
            await _answer(websocket, control_plane, context, message, decisions)
    finally:
        if not closed:  # the proxy went away mid-stream: release what the policy holds
            async for _ in control_plane.close_streaming_context(context):
                pass


async def _answer(
    websocket: WebSocket,
    control_plane: ControlPlaneLocal,
    context: StreamingContext,
    message: dict[str, Any],
    decisions: PolicyDecisionMetrics,
) -> None:
    async def send(result: ChunkVerdict) -> None:
        decisions.observe("stream", result)
        answer = StreamResult(result=WireResult.of(result), index=result.answers, passed=result.unchanged)
        await websocket.send_text(answer.model_dump_json())

    if message.get("type") == "chunks":
        async for result in control_plane.process_streaming_chunks(message["chunks"], context):
            await send(result)
    else:
        async for result in control_plane.close_streaming_context(context):
            await send(result)
    await websocket.send_text(StreamDone().model_dump_json())
