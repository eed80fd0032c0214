"""The policy as JSON: the active version, its history (anyone logged in) and changes to it
(admin tokens only). Changes are stored, audited under the token's name and nudged to every
control-plane replica by ``PolicyVersions``."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field, computed_field

from controlplane.access import Credential
from controlplane.dry_run import CallReplay, DryRunner, OfflineJudge, recorded_calls
from controlplane.policy_file import PolicyFileError, parse_policy_yaml
from controlplane.policy_versions import FileIsTheSource, PolicySource, PolicyVersions, UnknownVersion
from controlplane.recording.records import CallOutcome, CallRecord
from controlplane.remote.policy_changes import (
    Activate,
    Note,
    ShadowState,
    ShadowVersion,
    http_change,
    shadow_state,
)
from controlplane.storage.base import ActivePolicy, CallQuery, PolicyActivation, PolicyVersion, ShadowSetting
from dashboard.auth import require_admin
from dashboard.diff import CallDiffs, Diff, call_diffs, diff_bodies

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


#: The most calls one dry run from the dashboard replays.
DRY_RUN_LIMIT = 5000


class DryRunAsk(BaseModel):
    """A candidate (a document as typed, or a stored version) and the recorded calls to replay:
    a filter of the calls list, oldest first up to ``limit``."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(default=None, max_length=1_000_000)
    version: str | None = None
    host: str | None = None
    model: str | None = None
    outcome: CallOutcome | None = None
    since: datetime | None = None
    limit: int = Field(default=500, ge=1, le=DRY_RUN_LIMIT)
    judge: OfflineJudge = "cache"


class DryRunCall(CallReplay):
    """A call the candidate would have treated differently from doing nothing: its replayed record
    is left out of the answer, and its diffs say what would have changed."""

    replayed: CallRecord = Field(exclude=True)
    diffs: CallDiffs = Field(description="The replayed call's diffs, as a live call's.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def started_at(self) -> datetime:
        return self.replayed.started_at

    @computed_field  # type: ignore[prop-decorator]
    @property
    def model(self) -> str | None:
        return self.replayed.model

    @classmethod
    def of(cls, replay: CallReplay) -> "DryRunCall":
        return cls(**dict(replay), diffs=call_diffs(replay.replayed))


class DryRunAnswer(BaseModel):
    summary: dict[str, Any] = Field(
        description="Calls replayed, affected, blocked, modified, by rule and kind."
    )
    affected: list[DryRunCall]


def router(versions: PolicyVersions, dry_run: DryRunner | None = None) -> APIRouter:
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

    @api.post("/api/policy/dry-run")
    async def dry_run_policy(ask: DryRunAsk, credential: Admin) -> DryRunAnswer:
        """The candidate over recorded calls, offline: what it would have blocked or changed."""
        if dry_run is None:
            raise HTTPException(
                501, "this dashboard runs no dry runs (start it with luthien up or luthien dashboard)"
            )
        document = await _candidate(ask)
        query = CallQuery(host=ask.host, model=ask.model, outcome=ask.outcome, since=ask.since)
        calls = await recorded_calls(storage, query, ask.limit)
        try:
            report = await dry_run.run(document, calls, ask.judge)
        except PolicyFileError as exc:
            raise HTTPException(400, str(exc)) from exc
        return DryRunAnswer(
            summary=report.summary(), affected=[DryRunCall.of(call) for call in report.calls if call.affected]
        )

    async def _candidate(ask: DryRunAsk) -> Any:
        if (ask.text is None) == (ask.version is None):
            raise HTTPException(422, "give the candidate as text or as a stored version, not both")
        if ask.version is not None:
            stored = await storage.policy_version(ask.version)
            if stored is None:
                raise HTTPException(404, str(UnknownVersion(ask.version)))
            return stored.document
        try:
            return parse_policy_yaml((ask.text or "").encode(), "document")
        except PolicyFileError as exc:
            raise HTTPException(400, str(exc)) from exc

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

    @api.get("/api/policy/shadow")
    async def shadow(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> ShadowState:
        return await shadow_state(storage, limit)

    @api.put("/api/policy/shadow")
    async def shadow_document(
        document: dict[str, Any], credential: Admin, note: Annotated[str, Query(max_length=1000)] = ""
    ) -> ShadowSetting:
        return await http_change(versions.shadow_document(document, "request body", credential.name, note))

    @api.post("/api/policy/shadow")
    async def shadow_stored(body: ShadowVersion, credential: Admin) -> ShadowSetting:
        return await http_change(versions.shadow_stored(body.version, credential.name, body.note))

    @api.delete("/api/policy/shadow")
    async def clear_shadow(
        credential: Admin, note: Annotated[str, Query(max_length=1000)] = ""
    ) -> ShadowSetting:
        return await http_change(versions.clear_shadow(credential.name, note))

    @api.post("/api/policy/shadow/promote")
    async def promote(body: Note, credential: Admin) -> PolicyActivation:
        return await http_change(versions.promote(credential.name, body.note, "api"))

    return api
