"""The provider wire formats, one place per format (OpenAI Chat Completions, OpenAI Responses,
Anthropic Messages; embeddings and moderations for requests).

Both planes use them, so they are a package of their own. What this module exports (errors, SSE
framing, stream transcoders) is plain data and never imports LiteLLM: it is all a proxy needs,
and a sidecar proxy loads nothing else. What normalises requests and whole responses into the
policies' view, with LiteLLM's adapters, is in ``formats.codecs`` and runs where the policy runs
(``formats.policing``).
"""

from controlplane.models import WireFormat
from formats.anthropic_messages_stream import AnthropicTranscoder, anthropic_error_body
from formats.base import JSON, FormatError, MalformedStream, StreamTranscoder
from formats.openai_chat_stream import OpenAIChatTranscoder, openai_error_body
from formats.openai_responses_stream import OpenAIResponsesTranscoder

_TRANSCODERS: dict[WireFormat, type[StreamTranscoder]] = {
    WireFormat.OPENAI_CHAT: OpenAIChatTranscoder,
    WireFormat.OPENAI_RESPONSES: OpenAIResponsesTranscoder,
    WireFormat.ANTHROPIC_MESSAGES: AnthropicTranscoder,
}


def transcoder(wire_format: WireFormat) -> StreamTranscoder:
    """A new transcoder for one stream of a format with streams."""
    return _TRANSCODERS[wire_format]()


def error_body(wire_format: WireFormat, status: int, message: str) -> JSON:
    """An error in the format's own shape, which its official SDK raises."""
    if wire_format is WireFormat.ANTHROPIC_MESSAGES:
        return anthropic_error_body(status, message)
    return openai_error_body(status, message)


__all__ = ["JSON", "FormatError", "MalformedStream", "StreamTranscoder", "error_body", "transcoder"]
