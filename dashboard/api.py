"""Health, readiness and the recorded calls, as JSON: everything the calls pages show."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from controlplane.recording.records import CallRecord, DebugEvent
from controlplane.storage.base import CallPage, CallQuery, Storage, StorageUnavailable
from dashboard.diff import CallDiffs, call_diffs


class CallDetail(BaseModel):
    call: CallRecord
    diffs: CallDiffs
    debug_events: list[DebugEvent]


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
    async def list_calls(query: Annotated[CallQuery, Query()]) -> CallPage:
        return await storage.list_calls(query)

    @api.get("/api/calls/{call_id}")
    async def get_call(call_id: str) -> CallDetail:
        call = await storage.get_call(call_id)
        if call is None:
            raise HTTPException(404, "no call with this id")
        return CallDetail(call=call, diffs=call_diffs(call), debug_events=await storage.debug_events(call_id))

    return api
