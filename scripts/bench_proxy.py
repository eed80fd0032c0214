#!/usr/bin/env python3
"""Benchmark Luthien's overhead against a local fake provider, in one run.

Measures, against 127.0.0.1 only:

* per API (chat, responses, messages) x {non-streaming, streaming}: latency of requests sent
  directly to the fake provider vs through a proxy running NoOpPolicy, UppercaseNthWordPolicy
  (every stream chunk rewritten) and ToolCallBlocklistPolicy; medians, p90 and proxy/direct ratio;
* 20 concurrent streaming requests, direct vs through the NoOp proxy (wall time per round);
* resident memory of each proxy process after start-up and after the load.

Usage (from the repository root)::

    .venv/bin/python scripts/bench_proxy.py [--requests 200] [--warmup 20] [--rounds 7]

Progress goes to stderr, the results table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from certs import ensure_ca
from tests.fake_provider import FakeProvider

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
STARTUP_TIMEOUT = 120.0  # seconds; LiteLLM's import alone takes ~12-15 s per proxy
REQUEST_TIMEOUT = 30.0  # a hung request must fail the run, not stall it
PROVIDER_HOSTS = ("api.openai.com", "api.anthropic.com")

# Proxy name -> policy section of its YAML file (None: no --policy, i.e. NoOpPolicy).
POLICIES: dict[str, dict[str, Any] | None] = {
    "noop": None,
    "uppercase": {"class": "UppercaseNthWordPolicy", "config": {"n": 2}},
    "blocklist": {"class": "ToolCallBlocklistPolicy", "config": {"patterns": [r"rm\s+-rf"]}},
}


@dataclass(frozen=True)
class Api:
    name: str
    host: str  # the real provider host the client addresses through the proxy
    path: str
    body: dict[str, Any]  # without "stream"; added per request

    def payload(self, stream: bool) -> dict[str, Any]:
        return {**self.body, "stream": stream}


USER_MESSAGES = [{"role": "user", "content": "hi"}]
APIS = (
    Api("chat", "api.openai.com", "/v1/chat/completions", {"model": "gpt-4o", "messages": USER_MESSAGES}),
    Api("responses", "api.openai.com", "/v1/responses", {"model": "gpt-5", "input": "hi"}),
    Api(
        "messages",
        "api.anthropic.com",
        "/v1/messages",
        {"model": "claude-sonnet-4-6", "max_tokens": 256, "messages": USER_MESSAGES},
    ),
)


# --- results -----------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: a value that was actually observed."""
    ordered = sorted(values)
    index = max(0, math.ceil(pct / 100 * len(ordered)) - 1)
    return ordered[index]


@dataclass
class Cell:
    """Latencies (seconds) of one API x mode x route; ttfb stays empty for non-streaming."""

    api: str
    streaming: bool
    via: str
    total: list[float] = field(default_factory=list)
    ttfb: list[float] = field(default_factory=list)


@dataclass
class ConcurrencyResult:
    via: str
    walls: list[float]  # seconds per round of `concurrency` simultaneous streams


@dataclass
class ProxyMemory:
    name: str
    start_kib: int
    after_kib: int


# --- processes ---------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class ProxyProcess:
    name: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_proxy(name: str, policy: dict[str, Any] | None, fake_url: str, work: Path) -> ProxyProcess:
    port = free_port()
    args = [sys.executable, "-m", "luthien", "proxy", "--port", str(port), "--data-dir", str(work / "data")]
    # WARNING: per-request INFO logging would be measured as proxy overhead.
    args += ["--log-level", "WARNING"]
    for host in PROVIDER_HOSTS:
        args += ["--provider-host", host, "--upstream", f"{host}={fake_url}"]
    if policy is not None:
        policy_file = work / f"{name}.yaml"
        policy_file.write_text(yaml.safe_dump({"policy": policy}))
        args += ["--policy", str(policy_file)]
    log_path = work / f"{name}.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    return ProxyProcess(name, port, log_path, process)


def wait_until_listening(proxies: Sequence[ProxyProcess]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    pending = list(proxies)
    while pending:
        for proxy in list(pending):
            if "listening on" in proxy.output():
                pending.remove(proxy)
            elif proxy.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"proxy {proxy.name} did not start:\n{proxy.output()[-3000:]}")
        time.sleep(0.2)


def stop_proxies(proxies: Sequence[ProxyProcess]) -> None:
    # Terminate all first so they shut down in parallel, then kill any that linger.
    for proxy in proxies:
        if proxy.process.poll() is None:
            proxy.process.terminate()
    for proxy in proxies:
        try:
            proxy.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proxy.process.kill()
            proxy.process.wait(timeout=10)


