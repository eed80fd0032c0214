"""Luthien's benchmark: ``scripts/bench`` (or ``.venv/bin/python -m bench``).

Starts a fake provider and a fake judge. Starts each target alone (its start-up time and idle
memory), then measures latency, throughput and a long stream with every target taking turns,
round by round, and last the memory of each with many streams open. Prints a markdown report
with ratios and the goals of docs/performance.md, and writes the figures as JSON. Progress goes
to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import math
import os
import platform
import signal
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import load
from bench.report import render
from bench.results import Machine, Run, Settings, TargetResult, median_ms, percentile
from bench.targets import (
    ROOT,
    Process,
    Route,
    Running,
    Setup,
    Target,
    all_targets,
    ensure_litellm_venv,
    spawn,
    tree_targets,
    wait_for_line,
)
from certs import ensure_ca

READY_TIMEOUT = 120.0  # LiteLLM's proxy takes 15 s alone; much longer means something is wrong
ROUNDS = 10  # the sequential calls are split into this many rounds across the targets
THROUGHPUT_ROUNDS = 3
SLOW_EVENT_SECONDS = 0.25  # the open streams' pace: each stays open for about 4 s
# A chat stream of N words has N word events plus the role chunk, the finish chunk and [DONE].
STREAM_FRAMING_EVENTS = 3


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def family(pid: int) -> list[int]:
    """A process and its children, and theirs."""
    found, pids = [], [pid]
    while pids:
        current = pids.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").iterdir():
            pids += [int(child) for child in (task / "children").read_text().split()]
    return found


def rss_mib(pid: int) -> float:
    """VmRSS of a process and its children."""
    total_kib = 0
    for current in family(pid):
        status = Path(f"/proc/{current}/status").read_text()
        total_kib += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return total_kib / 1024


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(processes: Sequence[Process]) -> float:
    """User and system CPU time spent so far by these processes and their children."""
    ticks = 0
    for process in processes:
        for pid in family(process.popen.pid):
            # The command name (field 2) may hold spaces: the fields that follow its ")" are counted.
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLOCK_TICKS


async def wait_ready(route: Route, verify: ssl.SSLContext, process: Process) -> float:
    """Seconds from the process's spawn to its first answered call."""
    deadline = time.monotonic() + READY_TIMEOUT
    last_error: Exception | None = None
    while time.monotonic() < deadline and process.popen.poll() is None:
        # A fresh client per attempt: a refused CONNECT must not poison a pooled connection.
        async with load.client(route, verify) as http:
            try:
                await load.timed_post(http, load.TOOL_CALL_REQUEST)
                return time.monotonic() - process.spawned_at
            except (httpx.TransportError, RuntimeError) as error:
                last_error = error
        await asyncio.sleep(0.02)
    raise RuntimeError(f"{process.name} was not ready ({last_error!r}):\n{process.output()[-3000:]}")


@dataclass
class Contender:
    """A target under measurement (or the direct route) and what has been measured of it."""

    name: str
    description: str
    route: Route
    running: Running | None = None  # None: the direct route, no process of its own
    ready_s: float | None = None
    rss_idle_mib: float | None = None
    latencies: list[float] = field(default_factory=list)
    calls_per_s: list[float] = field(default_factory=list)
    streams: list[load.Timing] = field(default_factory=list)
    stream_cpu_s: float = 0.0  # CPU time of the target's processes over the measured streams
    rss_before_streams_mib: float | None = None
    rss_open_streams_mib: float | None = None

    def result(self, settings: Settings) -> TargetResult:
        running = self.running
        others = (
            {p.name: rss_mib(p.popen.pid) for p in running.processes if p is not running.measured}
            if running is not None
            else {}
        )
        return TargetResult(
            name=self.name,
            description=self.description,
            ready_s=self.ready_s,
            rss_idle_mib=self.rss_idle_mib,
            latency_p50_ms=median_ms(self.latencies),
            latency_p99_ms=percentile(self.latencies, 99) * 1000,
            calls_per_s=statistics.median(self.calls_per_s),
            stream_first_byte_ms=median_ms([t.first_byte for t in self.streams]),
            stream_total_ms=median_ms([t.total for t in self.streams]),
            stream_events=settings.stream_events,
            stream_cpu_us_per_event=(
                self.stream_cpu_s * 1e6 / (settings.stream_events * len(self.streams))
                if running is not None
                else None
            ),
            rss_before_streams_mib=self.rss_before_streams_mib,
            rss_open_streams_mib=self.rss_open_streams_mib,
            other_processes_rss_mib=others,
        )


