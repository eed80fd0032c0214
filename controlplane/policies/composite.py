"""Policies made of policies: SerialPolicy (one after another) and SelectPolicy (one per host or
model). Children are given as the same ``{class, config}`` specs as a policy file's top level."""

from collections.abc import AsyncIterator, Awaitable, Callable
from fnmatch import fnmatchcase
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from controlplane import policy_file
from controlplane.llm import ModelResponse, ModelResponseStream
from controlplane.models import (
    NormalizedRequest,
    PolicyResult,
    RequestMetadata,
    StreamingContext,
)
from controlplane.policies.base import ChunkResult, PolicyHandler


class PolicySpec(BaseModel):
    """``{class: NAME, config: {...}}``: a policy inside a composite policy."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    class_: str = Field(alias="class")
    config: dict[str, Any] = Field(default_factory=dict)

    def as_spec(self) -> dict[str, Any]:
        return {"class": self.class_, "config": self.config}


class SerialPolicy(PolicyHandler):
    """Runs policies in order; each sees the previous one's output."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        policies: list[PolicySpec] = Field(min_length=1, description="Run in this order.")

    config: Config
    description = "Runs policies in order, each seeing the previous one's output."

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        self.policies = policy_file.build_policies(
            [(spec.as_spec(), f"config.policies[{i}]") for i, spec in enumerate(self.config.policies)]
        )

    async def apply_request_policies(
        self, request: NormalizedRequest, metadata: RequestMetadata
    ) -> PolicyResult[NormalizedRequest]:
        return await self._in_order([p.apply_request_policies for p in self.policies], request, metadata)

    async def apply_response_policy(
        self, response: ModelResponse, metadata: RequestMetadata
    ) -> PolicyResult[ModelResponse]:
        return await self._in_order([p.apply_response_policy for p in self.policies], response, metadata)

    @staticmethod
    async def _in_order[T](
        hooks: list[Callable[[T, RequestMetadata], Awaitable[PolicyResult[T]]]],
        value: T,
        metadata: RequestMetadata,
    ) -> PolicyResult[T]:
        """Each hook gets the previous one's output; the first block stops the chain. The
        details of each decision are kept (a removed tool call's name and rule)."""
        reasons: list[str] = []
        details: dict[str, Any] = {}
        for hook in hooks:
            result = await hook(value, metadata)
            if not result.allowed or result.value is None:
                return result
            value = result.value
            reasons += [result.reason] if result.reason else []
            details |= result.metadata
        return PolicyResult.allow(value, reason="; ".join(reasons) or None, **details)

    async def apply_streaming_chunk_policy(
        self, chunk: ModelResponseStream, context: StreamingContext
    ) -> AsyncIterator[ChunkResult]:
        async for result in self._from(0, chunk, self._contexts(context)):
            yield result

    async def on_stream_end(self, context: StreamingContext) -> AsyncIterator[ChunkResult]:
        contexts = self._contexts(context)
        for index, policy in enumerate(self.policies):
            async for result in policy.on_stream_end(contexts[index]):
                async for out in self._after(index, result, contexts):
                    yield out

    def redact_for_recording(self, text: str) -> str:
        return _redact_all(self.policies, text)

    @property
    def redacts_recordings(self) -> bool:
        return any(policy.redacts_recordings for policy in self.policies)

    def inspects_requests(self, metadata: RequestMetadata) -> bool:
        return any(policy.inspects_requests(metadata) for policy in self.policies)

    def inspects_responses(self, metadata: RequestMetadata) -> bool:
        return any(policy.inspects_responses(metadata) for policy in self.policies)

    def inspects_streams(self, metadata: RequestMetadata) -> bool:
        return any(policy.inspects_streams(metadata) for policy in self.policies)

    def _contexts(self, context: StreamingContext) -> list[StreamingContext]:
        """Each child keeps its own per-stream state."""
        return context.policy_state.setdefault(
            "serial", [context.model_copy(update={"policy_state": {}}) for _ in self.policies]
        )

    async def _from(
        self, index: int, chunk: ModelResponseStream, contexts: list[StreamingContext]
    ) -> AsyncIterator[ChunkResult]:
        async for result in self.policies[index].apply_streaming_chunk_policy(chunk, contexts[index]):
            async for out in self._after(index, result, contexts):
                yield out

    async def _after(
        self, index: int, result: ChunkResult, contexts: list[StreamingContext]
    ) -> AsyncIterator[ChunkResult]:
        """Passes one child's output through the children after it."""
        if index + 1 == len(self.policies) or result.value is None:
            yield result
            return
        if result.reason is not None:
            # Keeps an earlier child's decision on record; a result without a value sends nothing.
            yield PolicyResult(value=None, allowed=True, reason=result.reason, metadata=result.metadata)
        async for out in self._from(index + 1, result.value, contexts):
            yield out
        if not result.allowed:
            yield PolicyResult.block(result.reason or "ended by policy")


