"""Where other hosts keep the APIs the fake speaks: OpenRouter's ``/api/v1``, Groq's and Azure's
``/openai``, Azure deployments, Vertex AI's publisher models and its OpenAI-compatible endpoint.
The fake answers each path as the plain API path it is."""

import re

_VERTEX_LOCATION = r"/v1(?:beta1)?/projects/[^/]+/locations/[^/]+"
_HOSTED = (
    (
        re.compile(rf"^{_VERTEX_LOCATION}/publishers/anthropic/models/[^/:]+:(?:raw|streamRaw)Predict$"),
        "/v1/messages",
    ),
    (re.compile(r"^/v1(?:beta1)?/publishers/google/(models/.+)$"), r"/v1beta/\1"),  # express mode
    (re.compile(rf"^{_VERTEX_LOCATION}/publishers/google/(models/.+)$"), r"/v1beta/\1"),
    (re.compile(rf"^{_VERTEX_LOCATION}/endpoints/openapi/(.+)$"), r"/v1/\1"),
    (re.compile(r"^/api/v1/(.+)$"), r"/v1/\1"),
    (re.compile(r"^/openai/deployments/[^/]+/(.+)$"), r"/v1/\1"),
    (re.compile(r"^/openai/(?:v1/)?(.+)$"), r"/v1/\1"),
)


def served_path(path: str) -> str:
    """The API path ``path`` (without its query string) is, on whichever host it was sent to."""
    for pattern, replacement in _HOSTED:
        if pattern.match(path):
            return pattern.sub(replacement, path)
    return path