async def start(target: Target, setup: Setup, verify: ssl.SSLContext) -> Contender:
    """Starts a target while nothing else is busy: its start-up time and idle memory."""
    log(f"{target.name}: starting")
    running = target.start(setup)
    contender = Contender(target.name, target.description, running.route, running)
    try:
        contender.ready_s = await wait_ready(running.route, verify, running.measured)
    except BaseException:
        stop(contender)
        raise
    await asyncio.sleep(1)  # let start-up work (first-call caches, the recorder) settle
    contender.rss_idle_mib = rss_mib(running.measured.popen.pid)
    log(f"{target.name}: ready after {contender.ready_s:.1f} s, {contender.rss_idle_mib:.0f} MiB")
    return contender


def stop(contender: Contender) -> None:
    for process in contender.running.processes if contender.running else ():
        process.stop()


async def measure(contenders: Sequence[Contender], verify: ssl.SSLContext, settings: Settings) -> None:
    """Every target in turn, round after round: a slow spell of the machine (it is shared) then
    falls on all of them alike instead of on whichever target was being measured."""
    clients = {c.name: load.client(c.route, verify) for c in contenders}
    try:
        log("latency")
        for c in contenders:
            await load.sequential(clients[c.name], load.TOOL_CALL_REQUEST, 0, settings.warmup)
        per_round = math.ceil(settings.requests / ROUNDS)
        for _ in range(ROUNDS):
            for c in contenders:
                timings = await load.sequential(clients[c.name], load.TOOL_CALL_REQUEST, per_round, 0)
                c.latencies += [t.total for t in timings]
        log("throughput")
        for _ in range(THROUGHPUT_ROUNDS):
            for c in contenders:
                async with load.client(c.route, verify, settings.concurrency) as many:
                    rate = await load.throughput(many, settings.concurrency, settings.throughput_seconds, 0.5)
                c.calls_per_s.append(rate)
        log("streams")
        body = load.stream_request(settings.stream_events - STREAM_FRAMING_EVENTS)
        for c in contenders:
            await load.sequential(clients[c.name], body, 0, 2)
        for _ in range(settings.stream_requests):
            for c in contenders:
                processes = c.running.processes if c.running is not None else []
                before = cpu_seconds(processes)
                c.streams.append(await load.timed_post(clients[c.name], body))
                c.stream_cpu_s += cpu_seconds(processes) - before
    finally:
        for http in clients.values():
            await http.aclose()
    for c in contenders:
        if c.running is not None:
            log(f"{c.name}: {settings.open_streams} open streams")
            pid = c.running.measured.popen.pid
            c.rss_before_streams_mib = rss_mib(pid)
            async with load.client(c.route, verify, settings.open_streams) as many:
                c.rss_open_streams_mib = await load.hold_open_streams(
                    many, settings.open_streams, SLOW_EVENT_SECONDS, functools.partial(rss_mib, pid)
                )


async def check_stream_events(route: Route, verify: ssl.SSLContext, events: int) -> None:
    """Guards STREAM_FRAMING_EVENTS against a change in the fake provider."""
    async with load.client(route, verify) as http:
        response = await http.post(
            "/v1/chat/completions", json=load.stream_request(events - STREAM_FRAMING_EVENTS)
        )
    counted = response.text.count("data:")
    if counted != events:
        raise RuntimeError(f"expected a {events}-event stream, the fake provider sent {counted}")