def _redact_all(policies: list[PolicyHandler], text: str) -> str:
    for policy in policies:
        text = policy.redact_for_recording(text)
    return text


class Route(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str | None = Field(default=None, description="Glob on the provider host.")
    model: str | None = Field(default=None, description="Glob on the requested model.")

    def matches(self, metadata: RequestMetadata) -> bool:
        return (self.host is None or fnmatchcase(metadata.host.lower(), self.host.lower())) and (
            self.model is None or fnmatchcase(metadata.model or "", self.model)
        )


class SelectRoute(BaseModel):
    model_config = ConfigDict(extra="forbid")
    when: Route
    policy: PolicySpec


class SelectPolicy(PolicyHandler):
    """Picks a policy per call by provider host and model; the first matching route wins."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        routes: list[SelectRoute] = Field(min_length=1)
        default: PolicySpec = Field(
            default_factory=lambda: PolicySpec.model_validate({"class": "NoOpPolicy"}),
            description="For calls no route matches.",
        )

    config: Config
    description = "Picks a policy per call by provider host and model pattern."

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        specs = [
            (route.policy.as_spec(), f"config.routes[{i}].policy")
            for i, route in enumerate(self.config.routes)
        ]
        *chosen, self.default = policy_file.build_policies(
            [*specs, (self.config.default.as_spec(), "config.default")]
        )
        self.routes = [(route.when, policy) for route, policy in zip(self.config.routes, chosen, strict=True)]

    def choose(self, metadata: RequestMetadata) -> PolicyHandler:
        return next((policy for when, policy in self.routes if when.matches(metadata)), self.default)

    async def apply_request_policies(
        self, request: NormalizedRequest, metadata: RequestMetadata
    ) -> PolicyResult[NormalizedRequest]:
        return await self.choose(metadata).apply_request_policies(request, metadata)

    async def apply_response_policy(
        self, response: ModelResponse, metadata: RequestMetadata
    ) -> PolicyResult[ModelResponse]:
        return await self.choose(metadata).apply_response_policy(response, metadata)

    async def apply_streaming_chunk_policy(
        self, chunk: ModelResponseStream, context: StreamingContext
    ) -> AsyncIterator[ChunkResult]:
        async for result in self.choose(context.metadata).apply_streaming_chunk_policy(chunk, context):
            yield result

    async def on_stream_end(self, context: StreamingContext) -> AsyncIterator[ChunkResult]:
        async for result in self.choose(context.metadata).on_stream_end(context):
            yield result

    def redact_for_recording(self, text: str) -> str:
        # Every route's redaction: a record must not depend on which route a call took.
        return _redact_all(self._all(), text)

    @property
    def redacts_recordings(self) -> bool:
        return any(policy.redacts_recordings for policy in self._all())

    def inspects_requests(self, metadata: RequestMetadata) -> bool:
        return self.choose(metadata).inspects_requests(metadata)

    def inspects_responses(self, metadata: RequestMetadata) -> bool:
        return self.choose(metadata).inspects_responses(metadata)

    def inspects_streams(self, metadata: RequestMetadata) -> bool:
        return self.choose(metadata).inspects_streams(metadata)

    def _all(self) -> list[PolicyHandler]:
        return [policy for _, policy in self.routes] + [self.default]
