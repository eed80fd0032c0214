"""ControlPlaneLocal: the ControlPlaneService running in the proxy's own process."""

import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator
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
        try:
            result = await self.policy.apply_request_policies(request_data, metadata)
        except Exception as exc:
            result = await self._policy_failed(metadata.call_id, "request", exc)
        await self._record_decision(metadata.call_id, ActivityType.REQUEST_POLICY, result)
        return result

    async def apply_response_policy(
        self, response: ModelResponse, metadata: RequestMetadata
    ) -> PolicyResult[ModelResponse]:
        try:
            result = await self.policy.apply_response_policy(response, metadata)
        except Exception as exc:
            result = await self._policy_failed(metadata.call_id, "response", exc)
        await self._record_decision(metadata.call_id, ActivityType.RESPONSE_POLICY, result)
        return result

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
        async for result in self._guarded(self.policy.apply_streaming_chunk_policy(chunk, own), own):
            yield result

    async def close_streaming_context(self, context: StreamingContext) -> AsyncIterator[ChunkResult]:
        own = self._streams.pop(context.stream_id, None)
        if own is None:
            return
        async for result in self._guarded(self.policy.on_stream_end(own), own):
            yield result

    async def publish_activity(self, event: ActivityEvent) -> None:
        self.recent_activity.append(event)
        log.debug("activity %s %s", event.call_id, event.type)

    async def log_debug_event(self, debug_type: str, payload: dict[str, Any]) -> None:
        log.debug("debug event %s: %s", debug_type, payload)

    async def _guarded(
        self, results: AsyncIterator[ChunkResult], context: StreamingContext
    ) -> AsyncIterator[ChunkResult]:
        try:
            async for result in results:
                if result.reason is not None or not result.allowed:
                    await self._record_decision(context.call_id, ActivityType.STREAM_CHUNKS, result)
                yield result
        except Exception as exc:
            yield await self._policy_failed(context.call_id, "stream", exc)

    async def _policy_failed(self, call_id: str, stage: str, exc: Exception) -> PolicyResult[Any]:
        log.exception("policy %s failed during the %s stage", type(self.policy).__name__, stage)
        reason = f"policy error in {type(self.policy).__name__} ({stage}): {type(exc).__name__}"
        await self.publish_activity(
            ActivityEvent(call_id=call_id, type=ActivityType.ERROR, data={"reason": reason})
        )
        return PolicyResult.block(reason)

    async def _record_decision(self, call_id: str, kind: ActivityType, result: PolicyResult[Any]) -> None:
        data = {"allowed": result.allowed, "reason": result.reason, **result.metadata}
        await self.publish_activity(ActivityEvent(call_id=call_id, type=kind, data=data))
