"""A client that chooses every byte: ``CONNECT`` any target, TLS with any SNI (or none), then any
HTTP/1.1 bytes, or one HTTP/2 request with any ``:authority``, ``:path`` and headers.

It is for probing how the proxy routes and frames what it is sent, not for trusting it: the
proxy's CA bundle is loaded, but the certificate's host name is not checked. TLS runs over
memory BIOs on a plain socket, so a test can also half-close the TCP connection mid-request.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events

TIMEOUT = 30.0


@dataclass
class RawResponse:
    """What came back. ``status`` 0: no answer at all (the connection closed, or garbage came).
    ``closed_early``: the connection ended before the response was complete."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    closed_early: bool = False
    connect_status: int = 200  # the proxy's answer to CONNECT

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name.lower()), None)

    def json(self) -> Any:
        return json.loads(self.body)


class ConnectRefused(Exception):
    def __init__(self, status: int, head: bytes) -> None:
        super().__init__(f"CONNECT answered {status}: {head[:200]!r}")
        self.status = status


class TlsTunnel:
    """A CONNECT tunnel through the proxy with TLS on top, byte by byte under the test's control."""

    def __init__(
        self,
        proxy_port: int,
        bundle: Path | str,
        connect_target: str,
        sni: str | None,
        alpn: tuple[str, ...] = ("http/1.1",),
        timeout: float = TIMEOUT,
    ) -> None:
        self.sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
        try:
            self.sock.sendall(f"CONNECT {connect_target} HTTP/1.1\r\nHost: {connect_target}\r\n\r\n".encode())
            head = _read_head(self.sock)
            parts = head.split(b" ", 2)
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            if status != 200:
                raise ConnectRefused(status, head)
            context = ssl.create_default_context(cafile=str(bundle))
            context.check_hostname = False
            context.verify_mode = ssl.CERT_REQUIRED  # the proxy's CA must sign it; the name is not checked
            context.set_alpn_protocols(list(alpn))
            self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.tls = context.wrap_bio(self._in, self._out, server_side=False, server_hostname=sni)
            self._handshake()
        except BaseException:
            self.sock.close()
            raise
        self.eof = False

    def _handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError(
                        "the proxy closed the connection during the TLS handshake"
                    ) from None
                self._in.write(data)

    def _flush(self) -> None:
        if pending := self._out.read():
            self.sock.sendall(pending)

    @property
    def alpn(self) -> str | None:
        return self.tls.selected_alpn_protocol()

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def recv(self) -> bytes:
        """The next decrypted bytes; b"" at the end of the connection."""
        while True:
            try:
                return self.tls.read(65536)
            except ssl.SSLWantReadError:
                try:
                    data = self.sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                if not data:
                    self.eof = True
                    return b""
                self._in.write(data)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self.eof = True
                return b""
            except ssl.SSLError:
                self.eof = True
                return b""

    def half_close(self) -> None:
        """Shuts the TCP connection for writing (no TLS close_notify): a client gone mid-request."""
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> TlsTunnel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def http1_bytes(
    method: str,
    path: str,
    host: str | None,
    body: bytes | None = None,
    headers: tuple[tuple[str, str], ...] | list[tuple[str, str]] = (),
) -> bytes:
    """An HTTP/1.1 request as bytes: ``host`` None sends no Host header; a body gets a
    Content-Length (and a JSON content type unless ``headers`` name one)."""
    lines = [f"{method} {path} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in headers]
    if body is not None:
        if not any(k.lower() == "content-type" for k, _ in headers):
            lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape") + b"\r\n\r\n" + (body or b"")


def raw_request(
    proxy_port: int,
    bundle: Path | str,
    connect_target: str,
    sni: str | None,
    request_bytes: bytes,
    *,
    half_close: bool = False,
    timeout: float = TIMEOUT,
) -> RawResponse:
    """Sends ``request_bytes`` as they are on a fresh tunnel and reads one HTTP/1.1 answer
    (chunked and content-length bodies decoded). A refused CONNECT comes back as its status."""
    try:
        tunnel = TlsTunnel(proxy_port, bundle, connect_target, sni, timeout=timeout)
    except ConnectRefused as refused:
        return RawResponse(refused.status, connect_status=refused.status, closed_early=True)
    except (ConnectionError, ssl.SSLError, TimeoutError) as exc:
        return RawResponse(0, closed_early=True, body=str(exc).encode())
    with tunnel:
        tunnel.send(request_bytes)
        if half_close:
            tunnel.half_close()
        try:
            return read_http1(tunnel)
        except TimeoutError:
            return RawResponse(0, closed_early=True, body=b"timed out")


class _Reader:
    def __init__(self, tunnel: TlsTunnel) -> None:
        self.tunnel = tunnel
        self.buffer = b""

    def fill(self) -> bool:
        data = self.tunnel.recv()
        self.buffer += data
        return bool(data)

    def until(self, marker: bytes) -> bytes | None:
        while marker not in self.buffer:
            if not self.fill():
                return None
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def exactly(self, n: int) -> bytes | None:
        while len(self.buffer) < n:
            if not self.fill():
                return None
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data


def read_http1(tunnel: TlsTunnel) -> RawResponse:
    reader = _Reader(tunnel)
    head = reader.until(b"\r\n\r\n")
    if head is None:
        return RawResponse(0, body=reader.buffer, closed_early=True)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return RawResponse(0, body=head, closed_early=True)
    response = RawResponse(int(parts[1]))
    response.headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]
    if (response.header("transfer-encoding") or "").lower() == "chunked":
        body = b""
        while True:
            size_line = reader.until(b"\r\n")
            if size_line is None:
                response.body, response.closed_early = body, True
                return response
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                reader.until(b"\r\n")  # trailers (none expected) end with an empty line
                response.body = body
                return response
            data = reader.exactly(size + 2)
            if data is None:
                response.body, response.closed_early = body + reader.buffer[:size], True
                return response
            body += data[:size]
    if (length := response.header("content-length")) is not None:
        data = reader.exactly(int(length))
        if data is None:
            response.body, response.closed_early = reader.buffer, True
        else:
            response.body = data
        return response
    if response.status in (204, 304) or 100 <= response.status < 200:
        return response
    while reader.fill():
        pass
    response.body = reader.buffer
    return response


