"""The one place that imports LiteLLM.

Policies see LiteLLM's OpenAI-style types whatever the provider format; the wire-format
modules in ``addon/formats`` use the converters re-exported here. LiteLLM moves its adapter
modules between releases, so every import of it goes through this module.
"""

import os

# Set before the first import of litellm: otherwise it fetches its cost map from the network
# at import time and loads a `.env` file from the working directory.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")

from litellm import ModelResponse, ModelResponseStream  # noqa: E402
from litellm.completion_extras.litellm_responses_transformation.transformation import (  # noqa: E402
    LiteLLMResponsesTransformationHandler,
    OpenAiResponsesToChatCompletionStreamIterator,
)
from litellm.llms.anthropic.chat.handler import (  # noqa: E402
    ModelResponseIterator as AnthropicStreamParser,
)
from litellm.llms.anthropic.chat.transformation import AnthropicConfig  # noqa: E402
from litellm.llms.anthropic.pass_through.adapters.transformation import (  # noqa: E402
    LiteLLMAnthropicMessagesAdapter,
)
from litellm.responses.litellm_completion_transformation.transformation import (  # noqa: E402
    LiteLLMCompletionResponsesConfig,
)

__all__ = [
    "AnthropicConfig",
    "AnthropicStreamParser",
    "LiteLLMAnthropicMessagesAdapter",
    "LiteLLMCompletionResponsesConfig",
    "LiteLLMResponsesTransformationHandler",
    "ModelResponse",
    "ModelResponseStream",
    "OpenAiResponsesToChatCompletionStreamIterator",
]
