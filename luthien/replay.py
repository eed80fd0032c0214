"""``luthien policy replay FILE``: a dry run of a policy file over recorded calls, printed."""

import argparse
import asyncio
import json
import sys
from typing import Any

import yaml

from controlplane.dry_run import CallReplay, DryRunReport
from controlplane.recording.records import CallOutcome
from controlplane.storage import open_storage
from controlplane.storage.base import CallQuery, StorageUnavailable
from dashboard.diff import call_diffs
from luthien.options import data_dir


def replay(args: argparse.Namespace) -> int:
    from controlplane.policy_file import PolicyFileError, load_policy_file
    from luthien.dry_run import DryRun, recorded_calls

    try:
        load_policy_file(args.file)  # its problems, located in the file, before any call is read
    except PolicyFileError as exc:
        for problem in exc.problems:
            print(f"luthien: {problem}", file=sys.stderr)
        return 1
    document = yaml.safe_load(args.file.read_text())
    query = CallQuery(
        host=args.host, model=args.model, outcome=args.outcome, since=args.since, until=args.until
    )

    async def run() -> DryRunReport | None:
        storage = open_storage(args.database_url, data_dir(args))
        try:
            calls = await recorded_calls(storage, query, args.limit)
        finally:
            await storage.close()
        return await DryRun().run(document, calls, judge=args.judge) if calls else None

    try:
        report = asyncio.run(run())
    except StorageUnavailable as exc:
        print(f"luthien: cannot read the recorded calls: {exc}", file=sys.stderr)
        return 1
    if report is None:
        print("no recorded calls match")
        return 0
    if args.json:
        print(json.dumps(_as_json(report), indent=1, default=str))
    else:
        print(_table(report, str(args.file)))
    return 0


def _as_json(report: DryRunReport) -> dict[str, Any]:
    calls = []
    for call in report.calls:
        shown = call.model_dump(mode="json", exclude={"replayed"})
        if call.affected:
            shown["diffs"] = call_diffs(call.replayed).model_dump(mode="json")
        calls.append(shown)
    return {"summary": report.summary(), "calls": calls}


def _table(report: DryRunReport, source: str) -> str:
    summary = report.summary()
    lines = [
        f"Dry run of {source} (version {report.policy_version}) over {len(report.calls)} recorded calls, "
        f"judge: {report.judge}: {report.seconds:.2f} s, {report.calls_per_second:.0f} calls/s",
        "",
        f"{'':<24}{'calls':>8}",
        f"{'affected':<24}{report.affected:>8}",
        f"{'blocked':<24}{report.blocked:>8}",
        *(f"{'  ' + kind:<24}{count:>8}" for kind, count in summary["by_kind"].items()),
        f"{'modified':<24}{report.modified:>8}",
        f"{'judge skipped (tools)':<24}{report.judge_skipped:>8}",
    ]
    if rules := report.by_rule():
        width = max(24, *(len(rule) + 2 for rule in rules))
        lines += ["", f"{'rule':<{width}}{'calls':>8}", *(f"{r:<{width}}{n:>8}" for r, n in rules.items())]
    affected = [call for call in report.calls if call.affected or call.notes]
    if affected:
        lines += ["", "calls affected:"]
        lines += [_call_line(call) for call in affected]
    return "\n".join(lines)


def _call_line(call: CallReplay) -> str:
    record = call.replayed
    was = call.recorded_outcome.value + (f" ({call.recorded_block_kind})" if call.recorded_block_kind else "")
    now = call.outcome.value + (f" ({call.block_kind})" if call.block_kind else "")
    parts = [
        f"{record.started_at:%Y-%m-%d %H:%M:%S}",
        call.call_id[:12],
        record.host,
        record.model or "-",
        was if was == now else f"{was} -> {now}",
    ]
    if call.rules:
        parts.append("rules: " + ", ".join(dict.fromkeys(call.rules)))
    if call.request_modified:
        parts.append("request rewritten")
    if call.response_modified:
        parts.append("response rewritten")
    if call.judge_skipped:
        parts.append(f"judge skipped {call.judge_skipped}")
    if call.outcome is CallOutcome.BLOCKED and record.error:
        parts.append(record.error)
    return "  ".join([*parts, *call.notes])