def raw_h2_request(
    proxy_port: int,
    bundle: Path | str,
    connect_target: str,
    sni: str | None,
    *,
    method: str,
    authority: str,
    path: str,
    headers: tuple[tuple[str, str], ...] | list[tuple[str, str]] = (),
    body: bytes = b"",
    timeout: float = TIMEOUT,
) -> RawResponse:
    """One HTTP/2 request with the pseudo-headers given (``h2`` validates nothing we send)."""
    try:
        tunnel = TlsTunnel(proxy_port, bundle, connect_target, sni, alpn=("h2",), timeout=timeout)
    except ConnectRefused as refused:
        return RawResponse(refused.status, connect_status=refused.status, closed_early=True)
    except (ConnectionError, ssl.SSLError, TimeoutError) as exc:
        return RawResponse(0, closed_early=True, body=str(exc).encode())
    with tunnel:
        if tunnel.alpn != "h2":
            raise AssertionError(f"the proxy did not negotiate h2 (ALPN {tunnel.alpn!r})")
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding="utf-8",
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        pseudo = [(":method", method), (":scheme", "https"), (":authority", authority), (":path", path)]
        extra = [("content-length", str(len(body)))] if body else []
        conn.send_headers(stream, [*pseudo, *headers, *extra], end_stream=not body)
        if body:
            for start in range(0, len(body), 16384):
                conn.send_data(stream, body[start : start + 16384], end_stream=start + 16384 >= len(body))
        tunnel.send(conn.data_to_send())
        response = RawResponse(0, closed_early=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = tunnel.recv()
            if not data:
                return response
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                    response.headers = [(str(k), str(v)) for k, v in event.headers]
                    response.status = int(response.header(":status") or 0)
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                    response.body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                    response.closed_early = False
                    return response
                elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                    return response
            if pending := conn.data_to_send():
                tunnel.send(pending)
        return response


def _read_head(sock: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(1)
        if not data:
            break
        head += data
    return head
