"""The provider wire formats, and which endpoint speaks which."""

from addon.formats.anthropic_messages import AnthropicMessagesCodec
from addon.formats.base import FormatError, StreamTranscoder, WireFormatCodec
from addon.formats.openai_chat import OpenAIChatCodec
from addon.formats.openai_responses import OpenAIResponsesCodec

_ENDPOINTS: dict[str, WireFormatCodec] = {
    "/v1/chat/completions": OpenAIChatCodec(),
    "/v1/responses": OpenAIResponsesCodec(),
    "/v1/messages": AnthropicMessagesCodec(),
}


def codec_for(method: str, path: str) -> WireFormatCodec | None:
    """The codec for a policed LLM endpoint; None for everything else (forwarded as is)."""
    if method.upper() != "POST":
        return None
    return _ENDPOINTS.get(path.split("?", 1)[0].rstrip("/"))


__all__ = ["FormatError", "StreamTranscoder", "WireFormatCodec", "codec_for"]
