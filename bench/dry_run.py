"""A dry run over recorded calls: ``scripts/bench-dry-run`` (or ``.venv/bin/python -m bench.dry_run``).

Sends ``--calls`` calls (1,000 by default: the three APIs, whole and streamed, with prompts that
the candidate policy of tests/test_dry_run.py blocks, rewrites or lets through) with the
official SDKs through two real proxies on the fake provider: one with no policy, whose records
are the history, and one with the candidate. Then dry-runs policies over the history, a few
rounds each, and prints a markdown table of the throughput (calls per second), and the
candidate's counts beside those of the same policy run live on the same traffic (exit status 1
if they differ).
"""

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from controlplane.dry_run import DryRunReport, OfflineJudge, block_rules
from controlplane.recording.records import CallRecord
from luthien.dry_run import DryRun
from tests.conftest import SDK_CLIENT, RunningProxy, running_proxies
from tests.fake_provider import FakeProvider
from tests.test_dry_run import CANDIDATE, PROMPTS, stored_calls

APIS = ("chat", "responses", "messages")
POLICIES: dict[str, tuple[dict[str, Any], OfflineJudge]] = {
    "NoOpPolicy": ({"class": "NoOpPolicy"}, "skip"),
    "candidate (block, remove, rewrite)": (CANDIDATE, "skip"),
}


def log(message: str) -> None:
    print(f"[bench-dry-run {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def traffic(calls: int) -> list[dict[str, Any]]:
    """Each prompt in each API, whole and streamed, in turn."""
    out = []
    for n in range(calls):
        prompt, api, stream = (
            PROMPTS[n % len(PROMPTS)],
            APIS[(n // len(PROMPTS)) % 3],
            n // (3 * len(PROMPTS)),
        )
        out.append({"api": api, "stream": stream % 2 == 0, "prompt": f"{prompt} (#{n})"})
    return out


def send(proxy: RunningProxy, calls: list[dict[str, Any]], workers: int) -> None:
    """The calls through ``proxy``, by ``workers`` SDK processes at once."""
    shares = [calls[i::workers] for i in range(workers)]

    def run(share: list[dict[str, Any]]) -> None:
        worker = subprocess.run(
            [sys.executable, str(SDK_CLIENT)],
            input=json.dumps(share) + "\n",
            env=proxy.client_env(),
            capture_output=True,
            text=True,
            cwd="/",
            check=True,
        )
        assert len(json.loads(worker.stdout)) == len(share)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, shares))


def counts(blocked: int, modified: int, kinds: dict[str, int], rules: dict[str, int]) -> dict[str, int]:
    return (
        {"blocked": blocked, "modified": modified}
        | {f"kind {k}": n for k, n in kinds.items()}
        | {f"rule {r}": n for r, n in rules.items()}
    )


def live_counts(calls: Sequence[CallRecord]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    rules: dict[str, int] = {}
    for call in calls:
        if call.block_kind is not None:
            kinds[call.block_kind] = kinds.get(call.block_kind, 0) + 1
        for rule in dict.fromkeys(block_rules(call.decisions)):
            rules[rule] = rules.get(rule, 0) + 1
    return counts(sum(c.blocked for c in calls), sum(c.modified for c in calls), kinds, rules)


def report_counts(report: DryRunReport) -> dict[str, int]:
    kinds = {str(kind): n for kind, n in report.by_kind().items()}
    return counts(report.blocked, report.modified, kinds, report.by_rule())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=1000, help="calls recorded and replayed (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="dry runs per policy (default 3)")
    parser.add_argument("--workers", type=int, default=4, help="SDK processes per proxy (default 4)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    calls = traffic(args.calls)
    fake = FakeProvider(delay=0).start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-dry-run-") as root:
            specs: dict[str, tuple[dict[str, Any] | None, Sequence[str]]] = {
                "recorded": (None, []),
                "live": (CANDIDATE, []),
            }
            with running_proxies(specs, fake, Path(root)) as proxies:
                started = time.monotonic()
                with ThreadPoolExecutor(2) as pool:
                    list(pool.map(lambda proxy: send(proxy, calls, args.workers), proxies.values()))
                log(f"{len(calls)} calls sent through each proxy in {time.monotonic() - started:.0f} s")
                history = asyncio.run(stored_calls(proxies["recorded"], len(calls)))
                live = asyncio.run(stored_calls(proxies["live"], len(calls)))
        sent = len(fake.requests)
        rows = []
        candidate: DryRunReport | None = None
        for name, (policy, judge) in POLICIES.items():
            reports = [
                asyncio.run(DryRun().run({"policy": policy}, history, judge)) for _ in range(args.rounds)
            ]
            seconds = statistics.median(r.seconds for r in reports)
            last = reports[-1]
            rate = len(history) / seconds
            rows.append(f"| {name} | {len(history)} | {last.affected} | {seconds:.2f} | {rate:.0f} |")
            if policy is CANDIDATE:
                candidate = last
        assert len(fake.requests) == sent, "a dry run contacted the provider"
    finally:
        fake.stop()
    assert candidate is not None
    print("| dry run | calls | affected | seconds (median) | calls/s |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    expected, found = live_counts(live), report_counts(candidate)
    print("\n| candidate's count | live | dry run |")
    print("|---|---:|---:|")
    for key in sorted(set(expected) | set(found)):
        print(f"| {key} | {expected.get(key, 0)} | {found.get(key, 0)} |")
    if expected != found:
        print("\nthe dry run's counts differ from the live run's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
