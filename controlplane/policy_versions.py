"""Policy versions: which source holds the truth, how a version is validated, stored and
activated, and how every control-plane replica comes to enforce the active one.

- ``file`` source (GitOps, a ConfigMap): each replica polls its policy file; a changed file that
  loads is enforced and recorded as a version (once, whichever replica sees it first). Writes
  through the API are refused (``FileIsTheSource``): the next file change would undo them.
- ``database`` source (the API, ``luthien policy activate``): the last activation in the database
  is the policy. Each replica reads it when nudged (``controlplane.policy_nudge``) and at a
  periodic check, so every replica enforces a new version within about a second.

The shadow slot (``controlplane.shadow``) is kept the same way: set from a document or a stored
version, cleared, or promoted (its version activated and the slot cleared in one transaction),
each change audited and nudged, and followed by every replica at the same checks. A shadow never
enforces, so it may be set while the file is the source; promoting it is an activation, refused
then like any other.

A broken document is never stored nor activated: ``PolicyFileError`` says what is wrong, where.
Nor is a credential: a document that would be the truth (the API's, the CLI's, a file seeding the
database) is refused while it holds one (an inline ``api_key``); a file's version is recorded with
its credentials redacted, the file itself staying the truth.
"""

import asyncio
import hashlib
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from controlplane.credentials import REDACTED, credential_key, scrub_body
from controlplane.local import ControlPlaneLocal
from controlplane.policies.base import PolicyHandler
from controlplane.policies.noop import NoOpPolicy
from controlplane.policy_file import (
    PolicyFileError,
    parse_policy_yaml,
    policy_from_document,
    read_policy_bytes,
    read_policy_document,
)
from controlplane.policy_nudge import PolicyNudge
from controlplane.shadow import ShadowRunner
from controlplane.storage.base import (
    ActivePolicy,
    PolicyActivation,
    PolicySourceKind,
    PolicyVersion,
    ShadowSetting,
    Storage,
    StorageUnavailable,
)

log = logging.getLogger(__name__)

PolicySource = Literal["file", "database"]
#: How often the file is read, and the database when no nudge can arrive.
CHECK_SECONDS = 1.0
#: The database check while nudges arrive: a safety net for a nudge lost in a reconnection.
NUDGED_CHECK_SECONDS = 15.0


class FileIsTheSource(Exception):
    """A write through the API or CLI while the policy file is the source of truth."""

    def __init__(self, path: Path | None) -> None:
        where = f"the policy file {path}" if path else "a policy file"
        super().__init__(
            f"the policy's source of truth is {where} (--policy-source file): change the file, "
            "or run the control planes with --policy-source database to manage versions through the API"
        )


class UnknownVersion(LookupError):
    def __init__(self, version: str) -> None:
        super().__init__(f"no stored policy version {version!r}")


class NoShadow(LookupError):
    def __init__(self) -> None:
        super().__init__("no shadow policy is set: there is nothing to promote")


def document_version(document: dict[str, Any], where: str) -> str:
    """A document's version: the start of the SHA-256 of its canonical JSON (so a file's
    comments and layout do not make a new version)."""
    try:
        canonical = json.dumps(document, sort_keys=True)
    except (TypeError, ValueError) as exc:  # YAML can hold what JSON cannot: a date, a set
        raise PolicyFileError(
            f"{where}: holds a value that cannot be stored as JSON (quote it): {exc}"
        ) from exc
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def validated(document: Any, where: str, by: str, note: str) -> tuple[PolicyHandler, PolicyVersion]:
    """The policy a document builds and the version to store it as (its credentials redacted);
    ``PolicyFileError`` when it is not a policy that can run."""
    policy = policy_from_document(document, where)
    version = PolicyVersion(
        version=document_version(document, where),
        document=scrub_body(document),
        created_at=datetime.now(UTC),
        created_by=by,
        note=note,
    )
    return policy, version


def without_credentials(document: Any, where: str) -> None:
    """Refuses a document that would be stored as the truth while it holds a credential: stored, it
    would be readable by every dashboard user; redacted, it would no longer work."""
    found = _credential_paths(document, scrub_body(document), "")
    if found:
        raise PolicyFileError(
            *(
                f"{where}: {path}: holds a credential, which would be stored with the version and "
                "shown on the dashboard; give it by environment variable instead (for a judge: api_key_env)"
                for path in found
            )
        )


