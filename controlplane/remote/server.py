"""The control-plane service: every PolicingService operation over HTTP, for proxies that run as
thin sidecars. Request and response bodies arrive as the provider's format has them: the service
normalises them (the sidecar never loads LiteLLM), runs the policy and answers with the body to
send. JSON for those and for records and activity; streams
over WebSockets (one stream at a time on each, one after another), never one request per chunk. A
bearer token guards everything but the health checks and ``/metrics`` (Prometheus, for scraping
inside the cluster); its credential's role (``controlplane.access``) says what it may do: proxies
need ``proxy``, changing the policy needs ``admin``."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import AbstractContextManager
from typing import Annotated, Any, Literal

from fastapi import (
    Depends,
    FastAPI,
    HTTPException,
    Query,
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
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from controlplane.access import Credential, Role, Tokens
from controlplane.interface import PolicingService, RequestVerdict, ResponseVerdict
from controlplane.local import ControlPlaneLocal
from controlplane.metrics import (
    PolicyDecisionMetrics,
    register_policy_stream_metrics,
    register_recording_metrics,
    register_shadow_metrics,
)
from controlplane.models import PolicyResult, StreamingContext
from controlplane.policy_nudge import NoNudge
from controlplane.policy_versions import PolicyKeeper, PolicySource, PolicyVersions, UnknownVersion
from controlplane.recording.writer import RecordWriter
from controlplane.remote.policy_changes import (
    Activate,
    Note,
    ShadowState,
    ShadowVersion,
    http_change,
    shadow_state,
)
from controlplane.remote.wire import (
    API,
    STREAMS_PATH,
    ActivityBatch,
    PoliceCall,
    PoliceResponseCall,
    RecordBatch,
    StreamOpen,
    StreamOpened,
    StreamResult,
    StreamResults,
    WireResult,
)
from controlplane.shadow import ShadowRunner
from controlplane.storage.base import (
    PolicyActivation,
    PolicyVersion,
    ShadowSetting,
    Storage,
    StorageUnavailable,
)
from controlplane.tracing import CALL_ID, context_from, tracer


class PolicyInfo(BaseModel):
    """The policy this replica enforces for new calls."""

    policy: str
    version: str | None
    source: PolicySource = Field(description="Where the truth is: the policy file, or the database.")


class ErrorBody(BaseModel):
    """Every error but a request validation error (422, FastAPI's own ``detail`` list)."""

    error: str


#: Documents the bearer token in the OpenAPI schema; ``require`` does the checking.
_BEARER = HTTPBearer(auto_error=False, description="a control-plane token (LUTHIEN_CONTROL_PLANE_TOKEN[S])")
_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or wrong bearer token"},
    403: {"model": ErrorBody, "description": "the token's role does not allow this operation"},
}
_BAD_BODY: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "the body is not JSON"}
}
_CHANGES: dict[int | str, dict[str, Any]] = {
    409: {
        "model": ErrorBody,
        "description": "the policy file is the source of truth: API writes are refused",
    },
    503: {"model": ErrorBody, "description": "the database is unreachable: nothing was activated"},
}
#: The name of the token given as ``LUTHIEN_CONTROL_PLANE_TOKEN``, as policy changes record it.
SINGLE_TOKEN_NAME = "LUTHIEN_CONTROL_PLANE_TOKEN"


def _credential(header: str | None, tokens: Tokens) -> Credential | None:
    scheme, _, given = (header or "").partition(" ")
    return tokens.who(given) if scheme.lower() == "bearer" else None


