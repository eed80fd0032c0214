"""The load a target is measured under: each function sends requests and returns raw timings.

Requests are raw httpx, not an SDK, so the client's own cost stays small and equal for all
targets. Through a proxy the client tunnels (CONNECT) and speaks TLS to the real host name, as
an agent with ``HTTPS_PROXY`` does; connections are kept alive between requests, as SDKs do.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from bench.targets import Route

REQUEST_TIMEOUT = 60.0  # a hung request fails the run rather than stalling it
# A tool call in every answer, so a tool-call policy (the judge) has work on every call.
TOOL_CALL_REQUEST = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "list files [scenario:tool_call ls -la]"}],
}


def stream_request(words: int) -> dict[str, Any]:
    """A chat stream of one event per word, sent as fast as the fake provider can."""
    content = f"say many words [scenario:long {words}]"
    return {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": content}]}


def slow_stream_request(seconds_per_event: float) -> dict[str, Any]:
    content = f"say hello slowly [scenario:slow {seconds_per_event}]"
    return {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": content}]}


def client(route: Route, verify: ssl.SSLContext, connections: int = 1) -> httpx.AsyncClient:
    # trust_env=False: an HTTPS_PROXY in the benchmark's own environment must not reroute it.
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(
        base_url=route.base_url,
        headers=dict(route.headers),
        proxy=route.proxy,
        verify=verify,
        timeout=REQUEST_TIMEOUT,
        limits=limits,
        trust_env=False,
    )


@dataclass(frozen=True)
class Timing:
    first_byte: float  # seconds from sending to the first body byte
    total: float  # seconds from sending to the last body byte
    size: int  # body bytes


async def timed_post(
    http: httpx.AsyncClient, body: dict[str, Any], on_first_byte: Callable[[], None] | None = None
) -> Timing:
    start = time.perf_counter()
    first: float | None = None
    size = 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        async for chunk in response.aiter_raw():
            if first is None and chunk:
                first = time.perf_counter()
                if on_first_byte is not None:
                    on_first_byte()
            size += len(chunk)
    end = time.perf_counter()
    if response.status_code != 200:
        raise RuntimeError(f"POST {http.base_url} -> {response.status_code}")
    return Timing((first or end) - start, end - start, size)


async def sequential(http: httpx.AsyncClient, body: dict[str, Any], count: int, warmup: int) -> list[Timing]:
    for _ in range(warmup):
        await timed_post(http, body)
    return [await timed_post(http, body) for _ in range(count)]


async def throughput(http: httpx.AsyncClient, concurrency: int, seconds: float, warmup: float) -> float:
    """Completed calls per second with ``concurrency`` clients calling back to back."""
    done = 0
    measuring = False

    async def worker(stop_at: float) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await timed_post(http, TOOL_CALL_REQUEST)
            if measuring:
                done += 1

    start = time.perf_counter()
    workers = [asyncio.create_task(worker(start + warmup + seconds)) for _ in range(concurrency)]
    await asyncio.sleep(warmup)
    measuring, began = True, time.perf_counter()
    await asyncio.gather(*workers)
    return done / (time.perf_counter() - began)


async def hold_open_streams(
    http: httpx.AsyncClient, count: int, seconds_per_event: float, while_open: Callable[[], Any]
) -> Any:
    """Opens ``count`` slow streams; once every one has its first byte, calls ``while_open``
    (which samples memory) and returns its result after the streams have ended."""
    started = 0
    all_open = asyncio.Event()

    def first_byte() -> None:
        nonlocal started
        started += 1
        if started == count:
            all_open.set()

    body = slow_stream_request(seconds_per_event)
    streams = asyncio.gather(*(timed_post(http, body, first_byte) for _ in range(count)))
    try:
        await asyncio.wait_for(all_open.wait(), REQUEST_TIMEOUT)
        result = while_open()
    finally:
        await streams
    return result
