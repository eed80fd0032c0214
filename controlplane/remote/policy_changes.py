"""Policy changes over HTTP, the control-plane API's and the dashboard's alike: each refusal of
``PolicyVersions`` as the status that says why, with its precise message; and the shadow slot's
state as both show it."""

from collections.abc import Awaitable

from fastapi import HTTPException
from pydantic import BaseModel, Field

from controlplane.policy_file import PolicyFileError
from controlplane.policy_versions import FileIsTheSource, NoShadow, UnknownVersion
from controlplane.storage.base import (
    ShadowOutcome,
    ShadowPolicy,
    ShadowSetting,
    Storage,
    StorageUnavailable,
)


class Activate(BaseModel):
    """Activates a stored version again (a rollback, or a roll forward)."""

    version: str
    note: str = ""


class ShadowVersion(BaseModel):
    """Makes a stored version the shadow."""

    version: str
    note: str = ""


class Note(BaseModel):
    note: str = ""


class ShadowState(BaseModel):
    shadow: ShadowPolicy | None = Field(description="The slot as the last change left it; None: never set.")
    counts: dict[ShadowOutcome, int] = Field(
        description="Calls the current shadow decided since it was set, by outcome."
    )
    history: list[ShadowSetting] = Field(description="The slot's changes, newest first.")


async def shadow_state(storage: Storage, limit: int) -> ShadowState:
    shadow = await storage.shadow_policy()
    counts: dict[ShadowOutcome, int] = {}
    if shadow is not None and shadow.version is not None:
        counts = await storage.shadow_counts(shadow.version.version, shadow.setting.set_at)
    return ShadowState(shadow=shadow, counts=counts, history=await storage.shadow_history(limit))


async def http_change[T](change: Awaitable[T]) -> T:
    try:
        return await change
    except (FileIsTheSource, NoShadow) as exc:
        raise HTTPException(409, str(exc)) from exc
    except PolicyFileError as exc:
        raise HTTPException(400, str(exc)) from exc
    except UnknownVersion as exc:
        raise HTTPException(404, str(exc)) from exc
    except StorageUnavailable as exc:
        raise HTTPException(503, f"nothing activated: {exc}") from exc
