"""Health, readiness, the recorded calls and their sessions, as JSON: everything the pages show."""

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from controlplane.recording.records import BlockKind, CallRecord, DebugEvent, Decision
from controlplane.storage.base import (
    CallPage,
    CallQuery,
    SessionPage,
    SessionPosition,
    SessionQuery,
    SessionSummary,
    ShadowDecision,
    ShadowOutcome,
    Storage,
    StorageUnavailable,
)
from dashboard.diff import CallDiffs, call_diffs
from dashboard.sessions import SessionDetail, Turn, markdown, turn

#: Turns read from the database at a time, for an export of a long session.
EXPORT_BATCH = 200


class ShadowMark(BaseModel):
    """What the shadow policy would have done to a call (``controlplane.shadow``)."""

    shadow_version: str
    outcome: ShadowOutcome
    block_kind: BlockKind | None
    rules: list[str]
    notes: list[str]

    @classmethod
    def of(cls, decision: ShadowDecision) -> "ShadowMark":
        return cls.model_validate(decision.model_dump(include=set(cls.model_fields)))


class ShadowDetail(ShadowMark):
    decisions: list[Decision] = Field(description="The replay's policy decisions.")
    diffs: CallDiffs | None = Field(description="The replayed call's diffs; None when it is the same.")

    @classmethod
    def detail(cls, decision: ShadowDecision) -> "ShadowDetail":
        replayed = decision.replayed
        return cls(
            **dict(ShadowMark.of(decision)),
            decisions=decision.decisions,
            diffs=None if replayed is None else call_diffs(replayed),
        )


class ShadowedPage(CallPage):
    shadow: dict[str, ShadowMark] = Field(description="By call id: the listed calls a shadow replayed.")


class CallDetail(BaseModel):
    call: CallRecord
    diffs: CallDiffs
    shadow: ShadowDetail | None = Field(
        description="What the shadow policy would have done; None: no shadow ran."
    )
    debug_events: list[DebugEvent]
    session: SessionPosition | None = Field(description="Its place in its session; None without one.")
    cost_usd: float | None = Field(
        description="As the calls list has it: estimated when the call was stored."
    )


class TurnQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=100, ge=1, le=500)


class ExportQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["json", "md"] = "json"


def router(storage: Storage) -> APIRouter:
    api = APIRouter()

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz() -> JSONResponse:
        try:
            await storage.ping()
        except StorageUnavailable as exc:
            return JSONResponse({"status": "unavailable", "reason": str(exc)}, status_code=503)
        return JSONResponse({"status": "ready"})

    @api.get("/api/calls")
    async def list_calls(query: Annotated[CallQuery, Query()]) -> ShadowedPage:
        page = await storage.list_calls(query)
        shadows = await storage.shadow_decisions([call.call_id for call in page.calls])
        return ShadowedPage(
            **dict(page), shadow={call_id: ShadowMark.of(d) for call_id, d in shadows.items()}
        )

    @api.get("/api/calls/{call_id}")
    async def get_call(call_id: str) -> CallDetail:
        call = await storage.get_call(call_id)
        if call is None:
            raise HTTPException(404, "no call with this id")
        (listed,) = (await storage.list_calls(CallQuery(call_id=call_id, limit=1))).calls
        shadow = (await storage.shadow_decisions([call_id])).get(call_id)
        return CallDetail(
            call=call,
            diffs=call_diffs(call),
            shadow=None if shadow is None else ShadowDetail.detail(shadow),
            debug_events=await storage.debug_events(call_id),
            session=await storage.session_position(call_id) if call.session_id else None,
            cost_usd=listed.cost_usd,
        )

    @api.get("/api/sessions")
    async def list_sessions(query: Annotated[SessionQuery, Query()]) -> SessionPage:
        return await storage.list_sessions(query)

    async def session_or_404(session_id: str) -> SessionSummary:
        session = await storage.get_session(session_id)
        if session is None:
            raise HTTPException(404, "no session with this id")
        return session

    # Declared before the session itself: a session id may hold "/" (an SDK app's user name).
    @api.get("/api/sessions/{session_id:path}/export")
    async def export_session(session_id: str, query: Annotated[ExportQuery, Query()]) -> Response:
        session = await session_or_404(session_id)
        turns: list[Turn] = []
        while batch := await storage.session_calls(session_id, len(turns), EXPORT_BATCH):
            turns += [turn(call) for call in batch]
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in session_id)[:80]
        if query.format == "md":
            body, media = markdown(session, turns), "text/markdown; charset=utf-8"
        else:
            detail = SessionDetail(session=session, turns=turns, offset=0, limit=len(turns))
            body, media = detail.model_dump_json(indent=2), "application/json"
        disposition = f'attachment; filename="luthien-session-{name}.{query.format}"'
        return Response(body, media_type=media, headers={"Content-Disposition": disposition})

    @api.get("/api/sessions/{session_id:path}")
    async def get_session(session_id: str, query: Annotated[TurnQuery, Query()]) -> SessionDetail:
        session = await session_or_404(session_id)
        calls = await storage.session_calls(session_id, query.offset, query.limit)
        return SessionDetail(
            session=session, turns=[turn(call) for call in calls], offset=query.offset, limit=query.limit
        )

    return api
