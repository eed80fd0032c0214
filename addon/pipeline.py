"""One provider call from the client's request to the client's response.

Framework-free: the relay server hands it a ``ProxyRequest`` and streams the ``ProxyResponse``
back. Every step that can fail answers the client in the provider's own error format.
"""

import copy
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from addon.formats import FormatError, WireFormatCodec, codec_for
from addon.stream_relay import StreamRelay
from addon.upstream import Upstream
from controlplane.interface import ControlPlaneService
from controlplane.models import ActivityEvent, ActivityType, NormalizedRequest, RequestMetadata

log = logging.getLogger(__name__)

_DROPPED_RESPONSE_HEADERS = frozenset(
    {"content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive"}
)


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
    body: AsyncIterator[bytes]


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def credential_hash(request: ProxyRequest) -> str:
    """A stable, non-reversible name for the caller's credential (never the credential)."""
    credential = request.header("authorization") or request.header("x-api-key") or ""
    return hashlib.sha256(credential.encode()).hexdigest()[:16] if credential else ""


def _trace_id(request: ProxyRequest) -> str | None:
    parts = (request.header("traceparent") or "").split("-")
    return parts[1] if len(parts) == 4 else None


def _user_id(body: dict[str, Any]) -> str | None:
    metadata = body.get("metadata")
    user = metadata.get("user_id") if isinstance(metadata, dict) else None
    return user or body.get("user") or body.get("safety_identifier")


def _response_headers(upstream: httpx.Response, call_id: str) -> list[tuple[str, str]]:
    kept = [(k, v) for k, v in upstream.headers.multi_items() if k.lower() not in _DROPPED_RESPONSE_HEADERS]
    return [*kept, ("x-luthien-call-id", call_id)]


