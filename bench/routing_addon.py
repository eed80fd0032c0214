"""The bare-mitmproxy baseline: a mitmdump script that only routes provider hosts to the fake.

It does what any mitmproxy-based design must do at the least (terminate TLS for the provider
hosts, forward to the upstream, stream the response back) and nothing else, so the benchmark
can tell Luthien's own cost from mitmproxy's. Run as
``mitmdump -s bench/routing_addon.py`` with ``BENCH_UPSTREAM=http://127.0.0.1:PORT``.
"""

import os
from urllib.parse import urlsplit

from mitmproxy import http

PROVIDER_HOSTS = frozenset({"api.openai.com", "api.anthropic.com"})


class RouteToUpstream:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._scheme = parts.scheme
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.host in PROVIDER_HOSTS:
            flow.request.scheme = self._scheme
            flow.request.host = self._host
            flow.request.port = self._port

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # Stream, as Luthien does: buffering would make a stream's first byte wait for its last.
        if flow.response is not None:
            flow.response.stream = True


addons = [RouteToUpstream(os.environ["BENCH_UPSTREAM"])]