def create_control_plane_app(
    control_plane: ControlPlaneLocal,
    policing: PolicingService,
    storage: Storage,
    tokens: Tokens | str,
    recorder: RecordWriter | None = None,
    versions: PolicyVersions | None = None,
    shadow: ShadowRunner | None = None,
) -> FastAPI:
    """``policing`` normalises bodies for ``control_plane`` (the formats' ``Policing``, given by
    whoever composes the service: the control plane imports no wire format). ``tokens``: who may
    call (a plain string is one admin token). ``recorder``, the writer behind ``control_plane``,
    is only read for ``/metrics``. ``versions`` takes policy changes; by default they are stored
    in ``storage`` and enforced by ``control_plane`` alone. ``shadow``, the shadow behind
    ``control_plane``'s recorder, is only read for ``/metrics``."""
    if isinstance(tokens, str):
        if not tokens:
            raise ValueError("the control plane needs a non-empty token")
        tokens = Tokens([(Credential(name=SINGLE_TOKEN_NAME, role="admin"), tokens)])
    if not tokens:
        raise ValueError("the control plane needs at least one token")
    if versions is None:
        keeper = PolicyKeeper(control_plane, storage, NoNudge(), "database", None)
        versions = PolicyVersions(storage, NoNudge(), "database", keeper=keeper)
    app = FastAPI(title="Luthien control plane", version="1")
    registry = CollectorRegistry()
    decisions = PolicyDecisionMetrics(registry)
    register_policy_stream_metrics(control_plane, registry)
    if recorder is not None:
        register_recording_metrics(recorder, registry)
    if shadow is not None:
        register_shadow_metrics(shadow, registry)

    def require(role: Role) -> Any:
        def check(request: Request) -> Credential:
            credential = _credential(request.headers.get("authorization"), tokens)
            if credential is None:
                raise HTTPException(
                    401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
                )
            if not credential.allows(role):
                raise HTTPException(403, credential.refusal(role))
            return credential

        return check

    # Starlette's, not only FastAPI's: FastAPI raises Starlette's for a body that is not JSON, and
    # routing for unknown paths and methods; all get the one error shape.
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    guarded = [Security(_BEARER), Depends(require("proxy"))]
    readers = [Security(_BEARER), Depends(require("read"))]
    Admin = Annotated[Credential, Security(_BEARER), Depends(require("admin"))]
    with_body = _UNAUTHORIZED | _BAD_BODY

    def info() -> PolicyInfo:
        policy, version = control_plane.policy, control_plane.policy_version
        return PolicyInfo(policy=type(policy).__name__, version=version, source=versions.source)

    async def change(activation: Awaitable[PolicyActivation]) -> PolicyInfo:
        await http_change(activation)
        return info()

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

    @app.get(f"{API}/policy", dependencies=readers, responses=_UNAUTHORIZED)
    async def current_policy() -> PolicyInfo:
        return info()

    @app.put(
        f"{API}/policy",
        responses=_UNAUTHORIZED
        | _CHANGES
        | {400: {"model": ErrorBody, "description": "the body is not JSON, or not a valid policy document"}},
    )
    async def replace_policy(
        document: dict[str, Any], credential: Admin, note: Annotated[str, Query(max_length=1000)] = ""
    ) -> PolicyInfo:
        """Stores a new version (a policy file's content, as JSON) and activates it on every
        replica; this one enforces it before answering."""
        return await change(
            versions.activate_document(document, "request body", credential.name, note, "api")
        )

    @app.post(
        f"{API}/policy/activations",
        responses=_UNAUTHORIZED
        | _CHANGES
        | {
            400: {"model": ErrorBody, "description": "the body is not JSON, or the version no longer builds"},
            404: {"model": ErrorBody, "description": "no stored version has this id"},
        },
    )
    async def activate(body: Activate, credential: Admin) -> PolicyInfo:
        """Activates a stored version again: a rollback."""
        return await change(versions.activate_stored(body.version, credential.name, body.note, "api"))

    @app.get(f"{API}/policy/activations", dependencies=readers, responses=_UNAUTHORIZED)
    async def history(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[PolicyActivation]:
        """The audit log of policy changes, newest first: who activated which version, when."""
        return await storage.policy_history(limit)

    @app.get(
        f"{API}/policy/versions/{{version}}",
        dependencies=readers,
        responses=_UNAUTHORIZED | {404: {"model": ErrorBody, "description": "no stored version has this id"}},
    )
    async def stored_version(version: str) -> PolicyVersion:
        stored = await storage.policy_version(version)
        if stored is None:
            raise HTTPException(404, str(UnknownVersion(version)))
        return stored

    @app.get(f"{API}/policy/shadow", dependencies=readers, responses=_UNAUTHORIZED)
    async def shadow_slot(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> ShadowState:
        """The shadow policy (observing, never enforcing), its counts since set, its changes."""
        return await shadow_state(storage, limit)

    shadow_changes = _UNAUTHORIZED | {
        400: {"model": ErrorBody, "description": "not a valid policy document, or it no longer builds"},
        404: {"model": ErrorBody, "description": "no stored version has this id"},
        503: _CHANGES[503],
    }

    @app.put(f"{API}/policy/shadow", responses=shadow_changes)
    async def shadow_document(
        document: dict[str, Any], credential: Admin, note: Annotated[str, Query(max_length=1000)] = ""
    ) -> ShadowSetting:
        """Stores a version and makes it the shadow on every replica (allowed whatever the source)."""
        return await http_change(versions.shadow_document(document, "request body", credential.name, note))

    @app.post(f"{API}/policy/shadow", responses=shadow_changes)
    async def shadow_stored(body: ShadowVersion, credential: Admin) -> ShadowSetting:
        return await http_change(versions.shadow_stored(body.version, credential.name, body.note))

    @app.delete(f"{API}/policy/shadow", responses=shadow_changes)
    async def clear_shadow(
        credential: Admin, note: Annotated[str, Query(max_length=1000)] = ""
    ) -> ShadowSetting:
        return await http_change(versions.clear_shadow(credential.name, note))

    promote_responses = (
        with_body
        | _CHANGES
        | {409: {"model": ErrorBody, "description": "no shadow is set, or the policy file is the source"}}
    )

    @app.post(f"{API}/policy/shadow/promote", responses=promote_responses)
    async def promote(body: Note, credential: Admin) -> PolicyInfo:
        """Activates the shadow version and clears the shadow, in one audited change (409 when no
        shadow is set, or the file is the source)."""
        return await change(versions.promote(credential.name, body.note, "api"))

    @app.websocket(STREAMS_PATH)
    async def stream(websocket: WebSocket) -> None:
        credential = _credential(websocket.headers.get("authorization"), tokens)
        if credential is None or not credential.allows("proxy"):
            status, error = (
                (401, "missing or wrong bearer token")
                if credential is None
                else (403, credential.refusal("proxy"))
            )
            await websocket.send_denial_response(JSONResponse({"error": error}, status))
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
    if message.get("type") == "chunks":
        results = control_plane.process_streaming_chunks(message["chunks"], context)
    else:
        results = control_plane.close_streaming_context(context)
    async for batch, done in _gathered(results):
        for result in batch:
            decisions.observe("stream", result)
        answer = StreamResults.model_construct(  # the control plane's own results, serialised at once
            results=[
                StreamResult.model_construct(result=WireResult.of(r), index=r.answers, passed=r.unchanged)
                for r in batch
            ],
            done=done,
        )
        await websocket.send_text(answer.model_dump_json())


async def _gathered[T](results: AsyncIterator[T]) -> AsyncIterator[tuple[list[T], bool]]:
    """``results`` in lists of what the policy yielded while the last list was being sent, and
    whether it is the last: the policy runs in a task of its own, which adds to the list until it
    awaits something (a judge) or ends, so nothing it yielded waits for what it awaits next."""
    queue: asyncio.Queue[T] = asyncio.Queue()
    producing = asyncio.create_task(_fill(queue, results))
    try:
        while True:
            waiting = asyncio.ensure_future(queue.get())
            await asyncio.wait((waiting, producing), return_when=asyncio.FIRST_COMPLETED)
            batch = [waiting.result()] if waiting.done() else []
            waiting.cancel()
            while not queue.empty():
                batch.append(queue.get_nowait())
            if producing.done():
                producing.result()  # the policy's failure, should it have raised
                yield batch, True
                return
            yield batch, False
    finally:
        producing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producing


async def _fill[T](queue: "asyncio.Queue[T]", results: AsyncIterator[T]) -> None:
    async for result in results:
        queue.put_nowait(result)
