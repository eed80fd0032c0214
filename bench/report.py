"""The markdown report of a run: the figures, the ratios between targets, and the goals."""

from __future__ import annotations

from collections.abc import Sequence

from bench.results import Run, TargetResult, goals


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def figures(run: Run) -> str:
    direct = run.find("direct")
    assert direct is not None
    rows = []
    for r in run.results:
        rows.append(
            [
                r.name,
                number(r.ready_s),
                number(r.rss_idle_mib, 0),
                number(r.latency_p50_ms, 2),
                number(r.latency_p99_ms, 2),
                number(r.calls_per_s, 0),
                number(r.stream_first_byte_ms, 2),
                number(r.stream_total_ms, 1),
                "-" if r is direct else number(r.per_event_us(direct), 0),
                number(r.stream_cpu_us_per_event, 0),
                "-" if r.stream_growth_mib is None else f"{r.stream_growth_mib:+.1f}",
            ]
        )
    s = run.settings
    headers = [
        "target",
        "ready s",
        "RSS idle MiB",
        "p50 ms",
        "p99 ms",
        f"calls/s (c={s.concurrency})",
        f"stream first byte ms ({s.stream_events} events)",
        "stream total ms",
        "per event µs",
        "CPU per event µs",
        f"RSS +{s.open_streams} streams MiB",
    ]
    return table(headers, rows)


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x"


def ratios(run: Run, base: TargetResult) -> str:
    rows = [
        [
            r.name,
            ratio(r.latency_p50_ms, base.latency_p50_ms),
            ratio(r.calls_per_s, base.calls_per_s),
            f"{r.stream_first_byte_ms - base.stream_first_byte_ms:+.2f} ms",
            ratio(r.stream_total_ms, base.stream_total_ms),
            ratio(r.stream_cpu_us_per_event, base.stream_cpu_us_per_event)
            if r.stream_cpu_us_per_event and base.stream_cpu_us_per_event
            else "-",
        ]
        for r in run.results
        if r is not base
    ]
    return table(["target", "p50", "calls/s", "stream first byte", "stream total", "CPU per event"], rows)


def render(run: Run) -> str:
    m, s = run.machine, run.settings
    parts = [
        f"Luthien benchmark, {run.started}, {run.seconds:.0f} s",
        "",
        f"Machine: {m.cpu}, {m.cores} cores ({m.usable_cores} usable), Python {m.python}, {m.system}. "
        f"Latency: {s.requests} sequential non-streaming chat calls after {s.warmup} warm-up, each "
        f"answered with a tool call. Throughput: {s.concurrency} concurrent clients, median of 3 rounds of "
        f"{s.throughput_seconds:.0f} s. Streams: {s.stream_requests} chat streams of {s.stream_events} "
        f"events, medians. Targets take turns, round by round. Memory: VmRSS of the process the client "
        "talks to.",
        "",
        "Targets:",
        *(f"- `{r.name}`: {r.description}" for r in run.results),
        "",
        figures(run),
    ]
    for base_name in ("mitmproxy", "litellm", "direct"):
        if (base := run.find(base_name)) is not None:
            parts += [
                "",
                f"Against `{base_name}` (x: times the base; first byte: difference):",
                "",
                ratios(run, base),
            ]
    extra = [
        f"{r.name}: {name} {rss:.0f} MiB"
        for r in run.results
        for name, rss in r.other_processes_rss_mib.items()
    ]
    if extra:
        parts += ["", "Other processes (not counted above): " + "; ".join(extra) + "."]
    found = goals(run)
    if found:
        rows = [[g.what, g.goal, g.measured, "met" if g.met else "**missed**"] for g in found]
        parts += ["", "Goals:", "", table(["goal", "wanted", "measured", ""], rows)]
    return "\n".join(parts)
