"""The dashboard's tokens: a bearer header for scripts, a cookie for browsers.

The dashboard token (kept in the data dir, or ``LUTHIEN_DASHBOARD_TOKEN``) is an admin; the
named tokens of ``LUTHIEN_DASHBOARD_TOKENS`` have the role each is given (``read`` sees
everything, only ``admin`` changes the policy). Auth is ASGI middleware rather than a route
dependency so that it also covers the static assets and unknown paths: without a token nothing
but ``/healthz`` answers. The request's credential is in ``request.state.credential``.
"""

import logging
import secrets
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from controlplane.access import Credential, Tokens
from dashboard.pages import STATIC_DIR
from dashboard.token import TokenFileError, TokenSource

log = logging.getLogger(__name__)

COOKIE = "luthien_dashboard"
#: The name policy changes made with the dashboard token record.
DASHBOARD_TOKEN_NAME = "dashboard token"
_OWNER = Credential(name=DASHBOARD_TOKEN_NAME, role="admin")
#: The stylesheet of the page that asks to log in, which has no token to fetch the others with.
LOGIN_STYLESHEET = "/login.css"
#: Paths that answer without the token; ``/login`` checks the token it is given itself.
OPEN_PATHS = frozenset({"/healthz", "/login", LOGIN_STYLESHEET})

# Static text only: nothing from the request is ever echoed here.
_LOGIN_REQUIRED = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Luthien dashboard: log in</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{LOGIN_STYLESHEET}">
</head>
<body>
<header>Luthien</header>
<main>
<h1>Log in to the Luthien dashboard</h1>
<p>This dashboard needs its access token. Open the login link that <code>luthien up</code>
(or <code>luthien dashboard</code>) printed when it started, or that <code>luthien login</code>
prints: <code>http://HOST:PORT/login?token=…</code>. The link stays the same across restarts
until the token is rotated (<code>luthien login --rotate</code>).</p>
<p>If you set <code>LUTHIEN_DASHBOARD_TOKEN</code> yourself, open
<code>/login?token=</code> followed by that token.</p>
</main>
</body>
</html>
"""


def token_matches(given: str | None, token: TokenSource) -> bool:
    if given is None:
        return False
    try:
        expected = token.current()
    except TokenFileError as exc:  # fail closed: nobody is let in on a token that cannot be read
        log.error("%s", exc)
        return False
    # Bytes, because compare_digest refuses non-ASCII str, and a request may send anything.
    return secrets.compare_digest(given.encode(), expected.encode())


def unauthorized(path: str) -> Response:
    if path.startswith("/api/") or path == "/readyz":
        return JSONResponse({"error": "missing or wrong dashboard token"}, status_code=401)
    return HTMLResponse(_LOGIN_REQUIRED, status_code=401)


def credential_for(given: str | None, token: TokenSource, named: Tokens) -> Credential | None:
    if token_matches(given, token):
        return _OWNER
    return named.who(given)


def require_admin(request: Request) -> Credential:
    """A route dependency: the request's credential, when it may change the policy."""
    credential: Credential = request.state.credential
    if not credential.allows("admin"):
        raise HTTPException(403, credential.refusal("admin"))
    return credential


class TokenAuth:
    """Lets a request through only when it carries a token, as a bearer header or cookie."""

    def __init__(self, app: ASGIApp, token: TokenSource, named: Tokens) -> None:
        self.app = app
        self.token = token
        self.named = named

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Other scopes (lifespan; websockets, for which the app has no routes) pass through.
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        credential = self._credential(HTTPConnection(scope))
        if credential is None:
            await unauthorized(scope["path"])(scope, receive, send)
            return
        scope.setdefault("state", {})["credential"] = credential
        await self.app(scope, receive, send)

    def _credential(self, connection: HTTPConnection) -> Credential | None:
        scheme, _, given = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and (credential := credential_for(given, self.token, self.named)):
            return credential
        return credential_for(connection.cookies.get(COOKIE), self.token, self.named)


def login_router(token: TokenSource, named: Tokens) -> APIRouter:
    router = APIRouter()

    @router.get(LOGIN_STYLESHEET, include_in_schema=False)
    async def login_stylesheet() -> FileResponse:
        return FileResponse(STATIC_DIR / "login.css")

    @router.get("/login", include_in_schema=False)
    async def login(given: Annotated[str | None, Query(alias="token")] = None) -> Response:
        if given is None or credential_for(given, token, named) is None:
            return unauthorized("/login")
        # 303: the browser follows with a GET to "/", which now carries the cookie.
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, given, httponly=True, samesite="strict", path="/")
        return response

    return router