class Pipeline:
    def __init__(self, control_plane: ControlPlaneService, upstream: Upstream) -> None:
        self._control_plane = control_plane
        self._upstream = upstream

    async def handle(self, request: ProxyRequest) -> ProxyResponse:
        call_id = uuid.uuid4().hex
        codec = codec_for(request.method, request.path)
        metadata = RequestMetadata(
            call_id=call_id,
            trace_id=_trace_id(request),
            api_key_hash=credential_hash(request),
            host=request.host,
            path=request.path,
            user_agent=request.header("user-agent"),
        )
        if codec is None:
            return await self._passthrough(request, metadata)
        return await self._policed(request, codec, metadata)

    async def _publish(self, metadata: RequestMetadata, kind: ActivityType, **data: Any) -> None:
        await self._control_plane.publish_activity(
            ActivityEvent(call_id=metadata.call_id, type=kind, data=data)
        )

    def _error(
        self, codec: WireFormatCodec, metadata: RequestMetadata, status: int, message: str
    ) -> ProxyResponse:
        body = json.dumps(codec.error_body(status, message)).encode()
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("x-luthien-call-id", metadata.call_id),
        ]
        return ProxyResponse(status, headers, _once(body))

    async def _passthrough(self, request: ProxyRequest, metadata: RequestMetadata) -> ProxyResponse:
        await self._publish(metadata, ActivityType.PASSTHROUGH, method=request.method, path=request.path)
        try:
            upstream = await self._upstream.send(
                request.method, request.host, request.path, request.headers, request.body
            )
        except httpx.HTTPError as exc:
            await self._publish(
                metadata, ActivityType.ERROR, reason=f"upstream unreachable: {type(exc).__name__}"
            )
            body = json.dumps({"error": {"message": f"Luthien could not reach {request.host}"}}).encode()
            return ProxyResponse(502, [("content-type", "application/json")], _once(body))
        # Raw bytes, content-encoding kept: nothing here is ours to decode.
        headers = [
            (k, v)
            for k, v in upstream.headers.multi_items()
            if k.lower() not in ("transfer-encoding", "connection", "keep-alive")
        ]
        return ProxyResponse(
            upstream.status_code, headers, self._forwarded(upstream, metadata, decoded=False)
        )

    async def _forwarded(
        self, upstream: httpx.Response, metadata: RequestMetadata, *, decoded: bool
    ) -> AsyncIterator[bytes]:
        """The provider's body as it comes; ``decoded`` undoes its content-encoding."""
        try:
            async for data in upstream.aiter_bytes() if decoded else upstream.aiter_raw():
                yield data
        finally:
            await upstream.aclose()
            await self._publish(metadata, ActivityType.COMPLETED, status=upstream.status_code)

    async def _policed(
        self, request: ProxyRequest, codec: WireFormatCodec, metadata: RequestMetadata
    ) -> ProxyResponse:
        try:
            body, normalized = self._read_request(request, codec, metadata)
            await self._publish(
                metadata,
                ActivityType.REQUEST_RECEIVED,
                format=codec.wire_format,
                model=metadata.model,
                stream=metadata.stream,
            )
            policed, content = await self._apply_request_policy(request, codec, metadata, body, normalized)
            upstream = await self._send(request, content, metadata)
            return await self._respond(upstream, codec, metadata, policed)
        except _Refusal as refusal:
            await self._publish(metadata, refusal.activity, reason=refusal.message, **refusal.data)
            return self._error(codec, metadata, refusal.status, refusal.message)

    async def _respond(
        self,
        upstream: httpx.Response,
        codec: WireFormatCodec,
        metadata: RequestMetadata,
        policed: NormalizedRequest,
    ) -> ProxyResponse:
        headers = _response_headers(upstream, metadata.call_id)
        if upstream.status_code >= 400:
            # Provider errors reach the client unchanged.
            return ProxyResponse(
                upstream.status_code, headers, self._forwarded(upstream, metadata, decoded=True)
            )
        if upstream.headers.get("content-type", "").startswith("text/event-stream"):
            context = await self._control_plane.create_streaming_context(policed, metadata)
            relay = StreamRelay(codec.stream_transcoder(), self._control_plane, context)
            return ProxyResponse(upstream.status_code, headers, self._streamed(upstream, relay, metadata))
        return await self._whole_response(upstream, codec, metadata)

    @staticmethod
    def _read_request(
        request: ProxyRequest, codec: WireFormatCodec, metadata: RequestMetadata
    ) -> tuple[dict[str, Any], NormalizedRequest]:
        """Parses and normalises the body, and fills in what the metadata learns from it."""
        try:
            body = json.loads(request.body)
            if not isinstance(body, dict):
                raise ValueError("the body is not a JSON object")
            normalized = codec.normalize_request(body)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise _Refusal(400, f"Luthien could not read this request: {exc}") from exc
        metadata.wire_format = codec.wire_format
        # The three formats name these alike.
        metadata.model = body.get("model")
        metadata.stream = bool(body.get("stream"))
        metadata.user_id = _user_id(body)
        return body, normalized

    async def _apply_request_policy(
        self,
        request: ProxyRequest,
        codec: WireFormatCodec,
        metadata: RequestMetadata,
        body: dict[str, Any],
        normalized: NormalizedRequest,
    ) -> tuple[NormalizedRequest, bytes]:
        """The request the policy let through, and the bytes to send for it (the original bytes
        when it changed nothing)."""
        result = await self._control_plane.apply_request_policies(copy.deepcopy(normalized), metadata)
        if not result.allowed or result.value is None:
            reason = result.reason or "blocked by policy"
            raise _Refusal(
                403, f"Request blocked by Luthien policy: {reason}", ActivityType.BLOCKED, stage="request"
            )
        if result.value == normalized:
            return result.value, request.body
        try:
            return result.value, json.dumps(codec.render_request(body, normalized, result.value)).encode()
        except FormatError as exc:
            raise _Refusal(
                500, f"Luthien could not apply the policy's change to this request: {exc}"
            ) from exc

    async def _send(self, request: ProxyRequest, content: bytes, metadata: RequestMetadata) -> httpx.Response:
        try:
            upstream = await self._upstream.send(
                request.method, request.host, request.path, request.headers, content
            )
        except httpx.HTTPError as exc:
            raise _Refusal(502, f"Luthien could not reach {request.host}: {type(exc).__name__}") from exc
        await self._publish(metadata, ActivityType.UPSTREAM_SENT, status=upstream.status_code)
        return upstream

    async def _streamed(
        self, upstream: httpx.Response, relay: StreamRelay, metadata: RequestMetadata
    ) -> AsyncIterator[bytes]:
        first = True
        try:
            try:
                async for data in upstream.aiter_bytes():
                    if first:
                        first = False
                        await self._publish(metadata, ActivityType.FIRST_BYTE)
                    async for out in relay.feed(data):
                        yield out
                    if relay.ended:
                        break
            except httpx.HTTPError as exc:
                reason = f"the provider's stream broke off: {type(exc).__name__}"
                await self._publish(metadata, ActivityType.ERROR, reason=reason)
                await relay.abandon()
                raise UpstreamBroken(reason) from exc
            async for out in relay.close():
                yield out
        finally:
            await upstream.aclose()
            outcome = relay.outcome
            await self._publish(
                metadata,
                ActivityType.BLOCKED if outcome.ended_by_policy else ActivityType.COMPLETED,
                status=upstream.status_code,
                chunks_in=outcome.chunks_in,
                chunks_out=outcome.chunks_out,
                modified=outcome.diverged,
                decisions=[d.reason for d in outcome.decisions if d.reason],
            )

    async def _whole_response(
        self, upstream: httpx.Response, codec: WireFormatCodec, metadata: RequestMetadata
    ) -> ProxyResponse:
        await upstream.aread()
        await upstream.aclose()
        await self._publish(metadata, ActivityType.FIRST_BYTE)
        raw = upstream.content
        try:
            original = json.loads(raw)
            response = codec.parse_response(original)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise _Refusal(502, f"Luthien could not read the provider's response: {exc}") from exc
        before = response.model_dump()
        result = await self._control_plane.apply_response_policy(response, metadata)
        if not result.allowed or result.value is None:
            reason = result.reason or "blocked by policy"
            raise _Refusal(
                403, f"Response blocked by Luthien policy: {reason}", ActivityType.BLOCKED, stage="response"
            )
        modified = result.value.model_dump() != before
        if modified:
            raw = json.dumps(codec.render_response(original, result.value)).encode()
        await self._publish(metadata, ActivityType.COMPLETED, status=upstream.status_code, modified=modified)
        headers = [*_response_headers(upstream, metadata.call_id), ("content-length", str(len(raw)))]
        return ProxyResponse(upstream.status_code, headers, _once(raw))
