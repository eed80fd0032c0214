"""ControlPlaneLocal: the ControlPlaneService running in the proxy's own process."""

import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from controlplane.llm import ModelResponse, ModelResponseStream
from controlplane.models import (
    ActivityEvent,
    ActivityType,
    ChunkResult,
    NormalizedRequest,
    PolicyResult,
    RequestMetadata,
    StreamingContext,
)
from controlplane.policies.base import PolicyHandler
from controlplane.policies.chunks import text_chunk

log = logging.getLogger(__name__)

_RECENT_EVENTS = 1000


class ControlPlaneLocal:
    """Runs the policy in-process and keeps recent activity in memory.

    A policy that raises fails closed: the request is blocked, or the stream is ended with an
    explanation, and the error is published as activity.
    """

    def __init__(self, policy: PolicyHandler) -> None:
        self.policy = policy
        self.recent_activity: deque[ActivityEvent] = deque(maxlen=_RECENT_EVENTS)
        self._streams: dict[str, StreamingContext] = {}

    async def apply_request_policies(
        self, request_data: NormalizedRequest, metadata: RequestMetadata
    ) -> PolicyResult[NormalizedRequest]:
        decision = self.policy.apply_request_policies(request_data, metadata)
        return await self._decide(metadata.call_id, ActivityType.REQUEST_POLICY, decision)

    async def apply_response_policy(
        self, response: ModelResponse, metadata: RequestMetadata
    ) -> PolicyResult[ModelResponse]:
        decision = self.policy.apply_response_policy(response, metadata)
        return await self._decide(metadata.call_id, ActivityType.RESPONSE_POLICY, decision)

    async def create_streaming_context(
        self, request_data: NormalizedRequest, metadata: RequestMetadata
    ) -> StreamingContext:
        context = StreamingContext(
            stream_id=uuid.uuid4().hex,
            call_id=metadata.call_id,
            metadata=metadata,
            request_data=request_data,
        )
        self._streams[context.stream_id] = context
        return context

    async def process_streaming_chunk(
        self, chunk: ModelResponseStream, context: StreamingContext
    ) -> AsyncIterator[ChunkResult]:
        own = self._streams[context.stream_id]
        async for result in self._guarded(self.policy.apply_streaming_chunk_policy(chunk, own), own, chunk):
            yield result

    async def close_streaming_context(self, context: StreamingContext) -> AsyncIterator[ChunkResult]:
        own = self._streams.pop(context.stream_id, None)
        if own is None:
            return
        async for result in self._guarded(self.policy.on_stream_end(own), own, None):
            yield result

    async def publish_activity(self, event: ActivityEvent) -> None:
        self.recent_activity.append(event)
        log.debug("activity %s %s", event.call_id, event.type)

    async def log_debug_event(self, debug_type: str, payload: dict[str, Any]) -> None:
        log.debug("debug event %s: %s", debug_type, payload)

    async def _decide[T](
        self, call_id: str, kind: ActivityType, decision: Awaitable[PolicyResult[T]]
    ) -> PolicyResult[T]:
        try:
            result = await decision
        except Exception as exc:
            result = await self._policy_failed(call_id, kind, exc)
        await self._record_decision(call_id, kind, result)
        return result

    async def _guarded(
        self,
        results: AsyncIterator[ChunkResult],
        context: StreamingContext,
        chunk: ModelResponseStream | None,
    ) -> AsyncIterator[ChunkResult]:
        """Records the policy's stream decisions; if it raises, ends the stream, saying why."""
        try:
            async for result in results:
                if result.reason is not None or not result.allowed:
                    await self._record_decision(context.call_id, ActivityType.STREAM_CHUNKS, result)
                yield result
        except Exception as exc:
            failure = await self._policy_failed(context.call_id, ActivityType.STREAM_CHUNKS, exc)
            if chunk is not None:
                failure.value = text_chunk(chunk, f"\n\n[Luthien] Stream ended: {failure.reason}.")
            yield failure

    async def _policy_failed(self, call_id: str, stage: ActivityType, exc: Exception) -> PolicyResult[Any]:
        log.exception("policy %s failed in %s", type(self.policy).__name__, stage.value)
        reason = f"policy error in {type(self.policy).__name__} ({stage.value}): {type(exc).__name__}"
        await self.publish_activity(
            ActivityEvent(call_id=call_id, type=ActivityType.ERROR, data={"reason": reason})
        )
        return PolicyResult.block(reason)

    async def _record_decision(self, call_id: str, kind: ActivityType, result: PolicyResult[Any]) -> None:
        data = {"allowed": result.allowed, "reason": result.reason, **result.metadata}
        await self.publish_activity(ActivityEvent(call_id=call_id, type=kind, data=data))
