"""Policy changes over HTTP, the control-plane API's and the dashboard's alike: each refusal of
``PolicyVersions`` as the status that says why, with its precise message."""

from collections.abc import Awaitable

from fastapi import HTTPException
from pydantic import BaseModel

from controlplane.policy_file import PolicyFileError
from controlplane.policy_versions import FileIsTheSource, UnknownVersion
from controlplane.storage.base import PolicyActivation, StorageUnavailable


class Activate(BaseModel):
    """Activates a stored version again (a rollback, or a roll forward)."""

    version: str
    note: str = ""


async def http_change(activation: Awaitable[PolicyActivation]) -> PolicyActivation:
    try:
        return await activation
    except FileIsTheSource as exc:
        raise HTTPException(409, str(exc)) from exc
    except PolicyFileError as exc:
        raise HTTPException(400, str(exc)) from exc
    except UnknownVersion as exc:
        raise HTTPException(404, str(exc)) from exc
    except StorageUnavailable as exc:
        raise HTTPException(503, f"nothing activated: {exc}") from exc