def _credential_paths(given: Any, scrubbed: Any, at: str) -> list[str]:
    if isinstance(given, dict) and isinstance(scrubbed, dict):
        return [
            p for k in given for p in _credential_paths(given[k], scrubbed[k], f"{at}.{k}" if at else str(k))
        ]
    if isinstance(given, list) and isinstance(scrubbed, list):
        return [
            p
            for i, (g, c) in enumerate(zip(given, scrubbed, strict=True))
            for p in _credential_paths(g, c, f"{at}[{i}]")
        ]
    return [at] if given != scrubbed else []


def _redacted(node: Any) -> bool:
    """Whether a credential of ``node`` was redacted when it was recorded."""
    if isinstance(node, dict):
        return any(
            (value == REDACTED and credential_key(key)) or _redacted(value) for key, value in node.items()
        )
    return isinstance(node, list) and any(_redacted(item) for item in node)


def file_credential(path: Path) -> str:
    return f"policy file {path.name}"


class PolicyVersions:
    """Activations on behalf of a credential (the API, the CLI, the dashboard), refused while the
    file is the source. ``keeper``, in a process that enforces policies, applies the version at
    once; other replicas are nudged."""

    def __init__(
        self,
        storage: Storage,
        nudge: PolicyNudge,
        source: PolicySource,
        path: Path | None = None,
        keeper: "PolicyKeeper | None" = None,
    ) -> None:
        self.storage, self.nudge, self.source, self.path, self.keeper = storage, nudge, source, path, keeper

    async def activate_document(
        self, document: Any, where: str, by: str, note: str, source: PolicySourceKind
    ) -> PolicyActivation:
        """``where`` names the document in errors (a file's path, "request body")."""
        policy, version = self.check(document, where, by, note)
        return await self._activate(policy, version, by, note, source)

    def check(
        self, document: Any, where: str, by: str, note: str = ""
    ) -> tuple[PolicyHandler, PolicyVersion]:
        """What ``activate_document`` would activate, without activating it: refused in file mode,
        for a document that is not a policy that runs, or one that holds a credential."""
        self._refuse_in_file_mode()
        without_credentials(document, where)
        return validated(document, where, by, note)

    async def activate_stored(
        self, version: str, by: str, note: str, source: PolicySourceKind
    ) -> PolicyActivation:
        """Activates a version stored before: a rollback, or a roll forward again."""
        self._refuse_in_file_mode()
        policy, stored = await self._stored(version)
        return await self._activate(policy, stored, by, note, source)

    async def shadow_document(self, document: Any, where: str, by: str, note: str) -> ShadowSetting:
        """Stores ``document`` as a version and makes it the shadow (allowed whatever the source:
        a shadow never enforces)."""
        without_credentials(document, where)
        policy, version = validated(document, where, by, note)
        return await self._shadow(policy, version, by, note)

    async def shadow_stored(self, version: str, by: str, note: str) -> ShadowSetting:
        policy, stored = await self._stored(version)
        return await self._shadow(policy, stored, by, note)

    async def clear_shadow(self, by: str, note: str) -> ShadowSetting:
        return await self._shadow(None, None, by, note)

    async def promote(self, by: str, note: str, source: PolicySourceKind) -> PolicyActivation:
        """Activates the shadow version and clears the shadow, in one audited change."""
        self._refuse_in_file_mode()
        shadow = await self.storage.shadow_policy()
        if shadow is None or shadow.version is None:
            raise NoShadow()
        # Built before anything changes: a promotion that cannot run here changes nothing.
        policy, _ = await self._stored(shadow.version.version)
        activation = await self.storage.promote_shadow(by, source, note)
        if activation is None:  # cleared meanwhile
            raise NoShadow()
        log.info("shadow version %s promoted by %s (%s)", activation.version, by, source)
        if self.keeper is not None:
            self.keeper.enforce_activation(policy, activation)
            if self.keeper.shadow is not None:
                self.keeper.shadow.follow(await self.storage.shadow_policy())
        await self.nudge.publish(activation.version)
        return activation

    async def _stored(self, version: str) -> tuple[PolicyHandler, PolicyVersion]:
        """A stored version and the policy it builds here."""
        stored = await self.storage.policy_version(version)
        if stored is None:
            raise UnknownVersion(version)
        if _redacted(stored.document):
            raise PolicyFileError(
                f"version {version}: recorded from a policy file with its credentials redacted, so it "
                "cannot run from the database; use a document that names them by environment variable"
            )
        # Built again here: a stored version may need what this process lacks (an env var, a module).
        return policy_from_document(stored.document, f"version {version}"), stored

    async def _shadow(
        self, policy: PolicyHandler | None, version: PolicyVersion | None, by: str, note: str
    ) -> ShadowSetting:
        setting = await self.storage.set_shadow(version, by, note)
        log.info("shadow policy set to %s by %s", setting.version or "none", by)
        if self.keeper is not None and self.keeper.shadow is not None:
            self.keeper.shadow.observe(policy, setting.version, setting.seq)
        await self.nudge.publish(f"shadow {setting.version}")
        return setting

    def _refuse_in_file_mode(self) -> None:
        if self.source == "file":
            raise FileIsTheSource(self.path)

    async def _activate(
        self, policy: PolicyHandler, version: PolicyVersion, by: str, note: str, source: PolicySourceKind
    ) -> PolicyActivation:
        activation = await self.storage.activate_policy(version, by, source, note, unless_active=False)
        log.info("policy version %s activated by %s (%s)", version.version, by, source)
        if self.keeper is not None:
            self.keeper.enforce_activation(policy, activation)
        await self.nudge.publish(version.version)
        return activation


