"""The mitmproxy addon: sends provider flows through Luthien, leaves everything else alone."""

import logging

from mitmproxy import http

from addon.relay_server import HOST_HEADER, TOKEN_HEADER

log = logging.getLogger(__name__)

_WEBSOCKET_REFUSAL = (
    b'{"error":{"message":"Luthien does not relay WebSocket connections to LLM providers, because '
    b'their messages would bypass policy. Use HTTPS (clients such as Codex fall back automatically).",'
    b'"type":"websocket_not_supported","param":null,"code":"websocket_not_supported"}}'
)


class ProviderInterceptor:
    """Re-targets every request to a provider host at the in-process relay server.

    Decisions use the connection's destination (``flow.request.host``), not the Host header, so a
    forged Host header cannot steer a provider request around policy.
    """

    def __init__(self, provider_hosts: frozenset[str], relay_port: int, relay_token: str) -> None:
        self._provider_hosts = provider_hosts
        self._relay_port = relay_port
        self._relay_token = relay_token

    def request(self, flow: http.HTTPFlow) -> None:
        host = flow.request.host.lower()
        if host not in self._provider_hosts:
            return
        if flow.request.headers.get("upgrade", "").lower() == "websocket":
            log.info("refused a WebSocket upgrade to %s%s", host, flow.request.path.split("?")[0])
            flow.response = http.Response.make(426, _WEBSOCKET_REFUSAL, {"content-type": "application/json"})
            return
        flow.metadata["luthien"] = True
        flow.request.headers[HOST_HEADER] = host
        flow.request.headers[TOKEN_HEADER] = self._relay_token
        flow.request.scheme = "http"
        flow.request.host = "127.0.0.1"
        flow.request.port = self._relay_port

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get("luthien") and flow.response is not None:
            # The relay already decided what to hold back; mitmproxy must not buffer on top.
            flow.response.stream = True
