"""What reads requests and whole responses into the policies' view and maps a policy's change
back, per format: LiteLLM's adapters do most of the reading. Only the side that runs the policy
imports this (``formats.policing``): a sidecar proxy sends the bodies as they are."""

from typing import Protocol

from controlplane.llm import ModelResponse
from controlplane.models import NormalizedRequest, WireFormat
from formats.anthropic_messages import AnthropicMessagesCodec
from formats.base import JSON
from formats.openai_chat import OpenAIChatCodec
from formats.openai_responses import OpenAIResponsesCodec
from formats.text_inputs import TextInputsCodec


class RequestCodec(Protocol):
    """Reads a request body into the normalised form and maps a policy's change back."""

    wire_format: WireFormat

    def normalize_request(self, body: JSON) -> NormalizedRequest: ...

    def render_request(self, original: JSON, before: NormalizedRequest, after: NormalizedRequest) -> JSON: ...


class WireFormatCodec(RequestCodec, Protocol):
    """A model API: requests and whole responses."""

    def parse_response(self, body: JSON) -> ModelResponse: ...

    def render_response(self, original: JSON, response: ModelResponse) -> JSON: ...


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


def codec(wire_format: WireFormat) -> WireFormatCodec:
    """The codec of a format with responses: policed and retrieval endpoints."""
    return _CODECS[wire_format]


def request_codec(wire_format: WireFormat) -> RequestCodec:
    """The codec that reads and rewrites requests of ``wire_format`` (request-only ones too)."""
    return _REQUEST_CODECS[wire_format]
