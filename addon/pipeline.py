"""One provider call from the client's request to the client's response.

Framework-free: the relay server hands it a ``ProxyRequest`` and streams the ``ProxyResponse``
back. Every step that can fail answers the client in the provider's own error format.
"""

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from opentelemetry import trace as otel

from addon.call_trace import CallTrace, StreamCapture, body_for_record
from addon.endpoints import Family, Route, Treatment, UnknownEndpoints, UnsafePath, error_format
from addon.joined_reads import joined_reads
from addon.metrics import ProxyMetrics
from addon.provider_profiles import ANY_HOST, KNOWN_HOSTS, ProviderHosts
from addon.stream_relay import StreamRelay, relay_for
from addon.upstream import Sender
from controlplane.interface import ControlPlaneUnavailable, PolicingService, ResponseVerdict, Unpoliceable
from controlplane.models import (
    ActivityEvent,
    ActivityType,
    NormalizedRequest,
    PolicyResult,
    RequestMetadata,
    StreamingContext,
    WireFormat,
    unread_request,
)
from controlplane.recording.records import CallOutcome, Usage, block_kind, settled_outcome
from controlplane.tracing import CALL_ID, context_from, tracer
from formats import error_body, transcoder
from formats.answers import answer_of
from formats.base import UNREADABLE
from formats.gemini_stream import model_call
from formats.json_array import JSONArrayParser
from formats.sse import SSEParser

log = logging.getLogger(__name__)

_DROPPED_RESPONSE_HEADERS = frozenset(
    {"content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive"}
)
#: Streams publish a progress summary at most this often, not one event per token.
_CHUNK_SUMMARY_INTERVAL = 0.5
_BATCH_INTERVAL = 0.001  # seconds


