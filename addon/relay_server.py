"""The in-process HTTP server through which a streamed answer reaches mitmproxy.

``ProviderCalls`` (addon/provider_calls.py) runs each provider call in mitmproxy's (async)
request hook and answers a whole response there. A streamed one cannot be: a response set in a
hook is sent whole, and mitmproxy's stream hook is synchronous, so a policy that awaits could
not run in it. Such a response is handed over to this loopback server, in the same event loop,
and the flow is re-targeted here with the response's ticket; the response then streams back
through mitmproxy as the pipeline produces it.
"""

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from addon.embedded import EmbeddedServer
from addon.pipeline import ProxyResponse, UpstreamBroken

TOKEN_HEADER = "x-luthien-relay-token"
TICKET_HEADER = "x-luthien-ticket"
#: A response handed over and not claimed in this time (mitmproxy never came for it) is closed.
_CLAIM_TIMEOUT = 30.0

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class RelayApp:
    """ASGI app: authenticates the hop from mitmproxy and streams the response its ticket names."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()
        self._waiting: dict[str, ProxyResponse] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def hand_over(self, response: ProxyResponse) -> str:
        """Keeps ``response`` for the flow that comes with the returned ticket."""
        ticket = secrets.token_urlsafe(16)
        self._waiting[ticket] = response
        asyncio.get_running_loop().call_later(_CLAIM_TIMEOUT, self._expire, ticket)
        return ticket

    async def abandon(self, ticket: str) -> None:
        """The flow will not come (its client left): the response is closed, which records it."""
        if (response := self._waiting.pop(ticket, None)) is not None:
            await response.body.aclose()

    async def abandon_all(self) -> None:
        for ticket in list(self._waiting):
            await self.abandon(ticket)

    def _expire(self, ticket: str) -> None:
        if ticket in self._waiting:
            task = asyncio.create_task(self.abandon(ticket))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        lookup = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not secrets.compare_digest(lookup.get(TOKEN_HEADER, "").encode(), self._token):
            await _respond(send, 403, b"not a Luthien relay request")
            return
        response = self._waiting.pop(lookup.get(TICKET_HEADER, ""), None)
        if response is None:
            await _respond(send, 502, b"Luthien: this response is no longer waiting")
            return
        await _read_body(receive)
        disconnected = asyncio.create_task(_client_gone(receive))
        try:
            await self._stream(response, send, disconnected)
        finally:
            disconnected.cancel()

    @staticmethod
    async def _stream(response: ProxyResponse, send: Send, disconnected: asyncio.Task[None]) -> None:
        """Streams the answer; when the client leaves first (or the server stops), it stops, so
        that the provider is no longer read for nobody. Whatever happens, the response's body is
        closed: that records the call."""
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
    def __init__(self) -> None:
        self.token = secrets.token_urlsafe(32)
        self.app = RelayApp(self.token)
        super().__init__(
            self.app,
            "127.0.0.1",
            0,
            timeout_graceful_shutdown=2,
            # The provider's own Server and Date headers pass through; uvicorn must not add its own.
            server_header=False,
            date_header=False,
            # Forwarded-for headers here are the agent's, passed on by mitmproxy: not for uvicorn.
            proxy_headers=False,
        )

    async def stop(self) -> None:
        await super().stop()
        await self.app.abandon_all()
