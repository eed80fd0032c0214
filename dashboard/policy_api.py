"""The policy as JSON: the active version, its history (anyone logged in) and changes to it
(admin tokens only). Changes are stored, audited under the token's name and nudged to every
control-plane replica by ``PolicyVersions``."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from controlplane.access import Credential
from controlplane.policy_file import PolicyFileError, parse_policy_yaml
from controlplane.policy_versions import FileIsTheSource, PolicySource, PolicyVersions, UnknownVersion
from controlplane.remote.policy_changes import Activate, http_change
from controlplane.storage.base import ActivePolicy, PolicyActivation, PolicyVersion
from dashboard.auth import require_admin
from dashboard.diff import Diff, diff_bodies

Admin = Annotated[Credential, Depends(require_admin)]


class PolicyState(BaseModel):
    source: PolicySource
    active: ActivePolicy | None
    history: list[PolicyActivation]


class PolicyText(BaseModel):
    """A policy document as typed: YAML, of which JSON is a part."""

    text: str = Field(max_length=1_000_000)


class PolicyCheck(BaseModel):
    """What activating a document would do: the version it would be, or every problem."""

    valid: bool
    version: str | None = None
    document: dict[str, Any] | None = Field(default=None, description="The document parsed, to activate.")
    problems: list[str] = []


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

    @api.get("/api/me")
    async def me(request: Request) -> Credential:
        """Who the page is logged in as, so that it offers only what that role may do."""
        credential: Credential = request.state.credential
        return credential

    @api.get("/api/policy/versions/{version}")
    async def stored_version(version: str) -> PolicyVersion:
        stored = await storage.policy_version(version)
        if stored is None:
            raise HTTPException(404, str(UnknownVersion(version)))
        return stored

    @api.get("/api/policy/diff")
    async def diff(before: str, after: str) -> Diff:
        """Two stored versions, line by line as pretty-printed JSON."""
        documents = []
        for version in (before, after):
            stored = await storage.policy_version(version)
            if stored is None:
                raise HTTPException(404, str(UnknownVersion(version)))
            documents.append(stored.document)
        return diff_bodies(*documents)

    @api.post("/api/policy/check")
    async def check(body: PolicyText, credential: Admin) -> PolicyCheck:
        """Validation as the editor types: the same checks as activation (building the policy
        imports the classes it names, hence admin only)."""
        try:
            document = parse_policy_yaml(body.text.encode(), "document")
            _, version = versions.check(document, "document", credential.name)
        except PolicyFileError as exc:
            return PolicyCheck(valid=False, problems=exc.problems)
        except FileIsTheSource as exc:
            raise HTTPException(409, str(exc)) from exc
        return PolicyCheck(valid=True, version=version.version, document=document)

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
