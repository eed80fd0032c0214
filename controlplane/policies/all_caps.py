from collections import Counter
from collections.abc import Callable

from controlplane.policies.text_stream import StreamingTextPolicy, StreamingTextRewriter


class AllCapsPolicy(StreamingTextPolicy):
    """Demo: uppercases all of the assistant's text."""

    description = "Demo: uppercases all of the model's text."

    def response_rewriter(self) -> Callable[[str, Counter[str]], str] | None:
        return lambda text, counts: text.upper()

    def stream_rewriter(self, counts: Counter[str]) -> StreamingTextRewriter | None:
        return StreamingTextRewriter(str.upper)
