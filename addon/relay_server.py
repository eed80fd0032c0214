"""The in-process HTTP server that mitmproxy hands provider flows to.

mitmproxy's stream hook is synchronous, so a policy that awaits (an LLM judge, a remote control
plane) cannot run inside it. Instead the interceptor re-targets each provider flow at this
loopback server, which runs in the same event loop: each call is its own task, any policy may
await, and the response streams back through mitmproxy as it is produced.
"""

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from addon.embedded import EmbeddedServer
from addon.pipeline import Pipeline, ProxyRequest, ProxyResponse, UpstreamBroken

log = logging.getLogger(__name__)

HOST_HEADER = "x-luthien-host"
TOKEN_HEADER = "x-luthien-relay-token"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class RelayApp:
    """ASGI app: authenticates the hop from mitmproxy and runs the pipeline."""

    def __init__(self, pipeline: Pipeline, token: str) -> None:
        self._pipeline = pipeline
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        lookup = {k.lower(): v for k, v in headers}
        if not secrets.compare_digest(lookup.get(TOKEN_HEADER, "").encode(), self._token):
            await _respond(send, 403, b"not a Luthien relay request")
            return
        body = await _read_body(receive)
        path = scope["raw_path"].decode("latin-1")
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode("latin-1")
        request = ProxyRequest(scope["method"], lookup.get(HOST_HEADER, ""), path, headers, body)
        disconnected = asyncio.create_task(_client_gone(receive))
        try:
            await self._serve(request, send, disconnected)
        finally:
            disconnected.cancel()

    async def _serve(self, request: ProxyRequest, send: Send, disconnected: asyncio.Task[None]) -> None:
        """Runs the call and streams its answer; when the client leaves first (or the server
        stops), the call is cancelled, so that the provider is no longer read (or waited on) for
        nobody. Whatever happens, the response's body is closed: that records the call."""
        handling = asyncio.create_task(self._pipeline.handle(request))
        try:
            await asyncio.wait((handling, disconnected), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not handling.done():
                await _cancel(handling)
        if handling.cancelled():
            return
        try:
            response = handling.result()
        except Exception:
            log.exception("unexpected error handling %s %s", request.method, request.path.split("?")[0])
            await _respond(send, 502, b"Luthien: unexpected error; see the proxy log")
            return
        streaming = asyncio.create_task(_send_response(response, send))
        try:
            await asyncio.wait((streaming, disconnected), return_when=asyncio.FIRST_COMPLETED)
        finally:
            try:
                await _cancel(streaming)
            finally:
                await response.body.aclose()


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancels ``task`` if it is still running and waits for it to wind down."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, UpstreamBroken):
        await task


async def _send_response(response: ProxyResponse, send: Send) -> None:
    """Streams the response. When the provider broke off, the response is left incomplete so
    the client sees the failure it would have seen without Luthien."""
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers],
        }
    )
    async for data in response.body:
        await send({"type": "http.response.body", "body": data, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _client_gone(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]}
    )
    await send({"type": "http.response.body", "body": body})


class _IncompleteResponseFilter(logging.Filter):
    """An incomplete response is how a broken-off provider stream is passed on (see above)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing response" not in record.getMessage()


logging.getLogger("uvicorn.error").addFilter(_IncompleteResponseFilter())


class RelayServer(EmbeddedServer):
    def __init__(self, pipeline: Pipeline) -> None:
        self.token = secrets.token_urlsafe(32)
        super().__init__(
            RelayApp(pipeline, self.token),
            "127.0.0.1",
            0,
            timeout_graceful_shutdown=2,
            # The provider's own Server and Date headers pass through; uvicorn must not add its own.
            server_header=False,
            date_header=False,
            # Forwarded-for headers here are the agent's, passed on by mitmproxy: not for uvicorn.
            proxy_headers=False,
        )
