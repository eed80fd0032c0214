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

import litellm
from litellm import (
    ModelResponse,
    ModelResponseStream,
    acompletion,
    get_llm_provider,
    model_cost,
    openai_compatible_providers,
)
from litellm.completion_extras.litellm_responses_transformation.transformation import (
    LiteLLMResponsesTransformationHandler,
    OpenAiResponsesToChatCompletionStreamIterator,
)
from litellm.litellm_core_utils.core_helpers import map_finish_reason
from litellm.llms.anthropic.chat.handler import (
    ModelResponseIterator as AnthropicStreamParser,
)
from litellm.llms.anthropic.chat.transformation import AnthropicConfig
from litellm.llms.anthropic.pass_through.adapters.transformation import (
    LiteLLMAnthropicMessagesAdapter,
)
from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler
from litellm.llms.openai_like.json_loader import JSONProviderRegistry
from litellm.responses.litellm_completion_transformation.transformation import (
    LiteLLMCompletionResponsesConfig,
)
from litellm.types.utils import (
    ChatCompletionDeltaToolCall,
    ChatCompletionMessageToolCall,
    Choices,
    Delta,
    Function,
    Message,
    StreamingChoices,
    Usage,
    generate_id,
    is_custom_tool_call_dict,
)

# Otherwise LiteLLM prints a "Give Feedback / Get Help" banner to stdout on every failed call.
litellm.suppress_debug_info = True

__all__ = [
    "AnthropicConfig",
    "AnthropicStreamParser",
    "AsyncHTTPHandler",
    "ChatCompletionDeltaToolCall",
    "ChatCompletionMessageToolCall",
    "Choices",
    "Delta",
    "Function",
    "JSONProviderRegistry",
    "LiteLLMAnthropicMessagesAdapter",
    "LiteLLMCompletionResponsesConfig",
    "LiteLLMResponsesTransformationHandler",
    "Message",
    "ModelResponse",
    "ModelResponseStream",
    "OpenAiResponsesToChatCompletionStreamIterator",
    "StreamingChoices",
    "Usage",
    "acompletion",
    "generate_id",
    "get_llm_provider",
    "is_custom_tool_call_dict",
    "map_finish_reason",
    "model_cost",
    "openai_compatible_providers",
]
