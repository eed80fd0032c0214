"""Runs calls with the official, unmodified SDKs and prints a JSON summary of each result.

Run as a separate process whose only proxy configuration is HTTPS_PROXY and SSL_CERT_FILE. It
reads one JSON list of calls per line on stdin and answers one JSON list of results per line
(importing the SDKs takes seconds, so a test session keeps one worker per proxy):
    echo '[{"api": "chat", "stream": true, "prompt": "hi"}]' | python sdk_client.py
Streaming calls use the SDKs' stream helpers, which reject malformed event sequences. A call
may also carry what an agent sends besides its prompt: ``history`` (the conversation before the
prompt, in the API's own message or item format), ``headers`` (Codex's ``session_id``, a
user agent), ``user`` (Chat and Responses) and ``metadata`` (Messages: Claude Code's user id).
The client is the provider's own unless the call names another host: ``base_url`` (an
OpenAI-compatible host), ``azure`` (``AzureOpenAI``: endpoint, deployment, api_version) or
``vertex`` (``AnthropicVertex``, or google-genai with ``vertexai=True``: project, location).
"""

import json
import sys
from typing import Any

import anthropic
import openai
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from google.oauth2.credentials import Credentials

BASH_TOOL = {
    "name": "bash",
    "description": "Run a shell command",
    "schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
}


def extras(call: dict[str, Any], *fields: str) -> dict[str, Any]:
    """The call's extra headers and whichever of ``fields`` it sets, as SDK keyword arguments."""
    kwargs = {field: call[field] for field in fields if field in call}
    return {**kwargs, "extra_headers": call["headers"]} if "headers" in call else kwargs


def conversation(call: dict[str, Any]) -> list[dict[str, Any]]:
    return [*call.get("history", []), {"role": "user", "content": call["prompt"]}]


def openai_client(call: dict[str, Any]) -> openai.OpenAI:
    key = call.get("key", "sk-test-key")
    if "azure" in call:
        azure = call["azure"]
        return openai.AzureOpenAI(
            api_key=key,
            azure_endpoint=azure["endpoint"],
            azure_deployment=azure.get("deployment"),
            api_version=azure["api_version"],
            max_retries=0,
        )
    return openai.OpenAI(api_key=key, base_url=call.get("base_url"), max_retries=0)


def anthropic_client(call: dict[str, Any]) -> anthropic.Anthropic | anthropic.AnthropicVertex:
    if "vertex" in call:  # a Google access token given: no Google sign-in is asked
        vertex = call["vertex"]
        return anthropic.AnthropicVertex(
            region=vertex["location"],
            project_id=vertex["project"],
            access_token=call.get("key", "ya29.test-token"),
            max_retries=0,
        )
    return anthropic.Anthropic(api_key=call.get("key", "sk-ant-test-key"), max_retries=0)


def chat(call: dict[str, Any]) -> dict[str, Any]:
    client = openai_client(call)
    kwargs: dict[str, Any] = {
        **extras(call, "user"),
        "model": call.get("model", "gpt-4o"),
        "messages": conversation(call),
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": BASH_TOOL["name"],
                    "description": BASH_TOOL["description"],
                    "parameters": BASH_TOOL["schema"],
                },
            }
        ],
    }
    if call["stream"]:
        with client.chat.completions.stream(**kwargs, stream_options={"include_usage": True}) as stream:
            completion = stream.get_final_completion()
    else:
        completion = client.chat.completions.create(**kwargs)
    choice = completion.choices[0]
    return {
        "text": choice.message.content or "",
        "tool_calls": [
            {"name": c.function.name, "arguments": c.function.arguments}
            for c in choice.message.tool_calls or []
        ],
        "stop_reason": choice.finish_reason,
    }


def responses(call: dict[str, Any]) -> dict[str, Any]:
    client = openai_client(call)
    kwargs: dict[str, Any] = {
        **extras(call, "user"),
        "model": call.get("model", "gpt-5"),
        "input": conversation(call) if "history" in call else call["prompt"],
        "tools": [
            {
                "type": "function",
                "name": BASH_TOOL["name"],
                "description": BASH_TOOL["description"],
                "parameters": BASH_TOOL["schema"],
                "strict": False,
            }
        ],
    }
    if call["stream"]:
        with client.responses.stream(**kwargs) as stream:
            response = stream.get_final_response()
    else:
        response = client.responses.create(**kwargs)
    calls = [item for item in response.output if item.type == "function_call"]
    reasoning = [s.text for item in response.output if item.type == "reasoning" for s in item.summary]
    return {
        "text": response.output_text,
        "tool_calls": [{"name": c.name, "arguments": c.arguments} for c in calls],
        "stop_reason": response.status,
        "thinking": "".join(reasoning),
    }


