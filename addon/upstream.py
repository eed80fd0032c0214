"""Where provider traffic really goes, and the one HTTP client that sends it there."""

import http.cookiejar
import ssl
from collections.abc import Iterable
from typing import Any, Protocol

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


class _NoCookies(http.cookiejar.CookieJar):
    """One client sends every agent's calls: a cookie a provider sets in answer to one agent must
    never ride along on another's request. Set-Cookie reaches the agent, whose own Cookie header
    is forwarded as it is."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass

    def add_cookie_header(self, request: Any) -> None:
        pass


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
    """Sends requests to the provider (or to the base URL configured for its host)."""

    def __init__(self, overrides: dict[str, str], timeout: float = DEFAULT_UPSTREAM_TIMEOUT) -> None:
        self._overrides = overrides
        # trust_env=False: the proxy must never send its own traffic through HTTPS_PROXY (itself).
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=15.0, read=timeout, write=60.0, pool=15.0),
            verify=ssl.create_default_context(),
            trust_env=False,
            follow_redirects=False,
            cookies=_NoCookies(),
        )

    def url_for(self, host: str, path: str) -> str:
        return self._overrides.get(host.lower(), f"https://{host}") + path

    async def send(
        self, method: str, host: str, path: str, headers: list[tuple[str, str]], content: bytes
    ) -> httpx.Response:
        request = self._client.build_request(
            method, self.url_for(host, path), headers=forwardable(headers), content=content
        )
        return await self._client.send(request, stream=True)

    async def aclose(self) -> None:
        await self._client.aclose()
