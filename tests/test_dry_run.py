"""A dry run of a policy over recorded calls, checked against the same policy run live.

Calls of all four APIs, whole and streamed, go through two real proxies with the official SDKs:
one with no policy (its records are the history to replay) and one with the candidate policy.
The dry run over the first's records must decide what the second decided, call by call: the
same calls blocked or rewritten, the same block kinds and rules, the same answer sent; and no
provider (nor judge) is contacted meanwhile.
"""

import asyncio
import json
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from controlplane.dry_run import DryRunReport, OfflineJudge, block_rules, recorded_calls
from controlplane.models import RequestMetadata
from controlplane.policies.chunks import ToolCall
from controlplane.policies.shared_state import KEY_PREFIX
from controlplane.policies.tool_call_judge import NOT_IN_CACHE, ToolCallJudgePolicy
from controlplane.policy_file import PolicyFileError
from controlplane.policy_versions import document_version
from controlplane.recording.records import BlockKind, CallOutcome, CallRecord
from controlplane.storage import PostgresStorage, SQLiteStorage
from controlplane.storage.base import CallQuery, Storage
from luthien.cli import main
from luthien.dry_run import NEVER_SENT, DryRun
from tests.conftest import RunningProxy, luthien, running_proxies
from tests.databases import fresh_postgres_database, require_service
from tests.fake_judge import FakeJudge
from tests.fake_provider import FakeProvider
from tests.test_dashboard_api import T0, call_record

CANDIDATE: dict[str, Any] = {
    "class": "SerialPolicy",
    "config": {
        "policies": [
            {"class": "tests.policies:BlockRequestsContaining", "config": {"word": "forbidden-word"}},
            {"class": "tests.policies:RewriteUserText", "config": {"old": "apple", "new": "orange"}},
            {
                "class": "ToolCallBlocklistPolicy",
                "config": {"block": [{"id": "no-rm", "name": "^bash$", "arguments": "rm -rf"}]},
            },
            {
                "class": "StringReplacementPolicy",
                "config": {"replacements": [{"find": "quick brown", "replace": "slow red"}]},
            },
        ]
    },
}
PROMPTS = [
    "tell me about an apple",  # request rewritten, answer rewritten
    "[scenario:tool_call rm -rf /tmp/x]",  # the tool call removed
    "[scenario:tool_call ls -la]",  # allowed
    "forbidden-word, please",  # request blocked
    "[scenario:error_429]",  # the provider's error, untouched
    "[scenario:two_tools rm -rf build]",  # one of two tool calls removed
    "[scenario:thinking]",
]
CALLS = [
    {"api": api, "stream": stream, "prompt": f"{prompt} (#{n})"}
    for n in range(1)
    for api in ("chat", "responses", "messages", "gemini")
    for stream in (False, True)
    for prompt in PROMPTS
]
REDIS_URL = "redis://127.0.0.1:6379/0"


async def stored_calls(proxy: RunningProxy, count: int) -> list[CallRecord]:
    """The proxy's recorded calls, oldest first, once all ``count`` are in its database."""
    storage = SQLiteStorage(Path(proxy.database_url.removeprefix("sqlite://")))
    try:
        deadline = time.monotonic() + 30
        while (await storage.list_calls(CallQuery(limit=1))).total < count:
            assert time.monotonic() < deadline, f"{proxy.name} recorded too few calls"
            await asyncio.sleep(0.2)
        return await recorded_calls(storage, CallQuery(), limit=10_000)
    finally:
        await storage.close()


@dataclass
class History:
    recorded: list[CallRecord]  # through the proxy with no policy, oldest first
    live: list[CallRecord]  # the same calls through the proxy with the candidate policy
    database_url: str  # where the first proxy recorded them


