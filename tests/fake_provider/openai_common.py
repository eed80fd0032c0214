"""Pieces shared by OpenAI's two APIs: error bodies and response headers."""

from __future__ import annotations

from typing import Any

from .wire import Context, Reply, json_reply

RETRY_AFTER_SECONDS = 1


def headers(ctx: Context) -> dict[str, str]:
    # The SDK surfaces x-request-id as `_request_id`; proxies often log it. Like api.openai.com
    # (Cloudflare's __cf_bm), every answer sets a cookie; here host-only and not Secure, so that
    # an HTTP client talking to the fake over plain HTTP would keep it and send it back.
    return {
        "x-request-id": ctx.ids.hex("req_", 32),
        "openai-processing-ms": "42",
        "set-cookie": f"__cf_bm={ctx.ids.hex('', 24)}; path=/; HttpOnly",
    }


def error_object(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"message": message, "type": type_, "param": None, "code": code}


def server_error_object() -> dict[str, Any]:
    message = "The server had an error while processing your request. Sorry about that!"
    return error_object(message, "server_error", None)


def http_error(status: int, ctx: Context) -> Reply:
    if status == 429:
        return _rate_limited(ctx)
    return json_reply(status, {"error": server_error_object()}, headers(ctx))


def _rate_limited(ctx: Context) -> Reply:
    # Token-per-minute limits are reported with type "tokens" (request limits: "requests").
    message = (
        f"Rate limit reached for {ctx.model} in organization org-fakeprovider on tokens per min (TPM): "
        f"Limit 30000, Used 30000, Requested {ctx.input_tokens}. Please try again in "
        f"{RETRY_AFTER_SECONDS}s. Visit https://platform.openai.com/account/rate-limits to learn more."
    )
    extra = {
        "retry-after": str(RETRY_AFTER_SECONDS),
        "x-ratelimit-limit-tokens": "30000",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": f"{RETRY_AFTER_SECONDS}s",
    }
    body = {"error": error_object(message, "tokens", "rate_limit_exceeded")}
    return json_reply(429, body, {**headers(ctx), **extra})


def invalid_request(message: str, ctx: Context) -> Reply:
    body = {"error": error_object(message, "invalid_request_error", None)}
    return json_reply(400, body, headers(ctx))
