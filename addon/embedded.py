"""An ASGI app served by uvicorn inside mitmproxy's loop: the relay server, and beside the proxy
the dashboard and the metrics endpoint. Signals belong to mitmproxy, not to these servers."""

import asyncio
import socket
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import uvicorn


class _Server(uvicorn.Server):
    def capture_signals(self) -> AbstractContextManager[None]:  # type: ignore[override]
        return nullcontext()  # signals belong to the loop's owner


class EmbeddedServer:
    def __init__(self, app: Any, host: str, port: int, **config: Any) -> None:
        # IPPROTO_TCP, not 0: only then does asyncio set TCP_NODELAY on accepted connections.
        # Without it every response waits ~40 ms on Nagle and delayed ACKs.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Bound now, so a port already in use fails before anything else starts.
        self._socket.bind((host, port))
        self.port: int = self._socket.getsockname()[1]
        settings = {"log_level": "warning", "access_log": False, "lifespan": "off", **config}
        self._server = _Server(uvicorn.Config(app, **settings))
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