@pytest.fixture(scope="module")
def history(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    """The same calls through a proxy with no policy and one with the candidate: both records."""
    root = tmp_path_factory.mktemp("dry-run")
    started = time.monotonic()
    specs = {"recorded": (None, []), "live": (CANDIDATE, [])}
    with running_proxies(specs, fake, root) as proxies:
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda proxy: proxy.sdk(*CALLS), proxies.values()))
        for proxy in proxies.values():
            proxy.stop_sdk()
        failed = [call["prompt"] for call, result in zip(CALLS, results[0], strict=True) if not result["ok"]]
        assert all("error_429" in prompt for prompt in failed), failed
        recorded = asyncio.run(stored_calls(proxies["recorded"], len(CALLS)))
        live = asyncio.run(stored_calls(proxies["live"], len(CALLS)))
        print(f"\n{len(CALLS)} calls recorded through each proxy in {time.monotonic() - started:.1f} s")
    yield History(recorded, live, proxies["recorded"].database_url)


def _decided(record: CallRecord) -> dict[str, Any]:
    """What the policy made of a call, as a live call's record says it."""
    output = record.final_output
    return {
        "outcome": record.outcome,
        "block_kind": record.block_kind,
        "rules": block_rules(record.decisions),
        "reasons": [d.reason for d in record.decisions],
        "request_modified": record.request_modified,
        "response_modified": record.response_modified,
        "error": record.error,
        "status": record.status,
        "final_request": record.final_request,
        "text": output.text if output else None,
        "tools": [(t.name, t.arguments) for t in output.tool_calls] if output else None,
        "finish": output.finish_reason if output else None,
    }


def test_a_dry_run_decides_as_the_policy_did_live(history: History, fake: FakeProvider) -> None:
    recorded, live = history.recorded, history.live
    assert len(recorded) == len(live) == len(CALLS)
    assert not any(call.blocked or call.modified for call in recorded)  # the history: no policy
    sent = len(fake.requests)
    report = asyncio.run(DryRun().run({"policy": CANDIDATE}, recorded, judge="skip"))
    assert len(fake.requests) == sent, "the dry run contacted the provider"
    print(
        f"\ndry run: {len(recorded)} calls in {report.seconds:.2f} s ({report.calls_per_second:.0f} calls/s)"
    )
    for replay, original, lived in zip(report.calls, recorded, live, strict=True):
        assert replay.call_id == replay.replayed.call_id == original.call_id
        assert replay.replayed.started_at == original.started_at
        assert replay.replayed.api_key_hash == original.api_key_hash != ""
        assert (replay.replayed.host, replay.replayed.path) == (lived.host, lived.path)
        assert _decided(replay.replayed) == _decided(lived), original.original_request
        assert replay.recorded_outcome is original.outcome
    # The candidate did each thing it can do, on the calls the live proxy says.
    assert report.blocked == sum(call.blocked for call in live) > 0
    assert report.modified == sum(call.modified for call in live) > 0
    assert report.affected == sum(call.blocked or call.modified for call in live)
    per_prompt = len(CALLS) // len(PROMPTS)
    assert report.by_kind() == {
        BlockKind.TOOL_CALL: 2 * per_prompt,
        BlockKind.REQUEST: per_prompt,
    }
    assert report.by_rule() == {"no-rm": 2 * per_prompt, "(no rule id)": per_prompt}
    assert report.summary()["calls"] == len(CALLS)


def test_a_dry_run_of_no_policy_changes_nothing(history: History) -> None:
    recorded = history.recorded
    report = asyncio.run(DryRun().run({"policy": {"class": "NoOpPolicy"}}, recorded))
    assert report.affected == 0 and report.by_rule() == {}
    for replay, original in zip(report.calls, recorded, strict=True):
        assert _decided(replay.replayed) == _decided(original)
        assert replay.replayed.final_events == original.final_events
        assert replay.replayed.final_response == original.final_response


def test_a_call_blocked_before_the_provider_has_only_its_request_replayed(history: History) -> None:
    """The live proxy's records: what it blocked never reached the provider, so a policy that
    lets it through has no answer to replay, and says so; the rest replays as it was answered."""
    report = asyncio.run(DryRun().run({"policy": {"class": "NoOpPolicy"}}, history.live))
    never_sent = [c for c in report.calls if c.notes]
    blocked = [r for r in history.live if r.block_kind is BlockKind.REQUEST]
    assert [c.call_id for c in never_sent] == [r.call_id for r in blocked] != []
    for call in never_sent:
        assert call.notes == [NEVER_SENT]
        assert (call.outcome, call.replayed.status) == (CallOutcome.ERROR, 502)
    answered = [c for c in report.calls if not c.notes]
    assert all(c.outcome in (CallOutcome.COMPLETED, CallOutcome.PROVIDER_ERROR) for c in answered)


