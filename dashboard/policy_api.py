"""The policy as JSON: the active version, its history (anyone logged in) and changes to it
(admin tokens only). Changes are stored, audited under the token's name and nudged to every
control-plane replica by ``PolicyVersions``."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel

from controlplane.access import Credential
from controlplane.policy_versions import PolicySource, PolicyVersions, UnknownVersion
from controlplane.remote.policy_changes import Activate, http_change
from controlplane.storage.base import ActivePolicy, PolicyActivation, PolicyVersion
from dashboard.auth import require_admin

Admin = Annotated[Credential, Depends(require_admin)]


class PolicyState(BaseModel):
    source: PolicySource
    active: ActivePolicy | None
    history: list[PolicyActivation]


def router(versions: PolicyVersions) -> APIRouter:
    api = APIRouter()
    storage = versions.storage

    @api.get("/api/policy")
    async def state(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> PolicyState:
        return PolicyState(
            source=versions.source,
            active=await storage.active_policy(),
            history=await storage.policy_history(limit),
        )

    @api.get("/api/policy/versions/{version}")
    async def stored_version(version: str) -> PolicyVersion:
        stored = await storage.policy_version(version)
        if stored is None:
            raise HTTPException(404, str(UnknownVersion(version)))
        return stored

    @api.put("/api/policy")
    async def replace(
        document: dict[str, Any], credential: Admin, note: Annotated[str, Query(max_length=1000)] = ""
    ) -> PolicyActivation:
        return await http_change(
            versions.activate_document(document, "request body", credential.name, note, "api")
        )

    @api.post("/api/policy/activations")
    async def activate(body: Activate, credential: Admin) -> PolicyActivation:
        return await http_change(versions.activate_stored(body.version, credential.name, body.note, "api"))

    return api
