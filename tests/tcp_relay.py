"""A TCP relay the test controls, put between a client and a real service (PostgreSQL, Redis)
to cut the connection for a while, or hang it, and restore it: an outage without stopping the
service."""

import contextlib
import socket
import threading


class TcpRelay:
    """Forwards 127.0.0.1:``port`` to ``target``. ``cut()`` resets every open connection and
    refuses new ones until ``restore()``; ``mute()`` loses the target's replies until then;
    ``hang()`` keeps every connection open (and accepts new ones) but forwards no byte until then,
    as a path that silently stops delivering would (what was sent meanwhile arrives on restore)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = False
        self._muted = False
        self._closed = False
        self._flowing = threading.Event()  # cleared while hung
        self._flowing.set()
        self.connections = 0  # accepted while not cut, for tests to see reconnects
        threading.Thread(target=self._accept, name="tcp-relay", daemon=True).start()

    def __enter__(self) -> "TcpRelay":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            _reset(sock)

    def mute(self) -> None:
        """Drops what the target sends back, on open connections and new ones: requests still
        arrive and are served, but the client never hears that they were (a reply lost on the way)."""
        self._muted = True

    def hang(self) -> None:
        """Stops forwarding bytes either way, connections left open (a peer that hangs, not one
        that is gone) until ``restore()``, which delivers what was held."""
        self._flowing.clear()

    def restore(self) -> None:
        with self._lock:
            self._cut = False
            self._muted = False
        self._flowing.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._flowing.set()  # the pumps a hang holds find their sockets closed and end
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refused = self._cut
            if refused:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
                self.connections += 1
            for source, sink, replies in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(source, sink, replies), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        try:
            while data := source.recv(65536):
                self._flowing.wait()
                if not (replies and self._muted):
                    sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with self._lock:
                self._open.discard(sock)
            _reset(sock)


def _reset(sock: socket.socket) -> None:
    """Closes with RST, as a dropped network path or a killed peer would look to the client."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        # shutdown wakes the relay thread blocked in recv on it; close alone would not.
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
