"""Hot policy reload: a changed policy file applies to new calls without a restart."""

import asyncio
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from controlplane.local import ControlPlaneLocal
from controlplane.policy_file import PolicyFileError, load_policy_file

log = logging.getLogger(__name__)


def file_version(path: Path) -> str:
    """A policy file's version: the start of its content's SHA-256 (the same file, the same one)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def document_version(document: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:12]


async def watch_policy_file(path: Path, control_plane: ControlPlaneLocal, interval: float = 1.0) -> None:
    """Polls ``path``; when its content changes and still loads, it becomes the policy for new
    calls. A broken file is reported and the policy in force stays."""
    seen = control_plane.policy_version
    while True:
        await asyncio.sleep(interval)
        try:
            version = file_version(path)
        except OSError as exc:
            log.warning("cannot read the policy file %s: %s", path, exc)
            continue
        if version == seen:
            continue
        seen = version
        try:
            policy = load_policy_file(path)
        except PolicyFileError as exc:
            log.error(
                "policy file changed but is invalid; keeping version %s: %s",
                control_plane.policy_version,
                exc,
            )
            continue
        control_plane.replace_policy(policy, version)
        log.info("policy reloaded: %s version %s", type(policy).__name__, version)
