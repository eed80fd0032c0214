from collections.abc import AsyncIterator
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from controlplane.llm import ModelResponse, ModelResponseStream
from controlplane.models import (
    PolicyResult,
    RequestMetadata,
    StreamingContext,
)
from controlplane.policies.base import ChunkResult, PolicyHandler
from controlplane.policies.chunks import chunk_text, with_text


@dataclass
class WordCounter:
    """Counts words across chunk boundaries: a word split over two chunks is one word."""

    n: int
    words: int = 0
    in_word: bool = False

    def transform(self, text: str) -> str:
        out = []
        for char in text:
            if char.isspace():
                self.in_word = False
            elif not self.in_word:
                self.in_word = True
                self.words += 1
            out.append(char.upper() if self.in_word and self.words % self.n == 0 else char)
        return "".join(out)


class UppercaseNthWordPolicy(PolicyHandler):
    """Demo: uppercases every n-th word of the assistant's text."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n: int = Field(default=3, ge=1, description="Uppercase every n-th word.")

    config: Config
    description = "Demo: uppercases every n-th word of the model's text."

    async def apply_response_policy(
        self, response: ModelResponse, metadata: RequestMetadata
    ) -> PolicyResult[ModelResponse]:
        for choice in response.choices:
            message = choice.message  # type: ignore[union-attr]
            if message.content:
                message.content = WordCounter(self.config.n).transform(message.content)
        return PolicyResult.allow(response)

    async def apply_streaming_chunk_policy(
        self, chunk: ModelResponseStream, context: StreamingContext
    ) -> AsyncIterator[ChunkResult]:
        counter = context.policy_state.setdefault("words", WordCounter(self.config.n))
        text = chunk_text(chunk)
        yield PolicyResult.allow(with_text(chunk, counter.transform(text)) if text else chunk)