class _Refusal(Exception):
    """A call Luthien answers itself, in the provider's error format."""

    def __init__(
        self, status: int, message: str, activity: ActivityType = ActivityType.ERROR, **data: Any
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.activity, self.data = status, message, activity, data


class UpstreamBroken(Exception):
    """The provider's stream broke off; the client's connection must break off the same way."""


@dataclass
class ProxyRequest:
    method: str
    host: str
    path: str  # with the query string
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


@dataclass
class ProxyResponse:
    status: int
    headers: list[tuple[str, str]]
    body: AsyncGenerator[bytes]
    # The body is complete as soon as it is read (an answer policed whole, an error): it can be
    # answered from mitmproxy's request hook. Otherwise it streams through the relay server.
    whole: bool = False


async def _started(body: AsyncGenerator[bytes]) -> AsyncGenerator[bytes]:
    """``body`` run to its first ``yield`` (an empty piece, at the top of its ``try``): from here
    on, closing it runs its clean-up even if not a byte of it is ever read."""
    await anext(body)
    return body


async def _batched(outputs: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Joins the events produced from one upstream read into few writes.

    The proxy, the relay and the pipeline share one event loop, and a write does not yield to
    it: an event reaches the client only when the pipeline next waits. So the first event goes
    out at once, then whatever was produced in each _BATCH_INTERVAL, each followed by a pause
    that lets mitmproxy forward it. One write per event would cost mitmproxy's per-chunk work
    on every event; one per read would hold the first events until the whole read is done.
    """
    batch: list[bytes] = []
    started = time.monotonic()
    first = True
    async for out in outputs:
        batch.append(out)
        if first or time.monotonic() - started >= _BATCH_INTERVAL:
            yield b"".join(batch)
            batch.clear()
            await asyncio.sleep(0)
            started, first = time.monotonic(), False
    if batch:
        yield b"".join(batch)


def credential_hash(request: ProxyRequest) -> str:
    """A stable, non-reversible name for the caller's credential (never the credential)."""
    credential = (
        request.header("authorization")
        or request.header("x-api-key")
        or request.header("api-key")  # Azure OpenAI
        or request.header("x-goog-api-key")
        or _query_key(request.path)
    )
    return hashlib.sha256(credential.encode()).hexdigest()[:16] if credential else ""


def _query_key(path: str) -> str:
    """Google's credential given as ``?key=``."""
    pairs = path.partition("?")[2].split("&")
    return next((pair[4:] for pair in pairs if pair.startswith("key=")), "")


def _trace_id(request: ProxyRequest) -> str | None:
    parts = (request.header("traceparent") or "").split("-")
    return parts[1] if len(parts) == 4 else None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Parsers disagree on which of two equal keys wins; the policy must see what the provider sees."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r} in a JSON object")
        obj[key] = value
    return obj


def _user_id(body: dict[str, Any]) -> str | None:
    metadata = body.get("metadata")
    user = metadata.get("user_id") if isinstance(metadata, dict) else None
    return user or body.get("user") or body.get("safety_identifier")


def _upstream_failure(host: str, exc: httpx.HTTPError) -> tuple[int, str]:
    """The status and message for a provider that could not be reached (502) or that stayed
    silent past the upstream timeout (504)."""
    if isinstance(exc, httpx.TimeoutException):
        return 504, f"Luthien gave up waiting for {host}: {type(exc).__name__}"
    return 502, f"Luthien could not reach {host}: {type(exc).__name__}"


def _response_headers(upstream: httpx.Response, call_id: str) -> list[tuple[str, str]]:
    kept = [(k, v) for k, v in upstream.headers.multi_items() if k.lower() not in _DROPPED_RESPONSE_HEADERS]
    return [*kept, ("x-luthien-call-id", call_id)]


#: Turns the provider's answer to a policed request into the client's response.
_Answer = Callable[[httpx.Response, NormalizedRequest], Awaitable[ProxyResponse]]


def _route(request: ProxyRequest, hosts: ProviderHosts) -> tuple[Route | UnsafePath, Family]:
    """Where the request goes on its host, and whose error format its refusals are in."""
    profile = hosts.profile_for(request.host) or ANY_HOST
    try:
        route = profile.route(request.method, request.path)
    except UnsafePath as exc:
        return exc, profile.family
    return route, route.family or profile.family


def _passed_unread(
    wire_format: WireFormat, body: dict[str, Any], policy_version: str | None
) -> ResponseVerdict:
    """A whole response no policy inspects, passed as it came: what the record keeps of its
    answer is read here, as the normalised view would read it (and a body it could not read is
    refused alike)."""
    try:
        output, usage = answer_of(wire_format, body)
    except UNREADABLE as exc:
        message = f"Luthien could not read the provider's response: {exc}"
        return ResponseVerdict(unpoliceable=Unpoliceable(status=502, message=message))
    passed = PolicyResult[None](policy_version=policy_version)
    return ResponseVerdict(
        result=passed, original_output=output, final_output=output.model_copy(), usage=usage
    )


def _passthrough_headers(upstream: httpx.Response) -> list[tuple[str, str]]:
    """For a body forwarded as raw bytes: its content-encoding is kept, nothing here decodes it."""
    return [
        (k, v)
        for k, v in upstream.headers.multi_items()
        if k.lower() not in ("transfer-encoding", "connection", "keep-alive")
    ]


class Pipeline:
    def __init__(
        self,
        control_plane: PolicingService,
        upstream: Sender,
        metrics: ProxyMetrics | None = None,
        unknown_endpoints: UnknownEndpoints = UnknownEndpoints.FORWARD,
        hosts: ProviderHosts = KNOWN_HOSTS,
    ) -> None:
        self._control_plane = control_plane
        self._hosts = hosts
        self._upstream = upstream
        self.metrics = metrics if metrics is not None else ProxyMetrics()
        self._unknown_endpoints = unknown_endpoints
        self._active: set[str] = set()  # the ids of the calls begun and not yet recorded
        self._idle = asyncio.Event()
        self.stopping = False  # the proxy is shutting down: what is cut now, it cut

    async def handle(self, request: ProxyRequest) -> ProxyResponse:
        route, family = _route(request, self._hosts)
        if isinstance(route, Route):  # the path that was looked up is the one the provider gets
            request = dataclasses.replace(request, path=route.path)
        call_id = uuid.uuid4().hex
        metadata = RequestMetadata(
            call_id=call_id,
            trace_id=_trace_id(request),
            api_key_hash=credential_hash(request),
            host=request.host,
            path=request.path,
            user_agent=request.header("user-agent"),
            model=route.model if isinstance(route, Route) else None,
        )
        trace = CallTrace(request.method, request.headers, metadata)
        trace.original_request = body_for_record(request.body) if request.body else None
        # Before anything goes upstream: should this process die mid-call, the call has a record.
        self._control_plane.record_call_started(trace.stand_in())
        self._active.add(call_id)
        # The call's span continues a trace the agent started, if it sent a traceparent.
        trace.span = tracer.start_span(
            "luthien.call",
            context=context_from(dict(request.headers)),
            kind=otel.SpanKind.SERVER,
            attributes={CALL_ID: call_id, "server.address": request.host, "url.path": metadata.path},
        )
        try:
            with otel.use_span(trace.span, end_on_exit=False):
                response = await self._dispatch(request, route, error_format(family), trace)
        except asyncio.CancelledError:
            # The client left before the answer (or the proxy is stopping): the relay stops the
            # call, and it is recorded.
            reason = (
                "Luthien was stopping: the call was cut before its response was sent"
                if self.stopping
                else "the client disconnected before the response was sent"
            )
            trace.fail(CallOutcome.ERROR, trace.status, reason)
            await self._publish(metadata, ActivityType.ERROR, reason=reason)
            await self._settle(trace)
            raise
        response.body = await _started(self._recorded(response.body, trace))
        return response

    async def _dispatch(
        self, request: ProxyRequest, route: Route | UnsafePath, errors: WireFormat, trace: CallTrace
    ) -> ProxyResponse:
        """Does with the call what the endpoint table says (addon/endpoints.py); a refusal is in
        ``errors``, the format of the host's SDK."""
        if isinstance(route, UnsafePath):
            return await self._refuse(errors, trace, _Refusal(400, f"Luthien refuses this path: {route}"))
        endpoint = route.endpoint
        where = f"{request.method} {route.path.partition('?')[0]}"
        match route.treatment:
            case None if self._unknown_endpoints is UnknownEndpoints.REFUSE:
                message = f"Luthien refuses {where}: it is not in the endpoint table (unknown: refused)"
                return await self._refuse(errors, trace, _Refusal(403, message, ActivityType.BLOCKED))
            case None:
                trace.unpoliced = True
                return await self._passthrough(request, trace)
            case Treatment.FORWARDED if request.body:
                message = f"Luthien refuses {where} with a body: the endpoint takes none, so none is policed"
                return await self._refuse(errors, trace, _Refusal(400, message))
            case Treatment.FORWARDED:
                return await self._passthrough(request, trace)
            case Treatment.REFUSED if route.wrong_method:
                message = f"Luthien refuses {where}: the provider serves this path with other methods"
                return await self._refuse(errors, trace, _Refusal(405, message, ActivityType.BLOCKED))
            case Treatment.REFUSED:
                assert endpoint is not None
                message = f"Luthien does not forward {where} ({endpoint.note}): policy cannot see it"
                return await self._refuse(errors, trace, _Refusal(403, message, ActivityType.BLOCKED))
        assert endpoint is not None and endpoint.wire_format is not None
        if route.treatment is Treatment.REQUEST_ONLY:
            return await self._policed(
                request,
                endpoint.wire_format,
                trace,
                lambda upstream, _: self._unpoliced_answer(upstream, trace),
            )
        wire_format = endpoint.wire_format
        if route.treatment is Treatment.RETRIEVAL:
            return await self._retrieval(request, wire_format, trace)
        return await self._policed(
            request,
            wire_format,
            trace,
            lambda upstream, policed: self._respond(upstream, wire_format, trace, policed),
        )

    async def _refuse(self, errors: WireFormat, trace: CallTrace, refusal: _Refusal) -> ProxyResponse:
        blocked = refusal.activity is ActivityType.BLOCKED
        kind = block_kind(CallOutcome.BLOCKED, trace.decisions) if blocked else None
        await self._publish(
            trace.metadata, refusal.activity, reason=refusal.message, block_kind=kind, **refusal.data
        )
        return self._error(errors, trace, refusal)

    async def _recorded(self, body: AsyncGenerator[bytes], trace: CallTrace) -> AsyncGenerator[bytes]:
        """The response body; once it has been sent, or abandoned, the call is recorded (before
        the relay ends the response: the client cannot see the end before the record is on disk)."""
        try:
            yield b""  # see _started
            async for data in body:
                yield data
        finally:
            await body.aclose()  # a body never read to its end still lets go of what it holds
            await self._settle(trace)

    async def _settle(self, trace: CallTrace) -> None:
        """The call is over for the client, or will be with the next piece sent: its span ends
        and its record goes to disk first. Once per call."""
        if trace.metadata.call_id not in self._active:
            return
        self._active.remove(trace.metadata.call_id)
        if not self._active:
            self._idle.set()
        trace.finish()
        trace.span.set_attributes({"luthien.outcome": trace.outcome.value, "http.status": trace.status or 0})
        trace.span.end()
        self.metrics.call_finished(trace)
        try:
            await self._control_plane.record_call(trace.record())
        except Exception:
            log.exception("could not record call %s", trace.metadata.call_id)

    async def drained(self, timeout: float) -> bool:
        """Waits up to ``timeout`` for every call in progress to be over and recorded."""
        self._idle.clear()
        if not self._active:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        return not self._active

    async def _publish(self, metadata: RequestMetadata, kind: ActivityType, **data: Any) -> None:
        await self._control_plane.publish_activity(
            ActivityEvent(
                call_id=metadata.call_id, type=kind, host=metadata.host, model=metadata.model, data=data
            )
        )

    def _error(self, wire_format: WireFormat, trace: CallTrace, refusal: _Refusal) -> ProxyResponse:
        error = error_body(wire_format, refusal.status, refusal.message)
        outcome = CallOutcome.BLOCKED if refusal.activity is ActivityType.BLOCKED else CallOutcome.ERROR
        trace.fail(outcome, refusal.status, refusal.message)
        trace.final_response = error
        body = json.dumps(error).encode()
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("x-luthien-call-id", trace.metadata.call_id),
        ]
        return ProxyResponse(refusal.status, headers, self._whole(body, trace), whole=True)

    async def _whole(self, data: bytes, trace: CallTrace) -> AsyncGenerator[bytes]:
        """A body the client has whole once it is sent: the call is recorded first."""
        await self._settle(trace)
        yield data

    async def _passthrough(self, request: ProxyRequest, trace: CallTrace) -> ProxyResponse:
        metadata = trace.metadata
        trace.outcome = CallOutcome.PASSTHROUGH
        trace.final_request = trace.original_request
        await self._publish(metadata, ActivityType.PASSTHROUGH, method=request.method, path=metadata.path)
        try:
            upstream = await self._upstream.send(
                request.method, request.host, request.path, request.headers, request.body
            )
        except httpx.HTTPError as exc:
            status, reason = _upstream_failure(request.host, exc)
            await self._publish(metadata, ActivityType.ERROR, reason=reason)
            trace.fail(CallOutcome.ERROR, status, reason)
            body = json.dumps({"error": {"message": reason}}).encode()
            headers = [("content-type", "application/json")]
            return ProxyResponse(status, headers, self._whole(body, trace), whole=True)
        trace.first_byte()
        trace.status = upstream.status_code
        forwarded = await _started(self._forwarded(upstream, trace, decoded=False))
        return ProxyResponse(upstream.status_code, _passthrough_headers(upstream), forwarded)

    async def _forwarded(
        self, upstream: httpx.Response, trace: CallTrace, *, decoded: bool
    ) -> AsyncGenerator[bytes]:
        """The provider's body as it comes; ``decoded`` undoes its content-encoding (and then
        the body is kept for the record: it is a provider's error, sent without its length).
        A body forwarded with its length is whole for the client at its last byte: the call is
        recorded before that byte is sent."""
        kept = bytearray()
        length = upstream.headers.get("content-length", "")
        left = int(length) if length.isdigit() and not decoded else None
        try:
            yield b""  # see _started
            async for data in upstream.aiter_bytes() if decoded else upstream.aiter_raw():
                if decoded:
                    kept += data[: max(0, 64 * 1024 - len(kept))]
                elif left is not None and (left := left - len(data)) <= 0:
                    await self._settle(trace)
                yield data
        finally:
            await upstream.aclose()
            if decoded:
                trace.original_response = trace.final_response = body_for_record(bytes(kept))
            await self._publish(trace.metadata, ActivityType.COMPLETED, status=upstream.status_code)

    async def _policed(
        self, request: ProxyRequest, wire_format: WireFormat, trace: CallTrace, answer: _Answer
    ) -> ProxyResponse:
        """Polices the request, sends it, and lets ``answer`` turn the provider's answer into the
        client's response."""
        metadata = trace.metadata
        try:
            body = self._read_request(request, wire_format, trace)
            await self._publish(
                metadata,
                ActivityType.REQUEST_RECEIVED,
                format=wire_format,
                stream=metadata.stream,
            )
            policed, content = await self._apply_request_policy(request, wire_format, trace, body)
            return await self._answered(await self._send(request, content, metadata), trace, policed, answer)
        except ControlPlaneUnavailable as exc:
            return self._error(wire_format, trace, await self._control_plane_lost(metadata, exc))
        except _Refusal as refusal:
            return await self._refuse(wire_format, trace, refusal)

    async def _retrieval(
        self, request: ProxyRequest, wire_format: WireFormat, trace: CallTrace
    ) -> ProxyResponse:
        """A stored output read back (``GET /v1/responses/{id}``): policed like a live answer."""
        metadata = trace.metadata
        metadata.wire_format = wire_format
        try:
            if request.body:
                raise _Refusal(400, "Luthien refuses a body on a retrieval: there is nothing to police it as")
            await self._publish(metadata, ActivityType.REQUEST_RECEIVED, format=wire_format, retrieval=True)
            upstream = await self._send(request, b"", metadata)
            policed = unread_request()  # the request that produced it is not known
            return await self._answered(
                upstream, trace, policed, lambda up, p: self._respond(up, wire_format, trace, p)
            )
        except ControlPlaneUnavailable as exc:
            return self._error(wire_format, trace, await self._control_plane_lost(metadata, exc))
        except _Refusal as refusal:
            return await self._refuse(wire_format, trace, refusal)

    async def _answered(
        self, upstream: httpx.Response, trace: CallTrace, policed: NormalizedRequest, answer: _Answer
    ) -> ProxyResponse:
        try:
            await self._publish(trace.metadata, ActivityType.UPSTREAM_SENT, status=upstream.status_code)
            return await answer(upstream, policed)
        except BaseException:
            await upstream.aclose()  # not left to the pool as busy (a refusal, the client left)
            raise

    async def _control_plane_lost(self, metadata: RequestMetadata, exc: ControlPlaneUnavailable) -> _Refusal:
        refusal = _Refusal(503, f"Luthien's control plane is unavailable, so this call was not sent: {exc}")
        await self._publish(metadata, refusal.activity, reason=refusal.message)
        return refusal

    async def _unpoliced_answer(self, upstream: httpx.Response, trace: CallTrace) -> ProxyResponse:
        """The answer of a request-only endpoint (a token count, vectors): forwarded as it is."""
        trace.first_byte()
        trace.status = upstream.status_code
        if upstream.status_code >= 400:
            trace.fail(
                CallOutcome.PROVIDER_ERROR, upstream.status_code, f"provider answered {upstream.status_code}"
            )
        headers = [*_passthrough_headers(upstream), ("x-luthien-call-id", trace.metadata.call_id)]
        forwarded = await _started(self._forwarded(upstream, trace, decoded=False))
        return ProxyResponse(upstream.status_code, headers, forwarded)

    async def _respond(
        self,
        upstream: httpx.Response,
        wire_format: WireFormat,
        trace: CallTrace,
        policed: NormalizedRequest,
    ) -> ProxyResponse:
        metadata = trace.metadata
        trace.status = upstream.status_code
        headers = _response_headers(upstream, metadata.call_id)
        if upstream.status_code >= 400:
            # Provider errors reach the client unchanged.
            trace.first_byte()
            trace.fail(
                CallOutcome.PROVIDER_ERROR, upstream.status_code, f"provider answered {upstream.status_code}"
            )
            forwarded = await _started(self._forwarded(upstream, trace, decoded=True))
            return ProxyResponse(upstream.status_code, headers, forwarded)
        sse = upstream.headers.get("content-type", "").startswith("text/event-stream")
        # A Gemini stream asked for without ?alt=sse: one JSON array, written piece by piece.
        json_array = wire_format is WireFormat.GEMINI and metadata.stream and not sse
        if sse or json_array:
            metadata.stream = True  # a retrieval asks with a query parameter, not in a body
            trace.stream_span = tracer.start_span("luthien.stream", attributes={CALL_ID: metadata.call_id})
            try:
                with otel.use_span(trace.stream_span, end_on_exit=False):
                    context = await self._stream_context(policed, trace)
            except BaseException:
                trace.stream_span.end()
                raise
            trace.policy_version = context.policy_version or trace.policy_version
            trace.unpoliced |= context.unpoliced
            framing = JSONArrayParser if json_array else SSEParser
            trace.stream = StreamCapture(mirrored=not context.inspects_chunks, parser=framing())
            stream_transcoder = transcoder(wire_format, json_array=json_array)
            relay = relay_for(stream_transcoder, self._control_plane, context, trace.stream, framing())
            streamed = await _started(self._streamed(upstream, relay, trace))
            return ProxyResponse(upstream.status_code, headers, streamed)
        return await self._whole_response(upstream, wire_format, trace)

    async def _stream_context(self, policed: NormalizedRequest, trace: CallTrace) -> StreamingContext:
        """The stream's context: opened on the control plane when the policy that took the
        request inspects chunks; else passive, under that decision, with nothing to open."""
        if trace.inspects_stream:
            return await self._control_plane.create_streaming_context(policed, trace.metadata)
        return StreamingContext(
            stream_id=uuid.uuid4().hex,
            call_id=trace.metadata.call_id,
            metadata=trace.metadata,
            request_data=policed,
            policy_version=trace.policy_version,
            inspects_chunks=False,
        )

    @staticmethod
    def _read_request(request: ProxyRequest, wire_format: WireFormat, trace: CallTrace) -> dict[str, Any]:
        """Parses the body, and fills in what the metadata learns from it (the control plane
        normalises it, where the policy runs)."""
        metadata = trace.metadata
        encoding = (request.header("content-encoding") or "identity").strip().lower()
        if encoding != "identity":
            # The policy would see other bytes than a provider that decodes them.
            raise _Refusal(
                415,
                f"Luthien cannot police a request body with content-encoding {encoding!r}: "
                "send it uncompressed",
            )
        try:
            body = json.loads(request.body, object_pairs_hook=_no_duplicate_keys)
            if not isinstance(body, dict):
                raise ValueError("the body is not a JSON object")
        except (ValueError, TypeError) as exc:
            raise _Refusal(400, f"Luthien could not read this request: {exc}") from exc
        metadata.wire_format = wire_format
        metadata.user_id = _user_id(body)
        if wire_format in (WireFormat.GEMINI, WireFormat.GEMINI_COUNT_TOKENS):
            metadata.model, method = model_call(request.path)
            metadata.stream = method == "streamGenerateContent"
            return body
        # The other formats name these alike; Azure and Vertex AI may name the model in the path.
        metadata.model = body.get("model") or metadata.model
        metadata.stream = bool(body.get("stream"))
        return body

    async def _apply_request_policy(
        self, request: ProxyRequest, wire_format: WireFormat, trace: CallTrace, body: dict[str, Any]
    ) -> tuple[NormalizedRequest, bytes]:
        """The request the policy let through (normalised), and the bytes to send for it (the
        original bytes when it changed nothing)."""
        trace.span.set_attribute("gen_ai.request.model", trace.metadata.model or "")
        with tracer.start_as_current_span(
            "luthien.request_policy", attributes={CALL_ID: trace.metadata.call_id}
        ):
            verdict = await self._control_plane.police_request(wire_format, body, trace.metadata)
        result = verdict.result
        trace.inspects_response, trace.inspects_stream = verdict.inspects_response, verdict.inspects_stream
        if result is not None:
            trace.decide("request", result)
            trace.policy_version, trace.unpoliced = result.policy_version, result.unpoliced
        if verdict.unpoliceable is not None:
            raise _Refusal(verdict.unpoliceable.status, verdict.unpoliceable.message)
        if result is None or not result.allowed or result.value is None:
            reason = (result.reason if result is not None else None) or "blocked by policy"
            raise _Refusal(
                403, f"Request blocked by Luthien policy: {reason}", ActivityType.BLOCKED, stage="request"
            )
        if verdict.body is None:
            trace.final_request = trace.original_request
            return result.value, request.body
        trace.final_request, trace.request_modified = verdict.body, True
        return result.value, json.dumps(verdict.body).encode()

    async def _send(self, request: ProxyRequest, content: bytes, metadata: RequestMetadata) -> httpx.Response:
        try:
            with tracer.start_as_current_span(
                "luthien.upstream", kind=otel.SpanKind.CLIENT, attributes={CALL_ID: metadata.call_id}
            ):
                upstream = await self._upstream.send(
                    request.method, request.host, request.path, request.headers, content
                )
        except httpx.HTTPError as exc:
            raise _Refusal(*_upstream_failure(request.host, exc)) from exc
        return upstream

    async def _streamed(
        self, upstream: httpx.Response, relay: StreamRelay, trace: CallTrace
    ) -> AsyncGenerator[bytes]:
        metadata = trace.metadata
        summarised = time.monotonic()
        finished = False
        self.metrics.stream_opened()
        try:
            yield b""  # see _started
            try:
                reads = joined_reads(upstream.aiter_bytes())
                async with contextlib.aclosing(reads):  # a break stops the reader too
                    async for data in reads:
                        if trace.ttfb_ms is None:
                            trace.first_byte()
                            await self._publish(metadata, ActivityType.FIRST_BYTE)
                        async for out in _batched(relay.feed(data)):
                            await self._before_sending(relay, trace)
                            yield out
                        if relay.ended:
                            break
                        if time.monotonic() - summarised >= _CHUNK_SUMMARY_INTERVAL:
                            summarised = time.monotonic()
                            progress = relay.outcome
                            await self._publish(
                                metadata,
                                ActivityType.STREAM_CHUNKS,
                                chunks_in=progress.chunks_in,
                                chunks_out=progress.chunks_out,
                            )
            except httpx.HTTPError as exc:
                if not relay.client_has_end:  # past its end, a stream breaking off is no failure
                    reason = f"the provider's stream broke off: {type(exc).__name__}"
                    trace.fail(CallOutcome.ERROR, upstream.status_code, reason)
                    await self._publish(metadata, ActivityType.ERROR, reason=reason)
                    raise UpstreamBroken(reason) from exc
            async for out in _batched(relay.close()):
                await self._before_sending(relay, trace)
                yield out
            finished = True
        finally:
            await upstream.aclose()
            if not finished:  # the provider broke off or the client left: the policy lets go
                await relay.abandon()
            self.metrics.stream_closed()
            if not trace.stream_ended:
                await self._stream_ended(relay, trace, finished)

    async def _before_sending(self, relay: StreamRelay, trace: CallTrace) -> None:
        """Once what is about to be sent holds the stream's end, the client's SDK stops reading
        there: the call is complete, and recorded before it is sent."""
        if relay.client_has_end and not trace.stream_ended:
            await self._stream_ended(relay, trace, finished=True)
            await self._settle(trace)

    async def _stream_ended(self, relay: StreamRelay, trace: CallTrace, finished: bool) -> None:
        trace.stream_ended = True
        outcome = relay.outcome
        if trace.stream_span is not None:
            trace.stream_span.set_attributes(
                {"luthien.chunks_in": outcome.chunks_in, "luthien.chunks_out": outcome.chunks_out}
            )
            trace.stream_span.end()
        for decision in outcome.decisions:
            trace.decide("stream", decision)
        trace.response_modified = outcome.diverged
        trace.unpoliced |= outcome.unpoliced
        assert trace.stream is not None
        trace.usage = Usage.from_mapping(trace.stream.original.usage)
        if outcome.control_plane_lost is not None:
            trace.fail(CallOutcome.ERROR, trace.status, outcome.control_plane_lost)
        elif outcome.malformed is not None:
            trace.fail(CallOutcome.ERROR, trace.status, outcome.malformed)
        elif outcome.ended_by_policy:
            trace.fail(
                CallOutcome.BLOCKED,
                trace.status,
                next((d.reason for d in outcome.decisions if not d.allowed), None)
                or "stream ended by policy",
            )
        elif outcome.upstream_error:
            trace.fail(CallOutcome.PROVIDER_ERROR, trace.status, "the provider sent an error event")
        elif not finished and trace.outcome is CallOutcome.COMPLETED:
            reason = (
                "Luthien was stopping: the stream was cut before it ended"
                if self.stopping
                else "the client disconnected before the stream ended"
            )
            trace.fail(CallOutcome.ERROR, trace.status, reason)
        trace.outcome = settled_outcome(trace.outcome, trace.decisions)
        await self._publish(
            trace.metadata,
            ActivityType.BLOCKED if trace.outcome is CallOutcome.BLOCKED else ActivityType.COMPLETED,
            status=trace.status,
            outcome=trace.outcome,
            block_kind=block_kind(trace.outcome, trace.decisions),
            chunks_in=outcome.chunks_in,
            chunks_out=outcome.chunks_out,
            modified=outcome.diverged,
            decisions=[d.reason for d in outcome.decisions if d.reason],
        )

    async def _whole_response(
        self, upstream: httpx.Response, wire_format: WireFormat, trace: CallTrace
    ) -> ProxyResponse:
        metadata = trace.metadata
        trace.first_byte()
        await upstream.aread()
        await upstream.aclose()
        await self._publish(metadata, ActivityType.FIRST_BYTE)
        raw = upstream.content
        trace.original_response = trace.final_response = body_for_record(raw)
        try:
            original = json.loads(raw)
            if not isinstance(original, dict):
                raise ValueError("the body is not a JSON object")
        except ValueError as exc:
            raise _Refusal(502, f"Luthien could not read the provider's response: {exc}") from exc
        if trace.inspects_response:
            with tracer.start_as_current_span(
                "luthien.response_policy", attributes={CALL_ID: metadata.call_id}
            ):
                verdict = await self._control_plane.police_response(wire_format, original, metadata)
        else:
            verdict = _passed_unread(wire_format, original, trace.policy_version)
        trace.original_output, trace.usage = verdict.original_output, verdict.usage
        if verdict.unpoliceable is not None:
            raise _Refusal(verdict.unpoliceable.status, verdict.unpoliceable.message)
        result = verdict.result
        assert result is not None  # a response that could be read was policed
        trace.decide("response", result)
        trace.unpoliced |= result.unpoliced
        if not result.allowed:
            reason = result.reason or "blocked by policy"
            raise _Refusal(
                403, f"Response blocked by Luthien policy: {reason}", ActivityType.BLOCKED, stage="response"
            )
        trace.final_output = verdict.final_output
        modified = verdict.body is not None
        if verdict.body is not None:
            trace.final_response, trace.response_modified = verdict.body, True
            raw = json.dumps(verdict.body).encode()
        trace.outcome = settled_outcome(trace.outcome, trace.decisions)
        await self._publish(
            metadata,
            ActivityType.BLOCKED if trace.outcome is CallOutcome.BLOCKED else ActivityType.COMPLETED,
            status=upstream.status_code,
            modified=modified,
            block_kind=block_kind(trace.outcome, trace.decisions),
        )
        headers = [*_response_headers(upstream, metadata.call_id), ("content-length", str(len(raw)))]
        return ProxyResponse(upstream.status_code, headers, self._whole(raw, trace), whole=True)
