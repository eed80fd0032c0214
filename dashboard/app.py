"""The dashboard: a FastAPI app over the recorded calls (storage) and live activity (the bus).

The caller opens and closes the storage and the bus; the app only reads from them.
"""

import asyncio
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controlplane.access import Tokens
from controlplane.activity.bus import ActivityBus, BusUnavailable
from controlplane.dry_run import DryRunner
from controlplane.policy_nudge import NoNudge
from controlplane.policy_versions import PolicyVersions
from controlplane.storage.base import Storage, StorageUnavailable
from dashboard import activity, api, pages, policy_api
from dashboard.auth import TokenAuth, login_router
from dashboard.token import FixedToken, TokenSource

#: Everything the pages load comes from this origin: no inline code, no CDN, no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def create_app(
    storage: Storage,
    bus: ActivityBus,
    token: TokenSource | str,
    named: Tokens | None = None,
    versions: PolicyVersions | None = None,
    dry_run: DryRunner | None = None,
) -> FastAPI:
    """``token``: the admin token every request may carry (a plain string is a fixed token);
    ``named``: more tokens, each with its role. ``versions`` takes policy changes (by default:
    stored in ``storage``, the database being the source); ``dry_run`` replays recorded calls
    under a candidate policy (without one, the policy page offers no dry run)."""
    if isinstance(token, str):
        token = FixedToken(token)
    named = named if named is not None else Tokens([])
    versions = versions if versions is not None else PolicyVersions(storage, NoNudge(), "database")
    # No /docs or /openapi.json: Swagger UI loads from a CDN, which the CSP forbids anyway.
    app = FastAPI(title="Luthien dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.streams_ending = asyncio.Event()
    app.include_router(api.router(storage))
    app.include_router(policy_api.router(versions, dry_run))
    app.include_router(activity.router(bus, app.state.streams_ending))
    app.include_router(login_router(token, named))
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC_DIR), name="static")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {_problem(e)}" for e in exc.errors())
        return JSONResponse({"error": f"invalid parameters: {problems}"}, status_code=422)

    @app.exception_handler(StorageUnavailable)
    async def storage_unavailable(request: Request, exc: StorageUnavailable) -> JSONResponse:
        return JSONResponse({"error": f"storage unavailable: {exc}"}, status_code=503)

    @app.exception_handler(BusUnavailable)
    async def bus_unavailable(request: Request, exc: BusUnavailable) -> JSONResponse:
        return JSONResponse({"error": f"live activity unavailable: {exc}"}, status_code=503)

    # The last added runs first: security headers go on every answer, 401s included.
    app.add_middleware(TokenAuth, token=token, named=named)
    app.add_middleware(SecurityHeaders)
    return app


def _problem(error: Mapping[str, Any]) -> str:
    # Pydantic's "Extra inputs are not permitted" does not say that the name is what is wrong.
    return "unknown parameter" if error["type"] == "extra_forbidden" else str(error["msg"])


def end_live_streams(app: FastAPI) -> None:
    """The server is stopping: the live monitor's streams end (browsers reconnect elsewhere, or
    later), so that no open tab holds the shutdown."""
    app.state.streams_ending.set()


class SecurityHeaders:
    """Puts ``SECURITY_HEADERS`` on every HTTP answer, whichever part of the app wrote it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(SECURITY_HEADERS)
            await send(message)

        await self.app(scope, receive, send_with_headers)
