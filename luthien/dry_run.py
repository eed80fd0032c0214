"""A dry run: a candidate policy over recorded calls, with no provider contacted.

Each recorded call goes through the proxy's own ``Pipeline`` and ``Policing`` (the live data
path, not a copy of it): the request as the client sent it, an upstream that answers with the
provider's recorded answer (its whole body, or its stream's events as they were framed), and a
recorder that keeps the replayed ``CallRecord`` in memory. So a block, a removed tool call or a
rewrite reads exactly as it would have on a live call, diffs included.
"""

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import httpx

from addon.call_trace import OMITTED_EVENT
from addon.pipeline import Pipeline, ProxyRequest
from controlplane.activity.memory import InMemoryBus
from controlplane.dry_run import CallReplay, DryRunReport, OfflineJudge, block_rules, judge_skips
from controlplane.local import ControlPlaneLocal
from controlplane.policies.base import PolicyHandler
from controlplane.policies.tool_call_judge import OFFLINE_JUDGE
from controlplane.policy_file import policy_from_document
from controlplane.policy_versions import document_version
from controlplane.recording.records import CallOutcome, CallRecord, Record
from formats.policing import Policing

#: Calls replayed at once: the policies are async (a judge's cache lookup waits on Redis).
CONCURRENCY = 16
NEVER_SENT = "the recorded call never reached the provider, so only its request is replayed"
EVENTS_CUT = "the record kept only part of this stream's events; the replay polices those"
#: What a replayed call's record keeps of the recorded call.
_RECORDED = ("call_id", "started_at", "finished_at", "ttfb_ms", "duration_ms", "api_key_hash")
#: Request headers the pipeline would get from the client's connection, not the recorded call.
_NOT_REPLAYED_HEADERS = frozenset({"host", "content-length"})


class _Kept:
    """A recorder that keeps the one call it is given, in memory."""

    def __init__(self) -> None:
        self.record: CallRecord | None = None

    def opened(self, stand_in: CallRecord) -> None:
        pass

    async def store(self, records: Sequence[Record]) -> None:
        for record in records:
            if isinstance(record, CallRecord):
                self.record = record


class _Unanswered(httpx.ConnectError):
    """A call the provider never answered: there is nothing to replay the answer from."""


def _sse(events: Sequence[tuple[str | None, str]]) -> bytes:
    """The stream's events framed as the provider sent them (a data line per line of data)."""
    out = []
    for name, data in events:
        lines = "".join(f"data: {line}\n" for line in data.split("\n"))
        out.append((f"event: {name}\n" if name else "") + lines + "\n")
    return "".join(out).encode()


def _body(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else json.dumps(value).encode()


class _RecordedUpstream:
    """The provider, as the record says it answered."""

    def __init__(self, record: CallRecord) -> None:
        self._record = record

    async def send(
        self, method: str, host: str, path: str, headers: list[tuple[str, str]], content: bytes
    ) -> httpx.Response:
        record = self._record
        request = httpx.Request(method, f"https://{host}{path}")
        if record.original_events is not None:
            events = [event for event in record.original_events if event[0] != OMITTED_EVENT]
            sse = [("content-type", "text/event-stream")]
            return httpx.Response(record.status or 200, headers=sse, content=_sse(events), request=request)
        if not _answered(record):
            raise _Unanswered(NEVER_SENT, request=request)
        # The status recorded is the client's: the provider's only when it was the provider's error.
        status = (record.status or 200) if record.outcome is CallOutcome.PROVIDER_ERROR else 200
        body = b"" if record.original_response is None else _body(record.original_response)
        kind = "text/plain" if isinstance(record.original_response, str) else "application/json"
        return httpx.Response(status, headers=[("content-type", kind)], content=body, request=request)


def _answered(record: CallRecord) -> bool:
    """The provider answered the recorded call (a request-only endpoint's answer, a token
    count, is not kept: it was forwarded, and is not policed)."""
    kept = record.original_events is not None or record.original_response is not None
    return kept or record.final_request is not None or record.outcome is CallOutcome.PASSTHROUGH


def _request(record: CallRecord) -> ProxyRequest:
    headers = [(k, v) for k, v in record.request_headers if k.lower() not in _NOT_REPLAYED_HEADERS]
    body = b"" if record.original_request is None else _body(record.original_request)
    return ProxyRequest(record.method, record.host, record.path, headers, body)


def _notes(record: CallRecord) -> list[str]:
    notes = []
    if not _answered(record):
        notes.append(NEVER_SENT)
    if any(name == OMITTED_EVENT for name, _ in record.original_events or []):
        notes.append(EVENTS_CUT)
    return notes


class DryRun:
    """``DryRunner``: replays recorded calls under a candidate policy document."""

    async def run(
        self, policy_document: Any, calls: Sequence[CallRecord], judge: OfflineJudge = "cache"
    ) -> DryRunReport:
        policy = policy_from_document(policy_document, source="the candidate policy")
        version = document_version(policy_document, "the candidate policy")  # a stored version's id
        bus = InMemoryBus(retain=1)  # activity no one watches
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(record: CallRecord) -> CallReplay:
            async with gate:
                return await replay_call(record, policy, version, bus)

        token = OFFLINE_JUDGE.set(judge)  # the tasks below copy it: no judge is asked
        started = time.perf_counter()
        try:
            replays = await asyncio.gather(*(one(record) for record in calls))
        finally:
            OFFLINE_JUDGE.reset(token)
        return DryRunReport(
            policy_version=version, judge=judge, calls=replays, seconds=time.perf_counter() - started
        )


async def replay_call(
    record: CallRecord, policy: PolicyHandler, version: str, bus: InMemoryBus
) -> CallReplay:
    """``record`` through the live pipeline under ``policy``; the provider's part is the record's."""
    kept = _Kept()
    control_plane = ControlPlaneLocal(policy, bus=bus, recorder=kept, policy_version=version)
    pipeline = Pipeline(Policing(control_plane), _RecordedUpstream(record))
    response = await pipeline.handle(_request(record))
    async for _ in response.body:  # as a client reads it: the stream is policed as it goes
        pass
    assert kept.record is not None  # the pipeline records every call it answers
    # Who called and when are the recorded call's (its credential is only hashed in the record,
    # so the replay's request had none); what the policy made of it is the replay's.
    replayed = kept.record.model_copy(update={name: getattr(record, name) for name in _RECORDED})
    return CallReplay(
        call_id=record.call_id,
        recorded_outcome=record.outcome,
        recorded_block_kind=record.block_kind,
        outcome=replayed.outcome,
        block_kind=replayed.block_kind,
        request_modified=replayed.request_modified,
        response_modified=replayed.response_modified,
        rules=block_rules(replayed.decisions),
        judge_skipped=judge_skips(replayed.decisions),
        notes=_notes(record),
        replayed=replayed,
    )
