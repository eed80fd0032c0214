"""``Policing``: the data plane's door (``PolicingService``) over the policies' own
(``ControlPlaneService``), where the policy runs: it normalises a provider's body with its
format's codec, runs the policy on the normalised view, and maps the policy's change back onto
the body. In-process it wraps ``ControlPlaneLocal``; the control-plane service runs one for its
sidecars, which send bodies as they are and never load LiteLLM."""

import copy
from collections.abc import AsyncIterator, Sequence
from typing import Any

from controlplane.chunks import StreamChunk
from controlplane.interface import (
    JSON,
    ControlPlaneService,
    RequestVerdict,
    ResponseVerdict,
    Unpoliceable,
)
from controlplane.llm import ModelResponse
from controlplane.models import (
    ActivityEvent,
    ChunkVerdict,
    PolicyResult,
    RequestMetadata,
    StreamingContext,
    WireFormat,
    unread_request,
)
from controlplane.recording.records import CallRecord, Output, ToolCall, Usage
from formats.base import UNREADABLE, FormatError
from formats.codecs import codec, request_codec


def output_of(response: ModelResponse) -> Output:
    """The answer of a whole response, as the record keeps it."""
    output = Output()
    for choice in response.choices[:1]:
        message = getattr(choice, "message", None)
        output.text = getattr(message, "content", None) or ""
        output.reasoning = getattr(message, "reasoning_content", None) or ""
        output.finish_reason = getattr(choice, "finish_reason", None)
        for call in getattr(message, "tool_calls", None) or []:
            function = call.function
            output.tool_calls.append(
                ToolCall(id=call.id, name=function.name, arguments=function.arguments or "")
            )
    return output


class Policing:
    def __init__(self, control_plane: ControlPlaneService) -> None:
        self.control_plane = control_plane

    async def police_request(
        self, wire_format: WireFormat, body: JSON, metadata: RequestMetadata
    ) -> RequestVerdict:
        inspection = self.control_plane.inspection(metadata)
        if not (inspection.requests or inspection.streams):
            # Nothing reads the request: it is sent as it came, not normalised.
            passed = PolicyResult.allow(unread_request())
            passed.policy_version = inspection.policy_version
            return RequestVerdict(
                result=passed, inspects_response=inspection.responses, inspects_stream=False
            )
        codec_ = request_codec(wire_format)
        try:
            normalized = codec_.normalize_request(body)
            if not normalized.get("model") and metadata.model:
                # Named by the path (Gemini, an Azure deployment, a Vertex AI model).
                normalized = {**normalized, "model": metadata.model}
        except UNREADABLE as exc:
            message = f"Luthien could not read this request: {exc}"
            return RequestVerdict(unpoliceable=Unpoliceable(status=400, message=message))
        result = await self.control_plane.apply_request_policies(copy.deepcopy(normalized), metadata)
        verdict = RequestVerdict(
            result=result, inspects_response=inspection.responses, inspects_stream=inspection.streams
        )
        if not result.allowed or result.value is None or result.value == normalized:
            return verdict
        try:
            if "model" not in body and result.value.get("model") != normalized.get("model"):
                raise FormatError("a policy changed the model, which this call names in its path")
            rendered = codec_.render_request(body, normalized, result.value)
        except FormatError as exc:
            message = f"Luthien could not apply the policy's change to this request: {exc}"
            verdict.unpoliceable = Unpoliceable(status=500, message=message)
            return verdict
        verdict.body = rendered
        return verdict

    async def police_response(
        self, wire_format: WireFormat, body: JSON, metadata: RequestMetadata
    ) -> ResponseVerdict:
        codec_ = codec(wire_format)
        try:
            response = codec_.parse_response(body)
        except UNREADABLE as exc:
            message = f"Luthien could not read the provider's response: {exc}"
            return ResponseVerdict(unpoliceable=Unpoliceable(status=502, message=message))
        before = response.model_dump()
        verdict = ResponseVerdict(
            original_output=output_of(response), usage=Usage.from_mapping(before.get("usage"))
        )
        result = await self.control_plane.apply_response_policy(response, metadata)
        verdict.result = PolicyResult[None](
            # An answer the policy took away, even without saying so, is blocked.
            allowed=result.allowed and result.value is not None,
            reason=result.reason,
            metadata=result.metadata,
            policy_version=result.policy_version,
            unpoliced=result.unpoliced,
        )
        if result.value is None or not result.allowed:
            return verdict
        verdict.final_output = output_of(result.value)
        if result.value.model_dump() != before:
            verdict.body = codec_.render_response(body, result.value)
        return verdict

    # --- streams, activity and records pass as they are --------------------------------------

    async def create_streaming_context(
        self, request_data: dict[str, Any], metadata: RequestMetadata
    ) -> StreamingContext:
        return await self.control_plane.create_streaming_context(request_data, metadata)

    def process_streaming_chunks(
        self, chunks: Sequence[StreamChunk], context: StreamingContext
    ) -> AsyncIterator[ChunkVerdict]:
        return self.control_plane.process_streaming_chunks(chunks, context)

    def close_streaming_context(self, context: StreamingContext) -> AsyncIterator[ChunkVerdict]:
        return self.control_plane.close_streaming_context(context)

    async def publish_activity(self, event: ActivityEvent) -> None:
        await self.control_plane.publish_activity(event)

    async def log_debug_event(self, debug_type: str, payload: dict[str, Any]) -> None:
        await self.control_plane.log_debug_event(debug_type, payload)

    def record_call_started(self, stand_in: CallRecord) -> None:
        self.control_plane.record_call_started(stand_in)

    async def record_call(self, record: CallRecord) -> None:
        await self.control_plane.record_call(record)
