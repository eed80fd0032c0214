"""Policies used only by the tests, loaded from policy files as ``tests.policies:Name``."""

import asyncio
from collections.abc import AsyncIterator

from pydantic import BaseModel, ConfigDict

from controlplane.llm import ModelResponse, ModelResponseStream
from controlplane.models import (
    NormalizedRequest,
    PolicyResult,
    RequestMetadata,
    StreamingContext,
)
from controlplane.policies import PolicyHandler
from controlplane.policies.base import ChunkResult
from controlplane.policies.chunks import text_chunk


def _last_user_text(request: NormalizedRequest) -> str:
    for message in reversed(request.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return " ".join(part.get("text", "") for part in content or [] if isinstance(part, dict))
    return ""


class BlockRequestsContaining(PolicyHandler):
    """Blocks requests whose last user message contains a word."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        word: str

    async def apply_request_policies(
        self, request: NormalizedRequest, metadata: RequestMetadata
    ) -> PolicyResult[NormalizedRequest]:
        if self.config.word in _last_user_text(request):
            return PolicyResult.block(f"the prompt mentions {self.config.word}")
        return PolicyResult.allow(request)


class RewriteUserText(PolicyHandler):
    """Replaces a word in every message text of the request."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        old: str
        new: str

    async def apply_request_policies(
        self, request: NormalizedRequest, metadata: RequestMetadata
    ) -> PolicyResult[NormalizedRequest]:
        for message in request.get("messages") or []:
            content = message.get("content")
            if isinstance(content, str):
                message["content"] = content.replace(self.config.old, self.config.new)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        part["text"] = part["text"].replace(self.config.old, self.config.new)
        return PolicyResult.allow(request)


class ReadsWholeCalls(PolicyHandler):
    """Looks at every request and whole response and passes them unchanged: NoOp's answer, on
    the path of a policy that inspects them (NoOp's whole calls take the passive one)."""

    async def apply_request_policies(
        self, request: NormalizedRequest, metadata: RequestMetadata
    ) -> PolicyResult[NormalizedRequest]:
        return PolicyResult.allow(request)

    async def apply_response_policy(
        self, response: ModelResponse, metadata: RequestMetadata
    ) -> PolicyResult[ModelResponse]:
        return PolicyResult.allow(response)


class BlocksResponses(PolicyHandler):
    """Blocks every whole response, and says it inspects them only if ``inspects``: a policy
    that declares it does not look is never asked."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        inspects: bool

    async def apply_response_policy(
        self, response: ModelResponse, metadata: RequestMetadata
    ) -> PolicyResult[ModelResponse]:
        return PolicyResult.block("this policy blocks every response it is shown")

    def inspects_responses(self, metadata: RequestMetadata) -> bool:
        return bool(self.config.inspects)


class PassEveryChunk(PolicyHandler):
    """Looks at every stream chunk and passes it unchanged: NoOp's answer, on the path of a
    policy that inspects streams (NoOp's streams take the passive one)."""

    async def apply_streaming_chunk_policy(
        self, chunk: ModelResponseStream, context: StreamingContext
    ) -> AsyncIterator[ChunkResult]:
        yield PolicyResult.allow(chunk)


class SlowFirstChunkPolicy(PolicyHandler):
    """Awaits two seconds on the first chunk of streams whose prompt contains ``[slow-policy]``."""

    async def apply_streaming_chunk_policy(
        self, chunk: ModelResponseStream, context: StreamingContext
    ) -> AsyncIterator[ChunkResult]:
        if "[slow-policy]" in _last_user_text(context.request_data) and not context.policy_state:
            context.policy_state["slept"] = True
            await asyncio.sleep(2)
        yield PolicyResult.allow(chunk)


class EndStreamAfterWords(PolicyHandler):
    """Ends every stream, with an explanation, after a number of text chunks."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        chunks: int = 3

    async def apply_streaming_chunk_policy(
        self, chunk: ModelResponseStream, context: StreamingContext
    ) -> AsyncIterator[ChunkResult]:
        seen = context.policy_state.get("seen", 0) + 1
        context.policy_state["seen"] = seen
        if seen < self.config.chunks:
            yield PolicyResult.allow(chunk)
            return
        yield PolicyResult.block("enough", value=text_chunk(chunk, " [stopped by policy]"))