def messages(call: dict[str, Any]) -> dict[str, Any]:
    client = anthropic_client(call)
    kwargs: dict[str, Any] = {
        **extras(call, "metadata"),
        "model": call.get("model", "claude-sonnet-4-6"),
        "max_tokens": 1024,
        "messages": conversation(call),
        "tools": [
            {
                "name": BASH_TOOL["name"],
                "description": BASH_TOOL["description"],
                "input_schema": BASH_TOOL["schema"],
            }
        ],
    }
    if call["stream"]:
        with client.messages.stream(**kwargs) as stream:
            message = stream.get_final_message()
    else:
        message = client.messages.create(**kwargs)
    return {
        "text": "".join(b.text for b in message.content if b.type == "text"),
        "tool_calls": [
            {"name": b.name, "arguments": json.dumps(b.input)}
            for b in message.content
            if b.type == "tool_use"
        ],
        "stop_reason": message.stop_reason,
        "thinking": "".join(b.thinking for b in message.content if b.type == "thinking"),
        "block_types": [b.type for b in message.content],
        "citations": [c.cited_text for b in message.content if b.type == "text" for c in b.citations or []],
    }


def gemini(call: dict[str, Any]) -> dict[str, Any]:
    """``generate_content`` (``stream``: ``generate_content_stream``, SSE), or ``count_tokens``
    with ``"count": true``; the API version is ``version`` (default v1beta)."""
    options = genai_types.HttpOptions(
        api_version=call.get("version", "v1beta"), retry_options=genai_types.HttpRetryOptions(attempts=1)
    )
    if "vertex" in call:  # a Google access token given: no Google sign-in is asked
        vertex = call["vertex"]
        client = genai.Client(
            vertexai=True,
            project=vertex["project"],
            location=vertex["location"],
            credentials=Credentials(token=call.get("key", "ya29.test-token")),
            http_options=options,
        )
    else:
        client = genai.Client(api_key=call.get("key", "AIza-test-key"), http_options=options)
    model = call.get("model", "gemini-2.5-flash")
    if call.get("count"):
        counted = client.models.count_tokens(model=model, contents=call["prompt"])
        return {"total_tokens": counted.total_tokens}
    declaration = genai_types.FunctionDeclaration(
        name=BASH_TOOL["name"],
        description=BASH_TOOL["description"],
        parameters_json_schema=BASH_TOOL["schema"],
    )
    config = genai_types.GenerateContentConfig(
        tools=[genai_types.Tool(function_declarations=[declaration])],
        automatic_function_calling=genai_types.AutomaticFunctionCallingConfig(disable=True),
    )
    kwargs: dict[str, Any] = {"model": model, "contents": call["prompt"], "config": config}
    if call["stream"]:
        chunks = list(client.models.generate_content_stream(**kwargs))
    else:
        chunks = [client.models.generate_content(**kwargs)]
    parts = [
        part
        for chunk in chunks
        for candidate in chunk.candidates or []
        if candidate.content is not None
        for part in candidate.content.parts or []
    ]
    reasons = [c.finish_reason for chunk in chunks for c in chunk.candidates or [] if c.finish_reason]
    return {
        "text": "".join(p.text for p in parts if p.text and not p.thought),
        "tool_calls": [
            {"name": p.function_call.name, "arguments": json.dumps(p.function_call.args)}
            for p in parts
            if p.function_call is not None
        ],
        "stop_reason": reasons[-1].value if reasons else None,
        "thinking": "".join(p.text for p in parts if p.text and p.thought),
        "events": len(chunks),
    }


APIS = {"chat": chat, "responses": responses, "messages": messages, "gemini": gemini}


def run(call: dict[str, Any]) -> dict[str, Any]:
    try:
        return {"ok": True, **APIS[call["api"]](call)}
    except (openai.APIError, anthropic.APIError) as exc:
        return {
            "ok": False,
            "error_type": type(exc).__name__,
            "status": getattr(exc, "status_code", None),
            "message": str(exc),
        }
    except genai_errors.APIError as exc:
        return {"ok": False, "error_type": type(exc).__name__, "status": exc.code, "message": str(exc)}


if __name__ == "__main__":
    for line in sys.stdin:
        print(json.dumps([run(call) for call in json.loads(line)]), flush=True)
