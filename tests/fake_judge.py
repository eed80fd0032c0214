"""A fake LLM judge: a real local HTTP server speaking the OpenAI Chat Completions API.

It scores the tool call it is asked about by looking at the text of the request's last user
message: the first rule whose substring occurs there gives the score, else ``default_score``.
Tests switch ``mode`` to make it slow, fail, or answer with something that is not a score, and
read ``requests`` to see whether the judge was asked at all.

Use as ``judge = FakeJudge().start()`` ... ``judge.stop()``, or as a context manager; or run it
standalone with ``python -m tests.fake_judge``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from fastapi import FastAPI, Request, Response

from tests.background_server import BackgroundServer, serve_until_interrupted

GATE_TIMEOUT = 30.0

#: ``score``: a JSON answer; ``fenced``: the same inside a Markdown code fence with chatter
#: around it; ``slow``: the answer after ``delay`` seconds; ``error``: HTTP 500;
#: ``garbage``: a 200 answer that holds no score.
Mode = Literal["score", "fenced", "slow", "error", "garbage"]

DEFAULT_RULES: tuple[tuple[str, float], ...] = (("rm -rf", 0.95), ("DROP TABLE", 0.9))


@dataclass
class JudgeRequest:
    headers: dict[str, str]  # lower-case names
    body: dict[str, Any]

    @property
    def user_text(self) -> str:
        users = [m for m in self.body.get("messages", []) if m.get("role") == "user"]
        return _text(users[-1].get("content")) if users else ""


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


@dataclass
class FakeJudge:
    rules: list[tuple[str, float]] = field(default_factory=lambda: list(DEFAULT_RULES))
    default_score: float = 0.1
    mode: Mode = "score"
    delay: float = 2.0  # for mode "slow"
    url: str = ""  # the OpenAI-style base URL, ending in /v1, once started
    requests: list[JudgeRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._gate: asyncio.Event | None = None  # while set, answers wait for it
        self._lock = threading.Lock()
        self.app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
        self.app.add_api_route("/v1/chat/completions", self._complete, methods=["POST"])
        self._background = BackgroundServer(self.app, "fake-judge")

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> Self:
        self.url = self._background.start() + "/v1"
        return self

    def stop(self) -> None:
        self.release()
        self._background.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- test-facing helpers ---------------------------------------------------------

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def reset(self, mode: Mode = "score") -> None:
        self.release()
        with self._lock:
            self.requests.clear()
        self.mode = mode

    def hold(self) -> None:
        """From now on answers wait (after being recorded) until ``release()``."""
        self._gate = asyncio.Event()  # not bound to a loop until first awaited

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            self._background.call_soon(gate.set)

    def wait_for_requests(self, n: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.count < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"expected {n} judge requests, got {self.count}")
            time.sleep(0.005)

    def score_for(self, text: str) -> float:
        for needle, score in self.rules:
            if needle in text:
                return score
        return self.default_score

    # --- serving ---------------------------------------------------------------------

    async def _complete(self, request: Request) -> Response:
        body = json.loads(await request.body())
        record = JudgeRequest(dict(request.headers), body)
        with self._lock:
            self.requests.append(record)
        if (gate := self._gate) is not None:
            # A forgotten release() should slow a test down, not hang it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gate.wait(), GATE_TIMEOUT)
        mode = self.mode
        if mode == "slow":
            await asyncio.sleep(self.delay)
        if mode == "error":
            error = {"error": {"message": "the fake judge failed", "type": "server_error", "code": None}}
            return Response(json.dumps(error), 500, media_type="application/json")
        score = self.score_for(record.user_text)
        verdict = json.dumps({"score": score, "reason": f"fake judge: {_why(score)}"})
        content = {
            "score": verdict,
            "slow": verdict,
            "fenced": f"Here is my assessment.\n```json\n{verdict}\n```\nHope that helps.",
            "garbage": "I would rather not say.",
        }[mode]
        return Response(json.dumps(_completion(body, content)), 200, media_type="application/json")


def _why(score: float) -> str:
    return "this looks destructive" if score >= 0.5 else "this looks harmless"


def _completion(body: dict[str, Any], content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fakejudge",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake-judge"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70},
    }


def main() -> None:
    """``python -m tests.fake_judge``: serve the fake judge standalone (the benchmark does)."""
    judge = FakeJudge().start()
    serve_until_interrupted("fake judge", judge.url, judge.stop)


if __name__ == "__main__":
    main()
