"""The mitmproxy addon: sends provider flows through Luthien, leaves everything else alone.

A connection names its destination up to three times: the CONNECT target, the TLS SNI and the
Host header (``:authority`` in HTTP/2). Each is put in canonical form (lower case, no trailing
dot, IDNA) and the decision is made on all of them: a flow is Luthien's when any name is a
provider host, and then every name must agree, or the flow is refused with a ``421``. A flow
mitmproxy decrypted is never forwarded by mitmproxy itself: it goes through the pipeline
(addon/provider_calls.py), or is refused.
"""

import json
import logging

from mitmproxy import http

from addon.endpoints import error_format
from addon.provider_profiles import ProviderHosts
from formats import error_body

log = logging.getLogger(__name__)

#: The flow metadata key naming the provider host of a flow that is Luthien's to answer.
PROVIDER_HOST = "luthien_host"

_WEBSOCKET_REFUSAL = (
    "Luthien does not relay WebSocket connections to LLM providers, because their messages would "
    "bypass policy. Use HTTPS (clients such as Codex fall back automatically)."
)


def canonical_host(name: str) -> str | None:
    """``API.OpenAI.com.`` → ``api.openai.com``; None for a name no resolver would take."""
    if name.startswith("["):  # an IPv6 literal
        return name.lower()
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    ascii_name = ascii_name.lower().rstrip(".")
    if not ascii_name or any(not label for label in ascii_name.split(".")):
        return None
    return ascii_name


def _without_port(authority: str) -> str:
    if authority.startswith("["):
        return authority.partition("]")[0] + "]"
    host, _, port = authority.rpartition(":")
    return host if host and port.isdigit() else authority


class ProviderInterceptor:
    """Marks every request to a provider host as Luthien's, or refuses it."""

    def __init__(self, provider_hosts: ProviderHosts) -> None:
        self._provider_hosts = provider_hosts

    def http_connect(self, flow: http.HTTPFlow) -> None:
        """The CONNECT target in canonical form, so that deciding what to decrypt, and where
        mitmproxy would connect, see one spelling of it."""
        host = canonical_host(flow.request.host)
        if host is None:
            flow.response = http.Response.make(400, b"Luthien: unreadable host name in CONNECT")
        elif self._provider_hosts.profile_for(host) is not None:
            flow.request.host = host

    def request(self, flow: http.HTTPFlow) -> None:
        names = self._names(flow)
        providers = sorted(name for name in names if self._provider_hosts.profile_for(name) is not None)
        decrypted = flow.client_conn.tls_established
        if not providers and not decrypted:
            # A plain-HTTP request to another host: an ordinary proxy request, minus any trailers,
            # which mitmproxy cannot write in HTTP/1.
            flow.request.trailers = None
            return
        host = providers[0] if providers else next(iter(names), "")
        if len(names) != 1 or not providers:
            spelled = ", ".join(f"{kind} {value!r}" for kind, value in self._spellings(flow))
            log.info("refused a request whose destination names disagree: %s", spelled)
            self._refuse(
                flow, host, 421, f"Luthien refuses a request whose destination names disagree ({spelled})"
            )
            return
        if "websocket" in flow.request.headers.get("upgrade", "").lower():
            log.info("refused a WebSocket upgrade to %s%s", host, flow.request.path.split("?")[0])
            self._refuse(flow, host, 426, _WEBSOCKET_REFUSAL, kind="websocket_not_supported")
            return
        if flow.request.headers.get("upgrade") or flow.request.method.upper() == "CONNECT":
            self._refuse(
                flow, host, 400, "Luthien does not relay protocol upgrades or tunnels to LLM providers"
            )
            return
        if flow.request.trailers:
            self._refuse(flow, host, 400, "Luthien does not forward requests with HTTP trailers")
            return
        flow.metadata[PROVIDER_HOST] = host

    @staticmethod
    def _spellings(flow: http.HTTPFlow) -> list[tuple[str, str]]:
        """Each name the request's destination goes by, as the client wrote it."""
        spellings = [("destination", flow.request.host)]
        if flow.client_conn.sni:
            spellings.append(("SNI", flow.client_conn.sni))
        if flow.request.host_header:
            spellings.append(("Host", _without_port(flow.request.host_header)))
        return spellings

    def _names(self, flow: http.HTTPFlow) -> set[str]:
        """The canonical names; one that cannot be read counts as a name of its own."""
        return {canonical_host(value) or f"unreadable:{value}" for _, value in self._spellings(flow)}

    def _refuse(
        self, flow: http.HTTPFlow, host: str, status: int, message: str, kind: str | None = None
    ) -> None:
        body = error_body(error_format(self._provider_hosts.family_for(host)), status, message)
        if kind is not None and isinstance(body.get("error"), dict) and "code" in body["error"]:
            body["error"].update(type=kind, code=kind)
        flow.response = http.Response.make(
            status, json.dumps(body).encode(), {"content-type": "application/json"}
        )
