"""ControlPlaneLocal: the ControlPlaneService running in the proxy's own process."""

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from controlplane.activity.bus import ActivityBus
from controlplane.activity.memory import InMemoryBus
from controlplane.chunk_views import chunk_data, chunk_model, field_of
from controlplane.chunks import StreamChunk
from controlplane.credentials import scrub_strings
from controlplane.llm import ModelResponse, ModelResponseStream
from controlplane.models import (
    ActivityEvent,
    ActivityType,
    ChunkVerdict,
    Inspection,
    NormalizedRequest,
    PolicyResult,
    RequestMetadata,
    StreamingContext,
)
from controlplane.policies.base import ChunkResult, PolicyHandler
from controlplane.policies.chunks import text_chunk
from controlplane.recording.records import CallRecord, DebugEvent, Decision, Record
from controlplane.recording.redact import redact_record
from controlplane.recording.writer import Recorder

log = logging.getLogger(__name__)

_STAGES: dict[ActivityType, Literal["request", "response", "stream"]] = {
    ActivityType.REQUEST_POLICY: "request",
    ActivityType.RESPONSE_POLICY: "response",
    ActivityType.STREAM_POLICY: "stream",
}


@dataclass
class _Stream:
    context: StreamingContext
    policy: PolicyHandler  # the policy the stream started with, even after a reload
    # Choices after the first of an `n > 1` stream: each runs the policy with state of its own.
    choices: dict[int, StreamingContext] = field(default_factory=dict)

    def context_for(self, choice: int) -> StreamingContext:
        if choice == 0:
            return self.context
        if choice not in self.choices:
            self.choices[choice] = self.context.model_copy(update={"policy_state": {}})
        return self.choices[choice]


def _choice_of(chunk: ModelResponseStream) -> int:
    return field_of(chunk.choices[0], "index") if chunk.choices else 0


def _as_choice(chunk: ModelResponseStream | None, choice: int) -> ModelResponseStream | None:
    """``chunk`` as the ``choice``-th choice: policies are written for one choice, the first."""
    if chunk is None or all(field_of(c, "index") == choice for c in chunk.choices):
        return chunk
    moved = chunk.model_copy(deep=True)
    for item in moved.choices:
        item.index = choice
    return moved


def _plain(chunk: ModelResponseStream | None) -> StreamChunk | None:
    return chunk_data(chunk) if chunk is not None else None


def _verdict(
    result: ChunkResult, value: StreamChunk | None, answers: int | None, unchanged: bool
) -> ChunkVerdict:
    """The policy's result as the data plane gets it: its chunk as plain data, or none when it
    gives back the chunk it answers as it was."""
    return ChunkVerdict(
        value=value,
        allowed=result.allowed,
        reason=result.reason,
        metadata=result.metadata,
        policy_version=result.policy_version,
        unpoliced=result.unpoliced,
        answers=answers,
        unchanged=unchanged,
    )