def test_a_broken_candidate_is_refused_with_its_problems(
    history: History,
) -> None:
    recorded = history.recorded
    with pytest.raises(PolicyFileError, match=r"policy\.config\.patterns"):
        asyncio.run(
            DryRun().run(
                {"policy": {"class": "ToolCallBlocklistPolicy", "config": {"patterns": 3}}}, recorded
            )
        )


@pytest.fixture
def judge_cache(judge: FakeJudge, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The judge's shared cache on a real Redis (``REDIS_URL``); the test lists the keys it
    warms, which are deleted afterwards."""
    require_service("Redis", "127.0.0.1", 6379)
    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    judge.reset()
    keys: list[str] = []
    yield keys
    judge.reset()
    if keys:
        with redis.Redis.from_url(REDIS_URL) as client:
            client.delete(*keys)


def _judge_document(judge: FakeJudge, prompt: str) -> dict[str, Any]:
    config = {"model": "openai/fake-judge", "api_base": judge.url, "api_key": "sk-judge", "prompt": prompt}
    return {"policy": {"class": "ToolCallJudgePolicy", "config": config}}


def _with_tools(records: list[CallRecord]) -> list[CallRecord]:
    return [r for r in records if r.original_output and r.original_output.tool_calls]


def test_the_judge_answers_from_its_cache_or_is_skipped(
    history: History,
    judge: FakeJudge,
    judge_cache: list[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls = _with_tools(history.recorded)
    # A judge prompt of this test's own: the cache's keys (a hash of it and the call) are too.
    document = _judge_document(judge, f"You score tool calls (test {uuid.uuid4().hex}).")

    def run(mode: OfflineJudge) -> DryRunReport:
        return asyncio.run(DryRun().run(document, calls, judge=mode))

    cold = run("cache")
    assert judge.count == 0
    tool_calls = sum(len(r.original_output.tool_calls) for r in calls if r.original_output)
    assert cold.judge_skipped == tool_calls and cold.blocked == 0
    assert all(NOT_IN_CACHE in (d.reason or "") for c in cold.calls for d in c.replayed.decisions)

    # The judge, live, judges the dangerous calls (and its verdicts go to the shared cache).
    live = ToolCallJudgePolicy(ToolCallJudgePolicy.Config.model_validate(document["policy"]["config"]))
    metadata = RequestMetadata(call_id="warm", host="api.openai.com", path="/v1/chat/completions")
    dangerous = [r for r in calls if "rm -rf" in str(r.original_request)]
    for record in dangerous:
        assert record.original_output is not None
        for index, call in enumerate(record.original_output.tool_calls):
            tool = ToolCall(index, call.id or "", call.name or "", call.arguments)
            judge_cache.append(KEY_PREFIX + live.cache_key(tool))
            asyncio.run(live.judge(tool, metadata))
    asked = judge.count
    assert asked > 0
    warmed = sum(len(r.original_output.tool_calls) for r in dangerous if r.original_output)

    warm = run("cache")
    assert judge.count == asked, "the dry run asked the judge"
    assert {c.call_id for c in warm.calls if c.blocked} == {r.call_id for r in dangerous}
    assert warm.by_rule() == {"llm-judge": len(dangerous)}
    assert warm.judge_skipped == tool_calls - warmed

    skipped = run("skip")
    assert judge.count == asked and skipped.blocked == 0 and skipped.judge_skipped == tool_calls

    # The command, given the Redis the proxies' judges share (and no REDIS_URL of its own).
    monkeypatch.delenv("REDIS_URL")
    (policy := tmp_path / "judge.yaml").write_text(yaml.safe_dump(document))
    capsys.readouterr()
    replay = ["policy", "replay", str(policy), "--database-url", history.database_url, "--json"]
    assert main([*replay, "--redis-url", REDIS_URL]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["by_rule"] == {"llm-judge": len(dangerous)}
    assert judge.count == asked


def test_the_replay_command(history: History, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``luthien policy replay`` over the recorded proxy's database: the table and the JSON."""
    recorded = history.recorded
    policy = tmp_path / "candidate.yaml"
    policy.write_text(yaml.safe_dump({"policy": CANDIDATE}))
    database = ["--database-url", history.database_url]
    common = ["policy", "replay", str(policy), *database, "--judge", "skip"]
    shown = luthien(*common, "--since", "1h", "--host", "anthropic")  # as a user runs it
    assert shown.returncode == 0, shown.stderr
    anthropic = [r for r in recorded if "anthropic" in r.host]
    assert f"over {len(anthropic)} recorded calls" in shown.stdout
    assert "no-rm" in shown.stdout and "tool_call_removed" in shown.stdout

    def run(*args: str) -> tuple[int, str, str]:
        status = main(list(args))
        out, err = capsys.readouterr()
        return status, out, err

    status, out, _ = run(*common, "--json", "--limit", "5")
    assert status == 0
    report = json.loads(out)
    assert report["summary"]["calls"] == 5 and len(report["calls"]) == 5
    assert [c["call_id"] for c in report["calls"]] == [r.call_id for r in recorded[:5]]
    assert all("diffs" in c for c in report["calls"] if c["request_modified"] or c["response_modified"])
    assert run(*common, "--until", "2000-01-01T00:00:00Z")[:2] == (0, "no recorded calls match\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("policy: {class: Nope}\n")
    status, _, err = run("policy", "replay", str(broken), *database)
    assert status == 1 and f"luthien: {broken}: policy.class: unknown policy 'Nope'" in err
    status, _, err = run("policy", "replay", str(policy), "--database-url", f"sqlite://{tmp_path}/none.db")
    assert status == 1 and "cannot read the database" in err


def test_the_replay_command_takes_a_stored_version(
    history: History, capsys: pytest.CaptureFixture[str]
) -> None:
    """A version stored in the recorded database (``luthien policy activate``) is a candidate too."""
    policy = yaml.safe_dump({"policy": CANDIDATE})
    database = ["--database-url", history.database_url]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        file.write(policy)
        file.flush()
        assert main(["policy", "activate", file.name, *database, "--note", "to replay"]) == 0
    version = document_version({"policy": CANDIDATE}, "test")
    capsys.readouterr()
    assert main(["policy", "replay", version, *database, "--judge", "skip", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["summary"]["policy_version"] == version
    assert report["summary"]["by_rule"]["no-rm"] == 2 * len(CALLS) // len(PROMPTS)
    assert main(["policy", "replay", "0123456789ab", *database]) == 1
    assert "0123456789ab: neither a policy file nor a stored version" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_recorded_calls_are_read_page_by_page_oldest_first(backend: str, tmp_path: Path) -> None:
    """More calls than a page of the calls list holds, with a filter and a limit between pages."""
    records = [
        call_record(f"call-{n:04d}", f"prompt {n}", "answer", started_at=T0 + timedelta(seconds=n))
        for n in range(1203)
    ]
    records += [call_record("other-host", "p", "a", host="api.openai.com", started_at=T0)]

    async def read(storage: Storage) -> tuple[list[CallRecord], list[CallRecord]]:
        try:
            await storage.migrate()
            await storage.write(records[::-1])
            some = await recorded_calls(storage, CallQuery(host="anthropic"), limit=1100)
            later = CallQuery(host="anthropic", since=T0 + timedelta(seconds=1100))
            return some, await recorded_calls(storage, later, 5000)
        finally:
            await storage.close()

    async def on_backend() -> tuple[list[CallRecord], list[CallRecord]]:
        if backend == "sqlite":
            return await read(SQLiteStorage(tmp_path / "calls.db"))
        async with fresh_postgres_database() as url:
            return await read(PostgresStorage(url))

    some, rest = asyncio.run(on_backend())
    assert [c.call_id for c in some] == [f"call-{n:04d}" for n in range(1100)]
    assert [c.call_id for c in rest] == [f"call-{n:04d}" for n in range(1100, 1203)]
