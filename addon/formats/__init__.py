"""The provider wire formats, and which endpoint speaks which."""

from addon.endpoints import Family, Treatment, UnsafePath, resolve
from addon.formats.anthropic_messages import AnthropicMessagesCodec
from addon.formats.base import FormatError, RequestCodec, StreamTranscoder, WireFormatCodec
from addon.formats.openai_chat import OpenAIChatCodec
from addon.formats.openai_responses import OpenAIResponsesCodec
from addon.formats.text_inputs import TextInputsCodec
from controlplane.models import WireFormat

_CODECS: dict[WireFormat, WireFormatCodec] = {
    WireFormat.OPENAI_CHAT: OpenAIChatCodec(),
    WireFormat.OPENAI_RESPONSES: OpenAIResponsesCodec(),
    WireFormat.ANTHROPIC_MESSAGES: AnthropicMessagesCodec(),
}
_REQUEST_CODECS: dict[WireFormat, RequestCodec] = {
    **_CODECS,
    WireFormat.OPENAI_EMBEDDINGS: TextInputsCodec(WireFormat.OPENAI_EMBEDDINGS),
    WireFormat.OPENAI_MODERATIONS: TextInputsCodec(WireFormat.OPENAI_MODERATIONS),
}
_ERRORS: dict[Family, RequestCodec] = {
    Family.OPENAI: _CODECS[WireFormat.OPENAI_CHAT],
    Family.ANTHROPIC: _CODECS[WireFormat.ANTHROPIC_MESSAGES],
}


def codec(wire_format: WireFormat) -> WireFormatCodec:
    """The codec of a format with responses: policed and retrieval endpoints."""
    return _CODECS[wire_format]


def request_codec(wire_format: WireFormat) -> RequestCodec:
    """The codec that reads and rewrites requests of ``wire_format`` (request-only ones too)."""
    return _REQUEST_CODECS[wire_format]


def error_codec(family: Family) -> RequestCodec:
    """Writes errors in the format of ``family``'s APIs."""
    return _ERRORS[family]


def codec_for(method: str, path: str) -> WireFormatCodec | None:
    """The codec of a policed model call (``POST /v1/messages`` and the like), else None."""
    try:
        route = resolve(method, path)
    except UnsafePath:
        return None
    endpoint = route.endpoint
    if route.treatment is not Treatment.POLICED or endpoint is None or endpoint.wire_format is None:
        return None
    return _CODECS[endpoint.wire_format]


__all__ = [
    "FormatError",
    "RequestCodec",
    "StreamTranscoder",
    "WireFormatCodec",
    "codec",
    "codec_for",
    "error_codec",
    "request_codec",
]
