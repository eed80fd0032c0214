"""Example policy from docs/writing-policies.md (exercised by tests/test_docs_example.py)."""

from collections.abc import AsyncIterator
from fnmatch import fnmatch

from pydantic import BaseModel, ConfigDict, Field

from controlplane.llm import ModelResponse, ModelResponseStream
from controlplane.models import (
    NormalizedRequest,
    PolicyResult,
    RequestMetadata,
    StreamingContext,
)
from controlplane.policies import PolicyHandler
from controlplane.policies.base import ChunkResult
from controlplane.policies.chunks import finish_reason, text_chunk


class TeamRulesPolicy(PolicyHandler):
    """Only approved models; every answer ends with a footer."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        allowed_models: list[str] = Field(min_length=1, description="Glob patterns, e.g. 'claude-*'.")
        footer: str = "(checked by Luthien)"

    config: Config
    description = "Blocks unapproved models and adds a footer to every answer."

    async def apply_request_policies(
        self, request: NormalizedRequest, metadata: RequestMetadata
    ) -> PolicyResult[NormalizedRequest]:
        model = request.get("model", "")
        if not any(fnmatch(model, pattern) for pattern in self.config.allowed_models):
            return PolicyResult.block(f"model {model!r} is not approved for this team")
        return PolicyResult.allow(request)

    async def apply_response_policy(
        self, response: ModelResponse, metadata: RequestMetadata
    ) -> PolicyResult[ModelResponse]:
        message = response.choices[0].message  # type: ignore[union-attr]
        message.content = f"{message.content or ''}\n\n{self.config.footer}"
        return PolicyResult.allow(response)

    async def apply_streaming_chunk_policy(
        self, chunk: ModelResponseStream, context: StreamingContext
    ) -> AsyncIterator[ChunkResult]:
        if finish_reason(chunk) is not None:
            # Inject the footer just before the chunk that ends the answer.
            yield PolicyResult.allow(text_chunk(chunk, f"\n\n{self.config.footer}"))
        yield PolicyResult.allow(chunk)
