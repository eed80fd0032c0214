"""What one run measured, as written to the JSON file, and the goals judged against it."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from pydantic import BaseModel


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest rank: a value that was actually observed."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


class TargetResult(BaseModel):
    name: str
    description: str
    ready_s: float | None  # spawn to the first call answered; None for direct
    rss_idle_mib: float | None  # right after start-up
    latency_p50_ms: float  # non-streaming call, concurrency 1
    latency_p99_ms: float
    calls_per_s: float  # non-streaming calls, concurrency 32
    stream_first_byte_ms: float  # 500-event stream, median
    stream_total_ms: float
    stream_events: int
    rss_before_streams_mib: float | None  # after all the load above
    rss_open_streams_mib: float | None  # with 200 streams open at once
    other_processes_rss_mib: dict[str, float] = {}  # e.g. the control plane, not a sidecar's cost

    @property
    def stream_growth_mib(self) -> float | None:
        if self.rss_open_streams_mib is None or self.rss_before_streams_mib is None:
            return None
        return self.rss_open_streams_mib - self.rss_before_streams_mib

    def per_event_us(self, direct: TargetResult) -> float:
        """What each stream event costs beyond direct, once the stream has started."""
        streaming = self.stream_total_ms - self.stream_first_byte_ms
        direct_streaming = direct.stream_total_ms - direct.stream_first_byte_ms
        return (streaming - direct_streaming) * 1000 / self.stream_events


class Machine(BaseModel):
    cores: int
    usable_cores: int
    cpu: str
    python: str
    system: str


class Settings(BaseModel):
    requests: int
    warmup: int
    concurrency: int
    throughput_seconds: float
    stream_events: int
    stream_requests: int
    open_streams: int


class Run(BaseModel):
    started: str  # ISO time
    seconds: float
    machine: Machine
    settings: Settings
    results: list[TargetResult]

    def find(self, name: str) -> TargetResult | None:
        return next((r for r in self.results if r.name == name), None)


MB_PER_MIB = 1.048576  # the goals are in MB, /proc reports KiB


class Goal(BaseModel):
    what: str
    goal: str
    measured: str
    met: bool


def goals(run: Run) -> list[Goal]:
    """The goals of docs/performance.md, judged on this run's NoOp rows against bare mitmproxy."""
    noop, bare, sidecar = run.find("noop"), run.find("mitmproxy"), run.find("noop-network")
    found: list[Goal] = []
    if noop is not None and bare is not None:
        p50 = noop.latency_p50_ms / bare.latency_p50_ms
        found.append(
            Goal(what="NoOp p50 latency", goal="<= 1.25x mitmproxy", measured=f"{p50:.2f}x", met=p50 <= 1.25)
        )
        calls = noop.calls_per_s / bare.calls_per_s
        found.append(
            Goal(what="NoOp throughput", goal=">= 0.8x mitmproxy", measured=f"{calls:.2f}x", met=calls >= 0.8)
        )
        extra = noop.stream_first_byte_ms - bare.stream_first_byte_ms
        found.append(
            Goal(
                what="NoOp stream first byte",
                goal="<= mitmproxy + 2 ms",
                measured=f"{extra:+.1f} ms",
                met=extra <= 2,
            )
        )
        total = noop.stream_total_ms / bare.stream_total_ms
        found.append(
            Goal(
                what="NoOp stream total", goal="<= 1.1x mitmproxy", measured=f"{total:.2f}x", met=total <= 1.1
            )
        )
    if noop is not None and (growth := noop.stream_growth_mib) is not None:
        streams = run.settings.open_streams
        what, measured = f"NoOp memory for {streams} open streams", f"{growth:+.1f} MiB"
        found.append(Goal(what=what, goal="<= 60 MB", measured=measured, met=growth * MB_PER_MIB <= 60))
    if sidecar is not None and sidecar.rss_idle_mib is not None and sidecar.ready_s is not None:
        idle = sidecar.rss_idle_mib
        found.append(
            Goal(
                what="Sidecar idle memory",
                goal="< 150 MB",
                measured=f"{idle:.0f} MiB",
                met=idle * MB_PER_MIB < 150,
            )
        )
        ready = sidecar.ready_s
        found.append(Goal(what="Sidecar ready", goal="< 5 s", measured=f"{ready:.1f} s", met=ready < 5))
    return found


def median_ms(values: Sequence[float]) -> float:
    return statistics.median(values) * 1000