class ControlPlaneLocal:
    """Runs the policy in-process, publishes activity on ``bus`` and hands finished calls to
    ``recorder`` (none: calls are not recorded).

    A policy that raises fails closed: the request is blocked, or the stream is ended with an
    explanation, and the error is published as activity.
    """

    def __init__(
        self,
        policy: PolicyHandler,
        bus: ActivityBus | None = None,
        recorder: Recorder | None = None,
        policy_version: str | None = None,
    ) -> None:
        self.policy = policy
        self.policy_version = policy_version
        self.bus: ActivityBus = bus if bus is not None else InMemoryBus()
        self._recorder = recorder
        self._streams: dict[str, _Stream] = {}

    @property
    def open_streams(self) -> int:
        """Streams whose policy state is held; each is released by close_streaming_context."""
        return len(self._streams)

    def replace_policy(self, policy: PolicyHandler, version: str | None) -> None:
        """New calls get ``policy``; streams already running keep the one they started with."""
        self.policy, self.policy_version = policy, version

    def inspection(self, metadata: RequestMetadata) -> Inspection:
        policy = self.policy
        return Inspection(
            requests=policy.inspects_requests(metadata),
            responses=policy.inspects_responses(metadata),
            streams=policy.inspects_streams(metadata),
            policy_version=self.policy_version,
        )

    async def apply_request_policies(
        self, request_data: NormalizedRequest, metadata: RequestMetadata
    ) -> PolicyResult[NormalizedRequest]:
        policy, version = self.policy, self.policy_version
        decision = policy.apply_request_policies(request_data, metadata)
        return await self._decide(policy, version, metadata, ActivityType.REQUEST_POLICY, decision)

    async def apply_response_policy(
        self, response: ModelResponse, metadata: RequestMetadata
    ) -> PolicyResult[ModelResponse]:
        policy, version = self.policy, self.policy_version
        decision = policy.apply_response_policy(response, metadata)
        return await self._decide(policy, version, metadata, ActivityType.RESPONSE_POLICY, decision)

    async def create_streaming_context(
        self, request_data: NormalizedRequest, metadata: RequestMetadata
    ) -> StreamingContext:
        context = StreamingContext(
            stream_id=uuid.uuid4().hex,
            call_id=metadata.call_id,
            metadata=metadata,
            request_data=request_data,
            policy_version=self.policy_version,
            inspects_chunks=self.policy.inspects_streams(metadata),
        )
        if context.inspects_chunks:  # a stream no policy looks at holds no state here
            self._streams[context.stream_id] = _Stream(context, self.policy)
        return context

    async def process_streaming_chunks(
        self, chunks: Sequence[StreamChunk], context: StreamingContext
    ) -> AsyncIterator[ChunkVerdict]:
        stream = self._streams[context.stream_id]
        for index, data in enumerate(chunks):
            chunk = chunk_model(data)  # what the policy reads, built only now
            # What the data plane would write for the chunk, taken before the policy may change it
            # in place: a result that would be written alike is the chunk given back unchanged.
            given = chunk_data(chunk)
            choice = _choice_of(chunk)
            results = stream.policy.apply_streaming_chunk_policy(
                _as_choice(chunk, 0) or chunk, stream.context_for(choice)
            )
            async for result in self._guarded(results, stream, chunk):
                value = _plain(_as_choice(result.value, choice))
                unchanged = value == given
                yield _verdict(result, None if unchanged else value, index, unchanged)
                if not result.allowed:
                    return

    async def close_streaming_context(self, context: StreamingContext) -> AsyncIterator[ChunkVerdict]:
        stream = self._streams.pop(context.stream_id, None)
        if stream is None:
            return
        for choice in (0, *sorted(stream.choices)):
            ended = stream.policy.on_stream_end(stream.context_for(choice))
            async for result in self._guarded(ended, stream, None):
                yield _verdict(result, _plain(_as_choice(result.value, choice)), None, False)
                if not result.allowed:
                    return

    async def publish_activity(self, event: ActivityEvent) -> None:
        """Publishes ``event`` (this control plane's own, the pipeline's, or a sidecar's) with the
        policy's recording redaction applied to every string of its data, as records get it. The
        event has already scrubbed credential shapes itself, whatever the policy."""
        await self.bus.publish(self._redacted(event))

    def _redacted(self, event: ActivityEvent) -> ActivityEvent:
        policy = self.policy
        if not policy.redacts_recordings:
            return event
        try:
            data = scrub_strings(event.data, policy.redact_for_recording)
        except Exception:
            # Fail closed: what the policy could not redact is not published.
            log.exception("policy %s failed to redact an activity event", type(policy).__name__)
            data = {"reason": "activity details withheld: the policy's redaction failed"}
        return event.model_copy(update={"data": data})

    async def log_debug_event(self, debug_type: str, payload: dict[str, Any]) -> None:
        call_id = payload.get("call_id")
        await self.record(
            [
                DebugEvent(
                    call_id=call_id if isinstance(call_id, str) else None, type=debug_type, payload=payload
                )
            ]
        )

    def record_call_started(self, stand_in: CallRecord) -> None:
        if self._recorder is not None:
            self._recorder.opened(self._for_recording(stand_in))

    async def record_call(self, record: CallRecord) -> None:
        await self.record([record])

    async def record(self, records: Sequence[Record]) -> None:
        """Redacts as the policy asks and journals for storage (calls or debug events)."""
        if self._recorder is not None:
            await self._recorder.store([self._for_recording(r) for r in records])

    def _for_recording[R: Record](self, record: R) -> R:
        policy = self.policy
        return redact_record(record, policy.redact_for_recording) if policy.redacts_recordings else record

    async def _decide[T](
        self,
        policy: PolicyHandler,
        version: str | None,
        metadata: RequestMetadata,
        kind: ActivityType,
        decision: Awaitable[PolicyResult[T]],
    ) -> PolicyResult[T]:
        try:
            result = await decision
        except Exception as exc:
            result = await self._policy_failed(policy, metadata, kind, exc)
        result.policy_version = version
        await self._record_decision(metadata, kind, result)
        return result

    async def _guarded(
        self,
        results: AsyncIterator[ChunkResult],
        stream: _Stream,
        chunk: ModelResponseStream | None,
    ) -> AsyncIterator[ChunkResult]:
        """Records the policy's stream decisions; if it raises, ends the stream, saying why."""
        metadata = stream.context.metadata
        try:
            async for result in results:
                if result.reason is not None or not result.allowed:
                    await self._record_decision(metadata, ActivityType.STREAM_POLICY, result)
                yield result
        except Exception as exc:
            failure = await self._policy_failed(stream.policy, metadata, ActivityType.STREAM_POLICY, exc)
            if chunk is not None:
                failure.value = text_chunk(chunk, f"\n\n[Luthien] Stream ended: {failure.reason}.")
            yield failure

    async def _policy_failed(
        self, policy: PolicyHandler, metadata: RequestMetadata, stage: ActivityType, exc: Exception
    ) -> PolicyResult[Any]:
        log.exception("policy %s failed in %s", type(policy).__name__, stage.value)
        reason = f"policy error in {type(policy).__name__} ({stage.value}): {type(exc).__name__}"
        await self._publish(metadata, ActivityType.ERROR, {"reason": reason})
        return PolicyResult.block(reason)

    async def _record_decision(
        self, metadata: RequestMetadata, kind: ActivityType, result: PolicyResult[Any]
    ) -> None:
        # As the call's record will keep it: a removed tool call is a block, not "allowed".
        decision = Decision(
            stage=_STAGES[kind], allowed=result.allowed, reason=result.reason, metadata=result.metadata
        )
        data = {"allowed": decision.allowed, "block": decision.block, "reason": result.reason}
        await self._publish(metadata, kind, {**data, **result.metadata})

    async def _publish(self, metadata: RequestMetadata, kind: ActivityType, data: dict[str, Any]) -> None:
        event = ActivityEvent(
            call_id=metadata.call_id, type=kind, host=metadata.host, model=metadata.model, data=data
        )
        await self.publish_activity(event)
