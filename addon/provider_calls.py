"""The mitmproxy addon that runs each provider call through the pipeline, in the request hook.

A whole answer (a response policed whole, a refusal, an error) is set on the flow right there:
mitmproxy sends it without contacting any server. A streamed answer is handed over to the relay
server and the flow re-targeted at it, carrying only the response's ticket (its request has been
sent upstream already), so the stream reaches the client as the pipeline produces it.
"""

import asyncio
import logging

from mitmproxy import connection, http

from addon.interceptor import PROVIDER_HOST
from addon.pipeline import Pipeline, ProxyRequest, ProxyResponse, UpstreamBroken
from addon.relay_server import TICKET_HEADER, TOKEN_HEADER, RelayServer

log = logging.getLogger(__name__)

_TICKET = "luthien_ticket"


class ProviderCalls:
    """Answers the flows the interceptor marked as Luthien's (``PROVIDER_HOST``)."""

    def __init__(self, pipeline: Pipeline, relay: RelayServer) -> None:
        self._pipeline = pipeline
        self._relay = relay
        self._calls: dict[str, set[asyncio.Task[ProxyResponse]]] = {}  # by client connection

    async def request(self, flow: http.HTTPFlow) -> None:
        host = flow.metadata.get(PROVIDER_HOST)
        if host is None or flow.response is not None:
            return
        call = asyncio.create_task(self._pipeline.handle(_proxy_request(flow, host)))
        calls = self._calls.setdefault(flow.client_conn.id, set())
        calls.add(call)
        try:
            await asyncio.wait((call,))
        except asyncio.CancelledError:
            call.cancel()
            raise
        finally:
            calls.discard(call)
            if not calls:
                self._calls.pop(flow.client_conn.id, None)
        if call.cancelled():  # the client left, or the proxy is stopping
            flow.kill()
            return
        if (error := call.exception()) is not None:
            path = flow.request.path.split("?")[0]
            log.error("unexpected error handling %s %s", flow.request.method, path, exc_info=error)
            flow.response = http.Response.make(502, b"Luthien: unexpected error; see the proxy log")
            return
        response = call.result()
        if response.whole:
            await self._answer_whole(flow, response)
        else:
            self._hand_over(flow, response)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if _TICKET in flow.metadata and flow.response is not None:
            # The pipeline already decided what to hold back; mitmproxy must not buffer on top.
            flow.response.stream = True

    async def error(self, flow: http.HTTPFlow) -> None:
        """The flow failed before it reached the relay (its client left): the answer waiting
        for it is closed, which records the call."""
        if (ticket := flow.metadata.get(_TICKET)) is not None:
            await self._relay.app.abandon(ticket)

    def client_disconnected(self, client: connection.Client) -> None:
        """Calls still waiting for their answer are stopped: nobody is left to take it."""
        for call in self._calls.get(client.id, ()):
            call.cancel()

    def cancel_calls(self) -> None:
        """The proxy is stopping: every call still waiting for its answer is cut."""
        for calls in self._calls.values():
            for call in calls:
                call.cancel()

    @staticmethod
    async def _answer_whole(flow: http.HTTPFlow, response: ProxyResponse) -> None:
        try:
            body = b"".join([piece async for piece in response.body])
        except UpstreamBroken:
            flow.kill()  # the client sees the provider's answer break off, as it would have
            return
        finally:
            await response.body.aclose()
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        flow.response = http.Response.make(response.status, body, headers)

    def _hand_over(self, flow: http.HTTPFlow, response: ProxyResponse) -> None:
        ticket = self._relay.app.hand_over(response)
        flow.metadata[_TICKET] = ticket
        request = flow.request
        request.headers[TOKEN_HEADER] = self._relay.token
        request.headers[TICKET_HEADER] = ticket
        request.headers.pop("transfer-encoding", None)
        request.content = b""  # the request went upstream already: the relay needs only the ticket
        request.scheme, request.host, request.port = "http", "127.0.0.1", self._relay.port


def _proxy_request(flow: http.HTTPFlow, host: str) -> ProxyRequest:
    request = flow.request
    # Names in lower case, as HTTP/2 writes them: they are matched, redacted and recorded so.
    headers = [(k.lower(), v) for k, v in request.headers.items(multi=True)]
    return ProxyRequest(request.method, host, request.path, headers, request.raw_content or b"")
