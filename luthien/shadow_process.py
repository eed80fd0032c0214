"""The shadow's replays, in a process of their own.

A replay is CPU work (normalising the call, running the policy, assembling its record: a few
milliseconds). On the control plane's event loop, the enforced call that arrives meanwhile would
wait that long; in a child process the replay takes another core's time instead, and the enforced
path pays only for handing over the record (docs/performance.md, "Shadow mode").

The child starts with the first replay, so only a deployment that sets a shadow pays for its
memory. It builds the shadow policy from the stored version's document (the parent's policy
object does not cross processes: a judge's client is bound to its event loop), and keeps one event
loop for its replays. It ends with the parent: its pipe closes when the parent exits, even by
SIGKILL.
"""

import asyncio
import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from controlplane.activity.memory import InMemoryBus
from controlplane.dry_run import CallReplay
from controlplane.policies.base import PolicyHandler
from controlplane.policy_file import policy_from_document
from controlplane.recording.records import CallRecord
from controlplane.storage.base import Storage
from luthien.dry_run import replay_call


class ProcessReplay:
    """``Replayer`` for the shadow (``controlplane.shadow``) that replays in a child process."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._documents: dict[str, dict[str, Any]] = {}  # by version: the versions are immutable
        self._pool: ProcessPoolExecutor | None = None

    async def replay(self, record: CallRecord, policy: PolicyHandler, version: str) -> CallReplay:
        document = await self._document(version)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_child_started
            )
        loop = asyncio.get_running_loop()
        try:
            answer = await loop.run_in_executor(
                self._pool, replay_in_child, record.model_dump_json(), document, version
            )
        except BrokenProcessPool:
            self._pool = None  # the child died (killed, out of memory): the next replay starts another
            raise
        return CallReplay.model_validate_json(answer)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _document(self, version: str) -> dict[str, Any]:
        if version not in self._documents:
            stored = await self._storage.policy_version(version)
            if stored is None:
                raise LookupError(f"shadow version {version} is not stored")
            self._documents = {version: stored.document}  # the shadow changes rarely: keep one
        return self._documents[version]


def _child_started() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the parent decides when the child ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Child:
    """What a child process keeps between replays."""

    loop: asyncio.AbstractEventLoop | None = None
    bus = InMemoryBus(retain=1)  # activity no one watches
    policies: dict[str, PolicyHandler] = {}


def replay_in_child(record_json: str, document: dict[str, Any], version: str) -> str:
    """Runs in the child: one recorded call replayed under the shadow version (a module-level
    function, so that the pool can name it)."""
    if _Child.loop is None:
        _Child.loop = asyncio.new_event_loop()
    policy = _Child.policies.get(version)
    if policy is None:
        policy = policy_from_document(document, f"shadow version {version}")
        _Child.policies = {version: policy}
    record = CallRecord.model_validate_json(record_json)
    replay = _Child.loop.run_until_complete(replay_call(record, policy, version, _Child.bus))
    return replay.model_dump_json()