class PolicyKeeper:
    """Keeps a control plane on the active version of its source."""

    def __init__(
        self,
        control_plane: ControlPlaneLocal,
        storage: Storage,
        nudge: PolicyNudge,
        source: PolicySource,
        path: Path | None,
        shadow: ShadowRunner | None = None,
    ) -> None:
        """``shadow``, when this process runs one, is kept on the shadow slot's version."""
        self.control_plane, self.storage, self.nudge, self.source, self.path = (
            control_plane,
            storage,
            nudge,
            source,
            path,
        )
        self.shadow = shadow
        self._file_bytes: bytes | None = None
        self._unrecorded: PolicyVersion | None = None  # a file version the database has not taken yet
        self._refused: str | None = None  # a stored version that does not build here, reported once
        self._seq = 0  # the activation enforced last (database source)
        self._migrated = False
        self._unreadable = False  # the database failed the last check (reported once per outage)

    def enforce(self, policy: PolicyHandler, version: str | None) -> None:
        """New calls get ``policy``; streams already running keep theirs."""
        if version != self.control_plane.policy_version:
            self.control_plane.replace_policy(policy, version)
            log.info("policy now %s version %s", type(policy).__name__, version)

    def enforce_activation(self, policy: PolicyHandler, activation: PolicyActivation) -> None:
        """Enforces an activation unless a later one is enforced already: a check that read the
        database just before this activation must not take the replica back."""
        if activation.seq >= self._seq:
            self._seq = activation.seq
            self.enforce(policy, activation.version)

    async def start(self) -> str:
        """Puts the control plane on its source's active version; returns what to say at start-up.
        Raises ``PolicyFileError`` for a file source whose file is broken."""
        if self.source == "file":
            assert self.path is not None, "a file source needs a file"
            self._file_bytes = read_policy_bytes(self.path)
            document = parse_policy_yaml(self._file_bytes, str(self.path))
            policy, version = validated(document, str(self.path), file_credential(self.path), "")
            self.enforce(policy, version.version)
            self._unrecorded = version
            await self._record_file_version()
            await self._follow_shadow()
            return (
                f"Policy source: the file {self.path} (API writes are refused); "
                f"{type(policy).__name__} version {version.version}"
            )
        active = await self._active_waiting()
        seeded = active is None and self.path is not None
        if seeded:
            assert self.path is not None
            # An empty database takes the file as its first version; from then on the database rules.
            document = read_policy_document(self.path)
            without_credentials(document, str(self.path))
            _, seed = validated(document, str(self.path), file_credential(self.path), "seed")
            await self.storage.activate_policy(seed, seed.created_by, "file", "seed", unless_active=True)
            active = await self.storage.active_policy()
        await self._follow_shadow()
        if active is None:
            self.enforce(NoOpPolicy(), None)
            return "Policy source: the database; no version activated yet (NoOpPolicy)"
        self.follow(active)
        activation = active.activation
        said = (
            f"Policy source: the database; version {activation.version} "
            f"activated by {activation.activated_by} at {activation.activated_at:%Y-%m-%d %H:%M:%S} UTC"
        )
        if self.path is not None and not seeded:
            said += f" (the --policy file {self.path} only seeds an empty database)"
        return said

    async def run(self) -> None:
        """Follows the source until cancelled."""
        if self.source == "file":
            while True:
                await asyncio.sleep(CHECK_SECONDS)
                self._check_file()
                await self._record_file_version()
                await self._follow_shadow()
        self.nudge.start()
        while True:
            await self.nudge.wait(NUDGED_CHECK_SECONDS if self.nudge.listening else CHECK_SECONDS)
            try:
                active = await self._read_active()
            except StorageUnavailable as exc:
                if not self._unreadable:
                    log.warning(
                        "cannot read the active policy version (%s); keeping %s until the database answers",
                        exc,
                        self.control_plane.policy_version,
                    )
                self._unreadable = True
                continue
            if self._unreadable:
                log.info("the active policy version can be read again")
            self._unreadable = False
            if active is not None:
                self.follow(active)
            await self._follow_shadow()

    async def _follow_shadow(self) -> None:
        """Puts the shadow on the slot's version; while the database cannot say, the shadow
        observed last goes on observing (it changes nothing a client gets)."""
        if self.shadow is None:
            return
        try:
            await self._ready()
            self.shadow.follow(await self.storage.shadow_policy())
        except StorageUnavailable as exc:
            log.debug("cannot read the shadow policy now: %s", exc)

    async def _ready(self) -> None:
        """Migrates once: a database that was down at start-up may not have the tables yet."""
        if not self._migrated:
            await self.storage.migrate()
            self._migrated = True

    async def _read_active(self) -> ActivePolicy | None:
        await self._ready()
        return await self.storage.active_policy()

    async def _active_waiting(self) -> ActivePolicy | None:
        """The active version; while the database cannot say, start-up waits (proxies fail
        closed meanwhile) rather than enforce a policy that may not be the active one."""
        while True:
            try:
                return await self._read_active()
            except StorageUnavailable as exc:
                log.warning("waiting for the database to read the active policy version: %s", exc)
                await asyncio.sleep(CHECK_SECONDS)

    def follow(self, active: ActivePolicy) -> None:
        """Enforces the active version as read from the database, unless the read is older than
        what this replica enforces (a check racing an activation made here)."""
        activation, version = active.activation, active.version
        if activation.seq < self._seq:  # read before an activation this replica made since
            return
        if version.version in (self.control_plane.policy_version, self._refused):
            self._seq = activation.seq
            return
        try:
            policy = policy_from_document(version.document, f"version {version.version}")
        except PolicyFileError as exc:
            self._refused = version.version
            log.error(
                "the active policy version does not build here; keeping %s: %s",
                self.control_plane.policy_version,
                exc,
            )
            return
        self.enforce_activation(policy, activation)

    def _check_file(self) -> None:
        assert self.path is not None
        try:
            content = self.path.read_bytes()
        except OSError as exc:
            log.warning("cannot read the policy file %s: %s", self.path, exc)
            return
        if content == self._file_bytes:
            return
        self._file_bytes = content
        try:
            document = parse_policy_yaml(content, str(self.path))
            policy, version = validated(document, str(self.path), file_credential(self.path), "")
        except PolicyFileError as exc:
            log.error(
                "policy file changed but is invalid; keeping version %s: %s",
                self.control_plane.policy_version,
                exc,
            )
            return
        self.enforce(policy, version.version)
        self._unrecorded = version

    async def _record_file_version(self) -> None:
        """Records the file's version; while the database is away, enforcement goes on and the
        recording is tried again at the next check."""
        if self._unrecorded is None:
            return
        version = self._unrecorded
        try:
            await self._ready()
            await self.storage.activate_policy(version, version.created_by, "file", "", unless_active=True)
        except StorageUnavailable as exc:
            if not self._unreadable:
                log.warning(
                    "cannot record policy version %s yet (%s): trying every second", version.version, exc
                )
            self._unreadable = True
            return
        self._unreadable = False
        if self._unrecorded is version:
            self._unrecorded = None
