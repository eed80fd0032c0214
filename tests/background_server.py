"""An ASGI app served by uvicorn on 127.0.0.1 from a daemon thread with its own event loop:
how the fake provider, the fake judge and the control-plane service run inside the test process."""

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

import uvicorn

HOST = "127.0.0.1"


class BackgroundServer:
    def __init__(self, app: Any, name: str, *, ws: str = "none") -> None:
        """``ws``: uvicorn's WebSocket implementation ("none": plain HTTP only)."""
        self._app = app
        self._name = name
        self._ws = ws
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self, port: int = 0) -> str:
        """Serves the app; returns its base URL. Port 0 lets the OS pick one."""
        # IPPROTO_TCP, not 0: only then does asyncio set TCP_NODELAY on accepted connections.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
        # log_config=None: do not let uvicorn reconfigure the test process's logging.
        config = uvicorn.Config(
            self._app,
            http="h11",
            # Past this h11 drops a connection, but only when the headers span several reads: a
            # race. The fake provider enforces its header limit itself (HEADER_LIMIT), every time.
            h11_max_incomplete_event_size=1024 * 1024,
            ws=self._ws,
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        ready = threading.Event()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(sock, ready),), name=self._name, daemon=True
        )
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"{self._name} did not start within 10 s")
        return f"http://{HOST}:{sock.getsockname()[1]}"

    def call_soon(self, callback: Any) -> None:
        """Runs ``callback`` on the server's loop (e.g. to set an asyncio.Event from a test)."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(callback)

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=5)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=5)
        self._server = self._thread = self.loop = None

    async def _serve(self, sock: socket.socket, ready: threading.Event) -> None:
        assert self._server is not None
        self.loop = asyncio.get_running_loop()
        task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not (self._server.started or task.done()):
            await asyncio.sleep(0.005)
        ready.set()
        await task


def serve_until_interrupted(name: str, url: str, stop: Callable[[], None]) -> None:
    """For a fake run standalone (``python -m tests.fake_provider``): says where it listens (the
    benchmark reads that line) and serves until Ctrl-C or SIGTERM."""
    print(f"{name} listening on {url} (Ctrl-C to stop)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop()