def start_helper(module: str, work: Path, *args: str) -> tuple[Process, str]:
    process = spawn(module.rsplit(".", 1)[-1], [sys.executable, "-m", module, *args], work)
    line = wait_for_line(process, "listening on")
    return process, line.split("listening on ", 1)[1].split()[0]


def machine() -> Machine:
    names = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
    cpu = names[0].split(":", 1)[1].strip() if names else platform.processor() or "unknown CPU"
    return Machine(
        cores=os.cpu_count() or 0,
        usable_cores=len(os.sched_getaffinity(0)),
        cpu=cpu,
        python=platform.python_version(),
        system=f"{platform.system()} {platform.release()} {platform.machine()}",
    )


async def run_all(targets: Sequence[Target], settings: Settings, work: Path) -> list[TargetResult]:
    fake, fake_url = start_helper("tests.fake_provider", work, "--delay", "0")
    judge, judge_url = start_helper("tests.fake_judge", work)
    try:
        setup = Setup(work=work, fake_url=fake_url, judge_url=judge_url, data_dir=work / "data")
        ca = ensure_ca(setup.data_dir)
        verify = ssl.create_default_context(cafile=str(ca.bundle))
        direct = Route(None, fake_url)
        await check_stream_events(direct, verify, settings.stream_events)
        contenders = [Contender("direct", "no proxy: plain HTTP to the fake provider", direct)]
        try:
            for target in targets:
                contenders.append(await start(target, setup, verify))
            await measure(contenders, verify, settings)
            return [c.result(settings) for c in contenders]
        finally:
            for contender in contenders:
                stop(contender)
    finally:
        fake.stop()
        judge.stop()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300, help="sequential calls per target (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="warm-up calls before them (default 30)")
    parser.add_argument("--concurrency", type=int, default=32, help="clients for throughput (default 32)")
    parser.add_argument(
        "--seconds", type=float, default=2, help="throughput measuring time per round, 3 rounds (default 2)"
    )
    parser.add_argument("--stream-events", type=int, default=500, help="events per long stream (default 500)")
    parser.add_argument(
        "--stream-requests", type=int, default=20, help="long streams per target (default 20)"
    )
    parser.add_argument(
        "--open-streams", type=int, default=200, help="streams held open at once (default 200)"
    )
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM's proxy (no venv to install)")
    parser.add_argument("--only", nargs="+", metavar="TARGET", help="measure only these targets (and direct)")
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="also measure noop@NAME, noop-network@NAME, regex@NAME and regex-network@NAME run from "
        "the source tree at PATH (e.g. a git worktree of an earlier commit), taking turns with the others",
    )
    parser.add_argument(
        "--json", type=Path, default=ROOT / ".bench" / "results.json", help="where to write the figures"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM (from `timeout`, say) becomes SystemExit, so the finally blocks stop every process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    trees = [t.partition("=") for t in args.tree]
    candidates = all_targets(not args.no_litellm)
    candidates += [target for name, _, path in trees for target in tree_targets(name, Path(path).resolve())]
    targets = [t for t in candidates if not args.only or t.name in args.only]
    if any(t.name == "litellm" for t in targets):
        log("installing LiteLLM's proxy into .bench/litellm (bench/litellm-proxy.txt)")
        ensure_litellm_venv()
    settings = Settings(
        requests=args.requests,
        warmup=args.warmup,
        concurrency=args.concurrency,
        throughput_seconds=args.seconds,
        stream_events=args.stream_events,
        stream_requests=args.stream_requests,
        open_streams=args.open_streams,
    )
    started = datetime.datetime.now(datetime.UTC)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="luthien-bench-") as tmp:
        results = asyncio.run(run_all(targets, settings, Path(tmp)))
    run = Run(
        started=started.isoformat(timespec="seconds"),
        seconds=time.monotonic() - began,
        machine=machine(),
        settings=settings,
        results=results,
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(run.model_dump_json(indent=2))
    print(render(run))
    log(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
