"""Where provider traffic really goes, and the one HTTP client that sends it there."""

import ssl
from collections.abc import Iterable
from typing import Protocol

import httpx

# Hop-by-hop headers and the ones the HTTP client sets itself.
_NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "host",
        "content-length",
    }
)
INTERNAL_HEADER_PREFIX = "x-luthien-"


def parse_upstreams(specs: Iterable[str]) -> dict[str, str]:
    """``HOST=URL`` pairs, e.g. ``api.openai.com=http://127.0.0.1:9000``."""
    upstreams = {}
    for spec in specs:
        host, sep, url = spec.partition("=")
        if not sep or not host or not url.startswith(("http://", "https://")):
            raise ValueError(f"invalid upstream {spec!r}: expected HOST=http(s)://ADDRESS[/PREFIX]")
        upstreams[host.strip().lower()] = url.strip().rstrip("/")
    return upstreams


def forwardable(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [
        (name, value)
        for name, value in headers
        if name.lower() not in _NOT_FORWARDED and not name.lower().startswith(INTERNAL_HEADER_PREFIX)
    ]


#: How long a provider may stay silent (before its answer, or between two reads of a stream):
#: the OpenAI and Anthropic SDKs' own default, so Luthien never gives up before the agent does.
DEFAULT_UPSTREAM_TIMEOUT = 600.0


class Sender(Protocol):
    """What the pipeline sends a provider request through: ``Upstream``, or a dry run's answers
    from a recorded call (luthien/dry_run.py)."""

    async def send(
        self, method: str, host: str, path: str, headers: list[tuple[str, str]], content: bytes
    ) -> httpx.Response: ...


class Upstream:
    """Sends requests to the provider (or to the base URL configured for its host).

    Through httpx's connection pool (its transport) and not through an ``httpx.AsyncClient``: a
    client adds what a proxy must not. Its default headers (``user-agent: python-httpx``,
    ``accept-encoding``) would reach the provider in place of the agent's absent ones; its cookie
    jar would carry a cookie a provider set for one agent on another's request (one pool sends
    every agent's calls; Set-Cookie reaches the agent, whose own Cookie header is forwarded as
    it is); and its cookie, redirect and auth steps cost CPU on every call. The transport never
    reads a proxy variable (the proxy must not send its own traffic through HTTPS_PROXY, itself)
    and follows no redirect."""

    def __init__(self, overrides: dict[str, str], timeout: float = DEFAULT_UPSTREAM_TIMEOUT) -> None:
        self._overrides = overrides
        self._timeouts = httpx.Timeout(connect=15.0, read=timeout, write=60.0, pool=15.0).as_dict()
        self._transport = httpx.AsyncHTTPTransport(verify=ssl.create_default_context())

    def url_for(self, host: str, path: str) -> str:
        return self._overrides.get(host.lower(), f"https://{host}") + path

    async def send(
        self, method: str, host: str, path: str, headers: list[tuple[str, str]], content: bytes
    ) -> httpx.Response:
        request = httpx.Request(
            method,
            self.url_for(host, path),
            headers=forwardable(headers),
            content=content,
            extensions={"timeout": self._timeouts},
        )
        response = await self._transport.handle_async_request(request)
        response.request = request
        return response

    async def aclose(self) -> None:
        await self._transport.aclose()
