"""Shadow mode: a second policy observes live traffic and never touches it.

Once a call's record is handed to the recorder (the call is over: the client has its answer),
it is offered to the ``ShadowRunner``, which replays it under the shadow policy in the
background (the dry run's machinery: the request as the client sent it, the provider's answer as
recorded) and stores what the shadow would have done as the call's ``ShadowDecision``. Nothing
on the enforced path waits on it: offering is a ``put_nowait`` on a bounded queue, and a full
queue drops the call (counted, and marked "skipped: busy" on the call), so the enforced path
never waits and its memory stays bounded. The replays share the control plane's event loop and
CPU with the enforced calls: their cost shows as the CPU a replay takes beside the next call
(docs/performance.md, "Shadow mode").

What the shadow sees is the call as recorded: the client's request, and the provider's answer
to the request the enforced policy sent (a rewritten one, if it rewrote it; none, if it blocked
it, so the shadow then judges only the request). An LLM judge in the shadow is asked for real:
the traffic is live and the replay is off the path.
"""

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from controlplane.dry_run import CallReplay
from controlplane.policies.base import PolicyHandler
from controlplane.policy_file import PolicyFileError, policy_from_document
from controlplane.recording.records import CallRecord, Record
from controlplane.recording.writer import Recorder
from controlplane.storage.base import ShadowDecision, ShadowOutcome, ShadowPolicy, Storage, StorageUnavailable

log = logging.getLogger(__name__)

#: Calls waiting for the shadow; past it a call is skipped rather than held.
QUEUE_LIMIT = 256
#: Calls replayed at once (a judge's answer takes a while).
WORKERS = 2
BUSY = "shadow skipped: busy (its queue was full when the call ended)"
#: Skipped calls remembered until a worker stores their mark; past it the oldest go unmarked
#: (still counted): ids only, so the bound holds however long the shadow stays behind.
BUSY_MARKS = 10_000


class Replayer(Protocol):
    """Replays one recorded call under a policy, contacting no provider (``luthien.dry_run``)."""

    async def replay(self, record: CallRecord, policy: PolicyHandler, version: str) -> CallReplay: ...


def shadow_decision(replay: CallReplay, version: str) -> ShadowDecision:
    outcome: ShadowOutcome = (
        "would_block" if replay.blocked else "would_modify" if replay.modified else "same"
    )
    return ShadowDecision(
        call_id=replay.call_id,
        shadow_version=version,
        decided_at=datetime.now(UTC),
        outcome=outcome,
        block_kind=replay.block_kind,
        rules=replay.rules,
        decisions=replay.replayed.decisions,
        notes=replay.notes,
        replayed=replay.replayed if replay.affected else None,
    )


def skipped(call_id: str, version: str) -> ShadowDecision:
    return ShadowDecision(
        call_id=call_id, shadow_version=version, decided_at=datetime.now(UTC), outcome="skipped", notes=[BUSY]
    )


class ShadowRunner:
    """Replays finished calls under the shadow policy, if one is set, and stores the outcomes."""

    def __init__(self, storage: Storage, replayer: Replayer, queue_limit: int = QUEUE_LIMIT) -> None:
        self._storage, self._replayer = storage, replayer
        self._queue: asyncio.Queue[tuple[CallRecord, PolicyHandler, str]] = asyncio.Queue(queue_limit)
        self._busy: deque[tuple[str, str]] = deque(maxlen=BUSY_MARKS)  # skipped: (call, version)
        self._tasks: list[asyncio.Task[None]] = []
        self.policy: PolicyHandler | None = None
        self.version: str | None = None
        self._seq = 0  # the change of the slot applied last
        self._refused: str | None = None  # a version that does not build here, reported once
        self.replayed = self.skipped = self.failed = 0

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def observe(self, policy: PolicyHandler | None, version: str | None, seq: int) -> None:
        """Calls that end from now on are replayed under ``policy`` (None: none is), unless a
        later change of the slot is applied already."""
        if seq < self._seq:
            return
        self._seq = seq
        if policy is None:
            version = None
        if version != self.version:
            self.policy, self.version = policy, version
            log.info("shadow policy now %s", f"version {version}" if version else "none")

    def follow(self, shadow: ShadowPolicy | None) -> None:
        """Applies the slot as read from the database."""
        if shadow is None:
            return
        stored, seq = shadow.version, shadow.setting.seq
        if stored is None or stored.version == self._refused:
            self.observe(None, None, seq)
        elif stored.version == self.version:
            self.observe(self.policy, self.version, seq)
        else:
            self.observe(self._built(stored.document, stored.version), stored.version, seq)

    def _built(self, document: dict[str, Any], version: str) -> PolicyHandler | None:
        try:
            return policy_from_document(document, f"shadow version {version}")
        except PolicyFileError as exc:
            self._refused = version
            log.error("the shadow policy version does not build here; no shadow runs: %s", exc)
            return None

    def offer(self, records: Sequence[Record]) -> None:
        """Never waits: a call the queue has no room for is skipped."""
        policy, version = self.policy, self.version
        if policy is None or version is None:
            return
        for record in records:
            if not isinstance(record, CallRecord):
                continue
            try:
                self._queue.put_nowait((record, policy, version))
            except asyncio.QueueFull:
                self.skipped += 1
                self._busy.append((record.call_id, version))

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"shadow-{n}") for n in range(WORKERS)]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def idle(self) -> None:
        """Returns once every call offered so far is decided (for an orderly stop)."""
        await self._queue.join()

    async def _work(self) -> None:
        while True:
            record, policy, version = await self._queue.get()
            try:
                decisions = [await self._decide(record, policy, version)]
                while self._busy:
                    decisions.append(skipped(*self._busy.popleft()))
                await self._storage.write_shadow_decisions(decisions)
                self.replayed += 1
            except StorageUnavailable as exc:
                self.failed += 1
                log.warning("shadow decision of call %s not stored: %s", record.call_id, exc)
            except Exception:
                self.failed += 1
                log.exception("the shadow replay of call %s failed", record.call_id)
            finally:
                self._queue.task_done()

    async def _decide(self, record: CallRecord, policy: PolicyHandler, version: str) -> ShadowDecision:
        return shadow_decision(await self._replayer.replay(record, policy, version), version)


class ShadowedRecorder:
    """A ``Recorder`` that offers each call, once journalled, to the shadow."""

    def __init__(self, recorder: Recorder, shadow: ShadowRunner) -> None:
        self._recorder, self._shadow = recorder, shadow

    def opened(self, stand_in: CallRecord) -> None:
        self._recorder.opened(stand_in)

    async def store(self, records: Sequence[Record]) -> None:
        await self._recorder.store(records)
        self._shadow.offer(records)
