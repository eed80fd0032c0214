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
    # Process CPU time (user + system, every process of the target) over the streams, per event.
    stream_cpu_us_per_event: float | None = None
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


def _ratio_goal(what: str, value: float, base: float, most: float) -> Goal:
    """At most ``most`` times bare mitmproxy's figure."""
    ratio = value / base
    return Goal(what=what, goal=f"<= {most:g}x mitmproxy", measured=f"{ratio:.2f}x", met=ratio <= most)


def _cpu_goal(what: str, target: TargetResult | None, bare: TargetResult, most: float) -> list[Goal]:
    if target is None or target.stream_cpu_us_per_event is None or not bare.stream_cpu_us_per_event:
        return []
    return [_ratio_goal(what, target.stream_cpu_us_per_event, bare.stream_cpu_us_per_event, most)]


def _first_byte_goal(what: str, target: TargetResult | None, bare: TargetResult) -> list[Goal]:
    if target is None:
        return []
    extra = target.stream_first_byte_ms - bare.stream_first_byte_ms
    return [Goal(what=what, goal="<= mitmproxy + 1 ms", measured=f"{extra:+.1f} ms", met=extra <= 1)]


def _ahead_of_litellm(target: TargetResult, litellm: TargetResult) -> Goal:
    """Every column that both measure: lower is better except calls/s."""
    behind = [
        name
        for name, ours, theirs in (
            ("p50", target.latency_p50_ms, litellm.latency_p50_ms),
            ("p99", target.latency_p99_ms, litellm.latency_p99_ms),
            ("calls/s", -target.calls_per_s, -litellm.calls_per_s),
            ("first byte", target.stream_first_byte_ms, litellm.stream_first_byte_ms),
            ("stream total", target.stream_total_ms, litellm.stream_total_ms),
            ("CPU per event", target.stream_cpu_us_per_event, litellm.stream_cpu_us_per_event),
            ("ready", target.ready_s, litellm.ready_s),
            ("RSS idle", target.rss_idle_mib, litellm.rss_idle_mib),
        )
        if ours is not None and theirs is not None and ours > theirs
    ]
    return Goal(
        what=f"{target.name} ahead of LiteLLM's proxy",
        goal="every column",
        measured="behind on " + ", ".join(behind) if behind else "ahead on all",
        met=not behind,
    )


def goals(run: Run) -> list[Goal]:
    """The goals of docs/performance.md, judged on this run against bare mitmproxy."""
    noop, bare, sidecar = run.find("noop"), run.find("mitmproxy"), run.find("noop-network")
    regex, litellm = run.find("regex"), run.find("litellm")
    found: list[Goal] = []
    if bare is not None:
        if noop is not None:
            found += [
                _ratio_goal("NoOp p50 latency", noop.latency_p50_ms, bare.latency_p50_ms, 1.15),
                _ratio_goal("NoOp stream total", noop.stream_total_ms, bare.stream_total_ms, 1.0),
            ]
            calls = noop.calls_per_s / bare.calls_per_s
            found.append(
                Goal(
                    what="NoOp throughput",
                    goal=">= 0.8x mitmproxy",
                    measured=f"{calls:.2f}x",
                    met=calls >= 0.8,
                )
            )
        found += _cpu_goal("NoOp CPU per event", noop, bare, 1.2)
        found += _cpu_goal("regex (inspects every chunk) CPU per event", regex, bare, 2.5)
        found += _cpu_goal("Sidecar (proxy + control plane) CPU per event", sidecar, bare, 2.0)
        found += _first_byte_goal("NoOp stream first byte", noop, bare)
        found += _first_byte_goal("Sidecar stream first byte", sidecar, bare)
    if noop is not None and (growth := noop.stream_growth_mib) is not None:
        streams = run.settings.open_streams
        what, measured = f"NoOp memory for {streams} open streams", f"{growth:+.1f} MiB"
        found.append(Goal(what=what, goal="<= 60 MB", measured=measured, met=growth * MB_PER_MIB <= 60))
    if sidecar is not None and sidecar.rss_idle_mib is not None and sidecar.ready_s is not None:
        idle, ready = sidecar.rss_idle_mib, sidecar.ready_s
        found.append(
            Goal(
                what="Sidecar proxy idle memory",
                goal="<= 120 MiB",
                measured=f"{idle:.0f} MiB",
                met=idle <= 120,
            )
        )
        found.append(
            Goal(what="Sidecar proxy ready", goal="<= 3 s", measured=f"{ready:.1f} s", met=ready <= 3)
        )
    if litellm is not None:
        found += [_ahead_of_litellm(r, litellm) for r in (noop, sidecar) if r is not None]
    return found


def median_ms(values: Sequence[float]) -> float:
    return statistics.median(values) * 1000
