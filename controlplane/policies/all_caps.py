from collections import Counter

from controlplane.llm import ModelResponse
from controlplane.models import PolicyResult, RequestMetadata
from controlplane.policies.text_stream import StreamingTextPolicy, StreamingTextRewriter


class AllCapsPolicy(StreamingTextPolicy):
    """Demo: uppercases all of the assistant's text."""

    description = "Demo: uppercases all of the model's text."

    async def apply_response_policy(
        self, response: ModelResponse, metadata: RequestMetadata
    ) -> PolicyResult[ModelResponse]:
        for choice in response.choices:
            message = choice.message  # type: ignore[union-attr]
            if isinstance(message.content, str) and message.content != message.content.upper():
                message.content = message.content.upper()
        return PolicyResult.allow(response)

    def stream_rewriter(self, counts: Counter[str]) -> StreamingTextRewriter | None:
        return StreamingTextRewriter(str.upper)