@contextmanager
def running_setup(work: Path) -> Iterator[tuple[FakeProvider, dict[str, ProxyProcess]]]:
    """One fake provider (delay 0: measure the proxy, not pacing) and one proxy per policy."""
    fake = FakeProvider(delay=0.0).start()
    proxies: dict[str, ProxyProcess] = {}
    try:
        # Created up front so the proxies don't race each other to write it.
        ensure_ca(work / "data")
        log(f"fake provider at {fake.url}; starting {len(POLICIES)} proxies in parallel")
        for name, policy in POLICIES.items():
            proxies[name] = start_proxy(name, policy, fake.url, work)
        started = time.monotonic()
        wait_until_listening(list(proxies.values()))
        log(f"proxies listening after {time.monotonic() - started:.1f} s")
        yield fake, proxies
    finally:
        log("stopping proxies and fake provider")
        stop_proxies(list(proxies.values()))
        fake.stop()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --- measurement -------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """Where a client sends its requests: straight to the fake, or to the real host via a proxy."""

    via: str
    proxy_url: str | None
    base_url: dict[str, str]  # API name -> base URL

    def url(self, api: Api) -> str:
        return self.base_url[api.name] + api.path


def make_routes(fake_url: str, proxies: dict[str, ProxyProcess]) -> dict[str, Route]:
    routes = {"direct": Route("direct", None, {api.name: fake_url for api in APIS})}
    for name, proxy in proxies.items():
        routes[name] = Route(name, proxy.url, {api.name: f"https://{api.host}" for api in APIS})
    return routes


def client_kwargs(route: Route, verify: ssl.SSLContext) -> dict[str, Any]:
    # trust_env=False: an HTTP(S)_PROXY in the environment must not reroute the direct runs.
    kwargs: dict[str, Any] = {"timeout": REQUEST_TIMEOUT, "trust_env": False}
    if route.proxy_url is not None:
        kwargs.update(proxy=route.proxy_url, verify=verify)
    return kwargs


def timed_request(client: httpx.Client, url: str, payload: dict[str, Any]) -> tuple[float, float]:
    """(time to first body chunk, total time) in seconds, reading the body as it arrives."""
    first: float | None = None
    start = time.perf_counter()
    with client.stream("POST", url, json=payload) as response:
        for chunk in response.iter_raw():
            if first is None and chunk:
                first = time.perf_counter()
        end = time.perf_counter()
    if response.status_code != 200:
        raise RuntimeError(f"POST {url} -> {response.status_code}")
    return (first if first is not None else end) - start, end - start


def measure_cell(
    client: httpx.Client, route: Route, api: Api, streaming: bool, requests: int, warmup: int
) -> Cell:
    cell = Cell(api.name, streaming, route.via)
    url, payload = route.url(api), api.payload(streaming)
    for _ in range(warmup):
        timed_request(client, url, payload)
    for _ in range(requests):
        ttfb, total = timed_request(client, url, payload)
        cell.total.append(total)
        if streaming:
            cell.ttfb.append(ttfb)
    return cell


def check_policies_active(routes: dict[str, Route], verify: ssl.SSLContext) -> None:
    """Guard against benchmarking a misconfigured setup: each route must answer, and the
    uppercase proxy must actually rewrite the stream."""
    bodies: dict[str, bytes] = {}
    api = APIS[0]
    for via, route in routes.items():
        with httpx.Client(**client_kwargs(route, verify)) as client:
            response = client.post(route.url(api), json=api.payload(True))
            response.raise_for_status()
            bodies[via] = response.content
    if bodies["uppercase"] == bodies["noop"]:
        raise RuntimeError("UppercaseNthWordPolicy did not change the stream; is the policy loaded?")


def measure_latencies(
    routes: dict[str, Route], verify: ssl.SSLContext, requests: int, warmup: int
) -> list[Cell]:
    # One persistent client per route: connections (and TLS tunnels) are reused, as an SDK does.
    clients = {via: httpx.Client(**client_kwargs(route, verify)) for via, route in routes.items()}
    cells: list[Cell] = []
    try:
        for api in APIS:
            for streaming in (False, True):
                for via, route in routes.items():
                    cell = measure_cell(clients[via], route, api, streaming, requests, warmup)
                    cells.append(cell)
                    mode = "stream" if streaming else "json"
                    log(f"{api.name:9} {mode:6} {via:9} median {statistics.median(cell.total) * 1e3:7.2f} ms")
    finally:
        for client in clients.values():
            client.close()
    return cells


