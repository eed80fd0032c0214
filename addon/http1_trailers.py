"""HTTP/1 trailers for mitmproxy, which raises on them and drops the connection.

mitmproxy 12's HTTP/1 reader raises ``NotImplementedError`` when a chunked message ends with
trailer fields, so the client gets no answer at all. With ``keep_http1_trailers`` installed, a
request's trailers are kept on ``flow.request.trailers`` (as for HTTP/2), where the interceptor
sees them: a provider request with trailers is refused in the provider's format, any other keeps
going without them. A response's trailers are dropped (mitmproxy cannot write HTTP/1 trailers).
"""

from typing import Any

import h11
from mitmproxy import http
from mitmproxy.proxy.layers.http import _http1

_original_read_body = _http1.Http1Connection.read_body


class _TrailerKeepingReader:
    """Wraps h11's body reader: an end of message with trailers ends the message without them,
    and the request's trailers go onto the request being read."""

    def __init__(self, reader: Any, connection: _http1.Http1Connection) -> None:
        self._reader = reader
        self._connection = connection

    def __call__(self, buffer: Any) -> Any:
        return self._kept(self._reader(buffer))

    def read_eof(self) -> Any:
        return self._kept(self._reader.read_eof())

    def _kept(self, event: Any) -> Any:
        if not isinstance(event, h11.EndOfMessage) or not event.headers:
            return event
        request = getattr(self._connection, "request", None)
        if isinstance(self._connection, _http1.Http1Server) and request is not None:
            request.trailers = http.Headers([(bytes(k), bytes(v)) for k, v in event.headers])
        return h11.EndOfMessage()


def _read_body(self: _http1.Http1Connection, event: Any) -> Any:
    if not isinstance(self.body_reader, _TrailerKeepingReader):
        self.body_reader = _TrailerKeepingReader(self.body_reader, self)  # type: ignore[assignment]
    return _original_read_body(self, event)


def keep_http1_trailers() -> None:
    """Installs the fix (idempotent)."""
    _http1.Http1Connection.read_body = _read_body  # type: ignore[method-assign]
