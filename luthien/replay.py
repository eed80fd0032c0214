"""``luthien policy replay FILE|VERSION``: a dry run of a policy over recorded calls, printed."""

import argparse
import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from controlplane.dry_run import CallReplay, DryRunReport
from controlplane.recording.records import CallOutcome
from controlplane.storage import open_storage
from controlplane.storage.base import CallQuery, Storage, StorageUnavailable
from dashboard.diff import call_diffs
from luthien.options import data_dir

#: A stored version's id (``luthien policy history``), when no file of that name exists.
_VERSION = re.compile(r"^[0-9a-f]{12}$")


def is_version(candidate: str) -> bool:
    """A command's FILE|VERSION argument names a stored version: no file has its name."""
    return bool(_VERSION.match(candidate)) and not Path(candidate).exists()


class _Refused(Exception):
    """The command cannot run: the message says why."""


def replay(args: argparse.Namespace) -> int:
    from controlplane.policy_file import PolicyFileError

    if args.redis_url:  # the judge reads its shared cache from REDIS_URL, as in the proxies
        os.environ["REDIS_URL"] = args.redis_url
    try:
        report = asyncio.run(_replay(args))
    except PolicyFileError as exc:
        for problem in exc.problems:
            print(f"luthien: {problem}", file=sys.stderr)
        return 1
    except _Refused as exc:
        print(f"luthien: {exc}", file=sys.stderr)
        return 1
    if report is None:
        print("no recorded calls match")
        return 0
    if args.json:
        print(json.dumps(_as_json(report), indent=1, default=str))
    else:
        print(_table(report, args.candidate))
    return 0


async def _replay(args: argparse.Namespace) -> DryRunReport | None:
    from controlplane.dry_run import recorded_calls
    from luthien.dry_run import DryRun

    query = CallQuery(
        host=args.host, model=args.model, outcome=args.outcome, since=args.since, until=args.until
    )
    storage = open_storage(args.database_url, data_dir(args))
    try:
        document = await _candidate(args.candidate, storage)
        calls = await recorded_calls(storage, query, args.limit)
    except StorageUnavailable as exc:
        raise _Refused(f"cannot read the database: {exc}") from exc
    finally:
        await storage.close()
    return await DryRun().run(document, calls, judge=args.judge) if calls else None


async def _candidate(candidate: str, storage: Storage) -> Any:
    """The candidate's policy document, checked (its problems located in it) before any call
    is read: a policy file's, or a stored version's."""
    from controlplane.policy_file import load_policy_file, policy_from_document

    path = Path(candidate)
    if not is_version(candidate):
        load_policy_file(path)
        return yaml.safe_load(path.read_text())
    stored = await storage.policy_version(candidate)
    if stored is None:
        raise _Refused(f"{candidate}: neither a policy file nor a stored version (luthien policy history)")
    policy_from_document(stored.document, f"version {candidate}")
    return stored.document


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