async def one_stream(client: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> None:
    async with client.stream("POST", url, json=payload) as response:
        async for _ in response.aiter_raw():
            pass
    if response.status_code != 200:
        raise RuntimeError(f"POST {url} -> {response.status_code}")


async def measure_concurrency_route(
    route: Route, verify: ssl.SSLContext, concurrency: int, rounds: int
) -> ConcurrencyResult:
    api = APIS[0]
    url, payload = route.url(api), api.payload(True)
    # Enough pooled connections that all streams really run at once and stay open between rounds.
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    walls: list[float] = []
    async with httpx.AsyncClient(limits=limits, **client_kwargs(route, verify)) as client:
        for number in range(rounds + 1):
            start = time.perf_counter()
            await asyncio.gather(*(one_stream(client, url, payload) for _ in range(concurrency)))
            if number:  # round 0 is the warm-up that opens the connections
                walls.append(time.perf_counter() - start)
    return ConcurrencyResult(route.via, walls)


async def measure_concurrency(
    routes: Sequence[Route], verify: ssl.SSLContext, concurrency: int, rounds: int
) -> list[ConcurrencyResult]:
    results = []
    for route in routes:
        result = await measure_concurrency_route(route, verify, concurrency, rounds)
        log(
            f"concurrency {concurrency} via {route.via}: "
            f"median {statistics.median(result.walls) * 1e3:.1f} ms"
        )
        results.append(result)
    return results


# --- report ------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int) -> str:
    """Aligned plain-text table; the first `left` columns are text, the rest right-aligned numbers."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x"


def latency_table(cells: Sequence[Cell]) -> str:
    direct = {(c.api, c.streaming): c for c in cells if c.via == "direct"}
    rows = []
    for cell in cells:
        base = direct[(cell.api, cell.streaming)]
        is_direct = cell.via == "direct"
        total_median = statistics.median(cell.total)
        row = [cell.api, "stream" if cell.streaming else "json", cell.via]
        if cell.streaming:
            ttfb_median = statistics.median(cell.ttfb)
            row += [
                ms(ttfb_median),
                ms(percentile(cell.ttfb, 90)),
                "-" if is_direct else ratio(ttfb_median, statistics.median(base.ttfb)),
            ]
        else:
            row += ["-", "-", "-"]
        row += [
            ms(total_median),
            ms(percentile(cell.total, 90)),
            "-" if is_direct else ratio(total_median, statistics.median(base.total)),
        ]
        rows.append(row)
    headers = ["api", "mode", "via", "ttfb p50", "ttfb p90", "ttfb x", "total p50", "total p90", "total x"]
    return format_table(headers, rows, left=3)


def concurrency_table(results: Sequence[ConcurrencyResult]) -> str:
    base = statistics.median(next(r for r in results if r.via == "direct").walls)
    rows = []
    for result in results:
        median = statistics.median(result.walls)
        rows.append(
            [
                result.via,
                ms(median),
                ms(min(result.walls)),
                ms(max(result.walls)),
                "-" if result.via == "direct" else ratio(median, base),
            ]
        )
    return format_table(["via", "wall p50", "wall min", "wall max", "x"], rows, left=1)


def memory_table(memory: Sequence[ProxyMemory]) -> str:
    rows = [
        [
            m.name,
            f"{m.start_kib / 1024:.1f}",
            f"{m.after_kib / 1024:.1f}",
            f"{(m.after_kib - m.start_kib) / 1024:+.1f}",
        ]
        for m in memory
    ]
    return format_table(["proxy", "RSS start MiB", "RSS after MiB", "delta MiB"], rows, left=1)


def report(
    args: argparse.Namespace,
    cells: Sequence[Cell],
    concurrency: Sequence[ConcurrencyResult],
    memory: Sequence[ProxyMemory],
) -> str:
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0))
    return "\n".join(
        [
            "Luthien proxy benchmark (fake provider on 127.0.0.1: stream delay 0, TCP_NODELAY)",
            f"cores: {cores} (usable {usable}); Python {platform.python_version()} "
            f"({platform.python_implementation()}); {platform.system()} {platform.machine()}",
            f"{args.requests} requests per cell after {args.warmup} warm-up, sequential, one persistent "
            "client per route; times in ms; x = proxy median / direct median",
            "",
            latency_table(cells),
            "",
            f"{args.concurrency} concurrent streaming chat requests, "
            f"{args.rounds} rounds after 1 warm-up round:",
            concurrency_table(concurrency),
            "",
            "Proxy memory (VmRSS), after start-up and after all the load above:",
            memory_table(memory),
        ]
    )


# --- main --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200, help="measured requests per cell (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up requests per cell (default 20)")
    parser.add_argument("--concurrency", type=int, default=20, help="simultaneous streams (default 20)")
    parser.add_argument("--rounds", type=int, default=7, help="measured concurrency rounds (default 7)")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.warmup < 0 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--requests, --concurrency and --rounds must be >= 1, --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Turn a SIGTERM (e.g. from `timeout`) into SystemExit so the finally blocks stop the proxies.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="luthien-bench-") as tmp,
        running_setup(Path(tmp)) as (fake, proxies),
    ):
        start_rss = {name: rss_kib(p.process.pid) for name, p in proxies.items()}
        verify = ssl.create_default_context(cafile=str(Path(tmp) / "data" / "ca" / "ca-bundle.pem"))
        routes = make_routes(fake.url, proxies)
        check_policies_active(routes, verify)
        cells = measure_latencies(routes, verify, args.requests, args.warmup)
        concurrency = asyncio.run(
            measure_concurrency([routes["direct"], routes["noop"]], verify, args.concurrency, args.rounds)
        )
        memory = [ProxyMemory(name, start_rss[name], rss_kib(p.process.pid)) for name, p in proxies.items()]
    print(report(args, cells, concurrency, memory))
    log(f"done in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
