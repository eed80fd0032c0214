"""The pages. They are static HTML: their scripts fetch everything from the JSON API."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).with_name("static")

router = APIRouter(include_in_schema=False)


@router.get("/")
async def monitor() -> FileResponse:
    return FileResponse(STATIC_DIR / "monitor.html")


@router.get("/calls")
async def calls() -> FileResponse:
    return FileResponse(STATIC_DIR / "calls.html")


@router.get("/calls/{call_id}")
async def call_detail(call_id: str) -> FileResponse:
    """The page reads the call id from its own URL."""
    return FileResponse(STATIC_DIR / "call.html")


@router.get("/sessions")
async def sessions() -> FileResponse:
    return FileResponse(STATIC_DIR / "sessions.html")


@router.get("/sessions/{session_id:path}")
async def session_detail(session_id: str) -> FileResponse:
    """The page reads the session id from its own URL."""
    return FileResponse(STATIC_DIR / "session.html")


@router.get("/policy")
async def policy() -> FileResponse:
    """The policy in force, its history and changes; ``?version=V`` shows one stored version."""
    return FileResponse(STATIC_DIR / "policy.html")
