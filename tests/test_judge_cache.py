"""The judge's cache on a real Redis: what it stores, and two policy instances ("replicas")
sharing verdicts through it, or carrying on without it when Redis is not there."""

import logging
import socket
import time
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest
import redis

from controlplane.models import RequestMetadata
from controlplane.policies import shared_state
from controlplane.policies.chunks import ToolCall
from controlplane.policies.shared_state import RedisJudgementCache, TieredJudgementCache, judgement_cache
from controlplane.policies.tool_call_judge import (
    Judgement,
    JudgementCache,
    LRUJudgementCache,
    ToolCallJudgePolicy,
)
from tests.conftest import free_port
from tests.databases import require_service
from tests.fake_judge import FakeJudge

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
DANGEROUS = ToolCall(0, "call-a", "bash", '{"command": "rm -rf /"}')


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    mine = f"luthien:test:judge:{uuid4().hex}:"
    yield mine
    with redis.Redis(host=REDIS_HOST, port=REDIS_PORT) as client:
        if keys := list(client.scan_iter(match=f"{mine}*")):
            client.delete(*keys)


@pytest.fixture
def fresh_judge(judge: FakeJudge) -> Iterator[FakeJudge]:
    """The session's fake judge (tests/conftest.py), with no requests recorded yet."""
    judge.reset()
    yield judge
    judge.reset()


def make_policy(judge: FakeJudge, **config: Any) -> ToolCallJudgePolicy:
    settings = {"model": "openai/fake-judge", "api_base": judge.url, "api_key": "sk-judge-test", **config}
    return ToolCallJudgePolicy(ToolCallJudgePolicy.Config.model_validate(settings))


def metadata() -> RequestMetadata:
    return RequestMetadata(call_id="call-1", host="api.example.com", path="/v1/chat/completions")


async def close(cache: JudgementCache) -> None:
    if isinstance(cache, RedisJudgementCache | TieredJudgementCache):
        await cache.aclose()


def raw_keys(prefix: str) -> list[str]:
    with redis.Redis(host=REDIS_HOST, port=REDIS_PORT, decode_responses=True) as client:
        return list(client.scan_iter(match=f"{prefix}*"))


# --- the cache itself --------------------------------------------------------------------


async def test_a_judgement_makes_the_round_trip(prefix: str) -> None:
    cache = RedisJudgementCache(REDIS_URL, ttl_seconds=60, prefix=prefix)
    try:
        assert await cache.get("k1") is None
        judgement = Judgement(score=0.95, reason="deletes everything — «really»")
        await cache.set("k1", judgement)
        assert await cache.get("k1") == judgement
        assert raw_keys(prefix) == [f"{prefix}k1"]
    finally:
        await cache.aclose()
    other = RedisJudgementCache(REDIS_URL, ttl_seconds=60, prefix=prefix)  # another client, same data
    try:
        assert await other.get("k1") == judgement
    finally:
        await other.aclose()


async def test_the_ttl_is_set(prefix: str) -> None:
    cache = RedisJudgementCache(REDIS_URL, ttl_seconds=120, prefix=prefix)
    try:
        await cache.set("k1", Judgement(0.1, "fine"))
    finally:
        await cache.aclose()
    with redis.Redis(host=REDIS_HOST, port=REDIS_PORT) as client:
        assert 110 <= client.ttl(f"{prefix}k1") <= 120


async def test_an_unreadable_entry_is_an_error(prefix: str) -> None:
    with redis.Redis(host=REDIS_HOST, port=REDIS_PORT) as client:
        client.set(f"{prefix}k1", "not json")
    cache = RedisJudgementCache(REDIS_URL, ttl_seconds=60, prefix=prefix)
    try:
        with pytest.raises(ValueError):
            await cache.get("k1")
    finally:
        await cache.aclose()


def test_only_redis_urls_are_accepted() -> None:
    with pytest.raises(ValueError, match="redis://"):
        RedisJudgementCache("http://127.0.0.1:6379", ttl_seconds=60)


async def test_the_choice_follows_redis_url(monkeypatch: pytest.MonkeyPatch, fresh_judge: FakeJudge) -> None:
    config = ToolCallJudgePolicy.Config(model="openai/fake-judge", api_base=fresh_judge.url, cache_size=8)
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert isinstance(judgement_cache(config), LRUJudgementCache)
    monkeypatch.setenv("REDIS_URL", "")
    assert isinstance(judgement_cache(config), LRUJudgementCache)
    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    tiered = judgement_cache(config)
    assert isinstance(tiered, TieredJudgementCache) and tiered.front.size == 8
    assert tiered.back.ttl_seconds == 86400
    await close(tiered)
    alone = judgement_cache(config.model_copy(update={"cache_size": 0, "cache_ttl_seconds": 5}))
    assert isinstance(alone, RedisJudgementCache) and alone.ttl_seconds == 5
    await close(alone)


async def test_the_memory_in_front_serves_reads_and_both_get_writes(prefix: str) -> None:
    back = RedisJudgementCache(REDIS_URL, ttl_seconds=60, prefix=prefix)
    cache = TieredJudgementCache(LRUJudgementCache(4), back)
    try:
        await cache.set("k1", Judgement(0.2, "ok"))
        assert await back.get("k1") == Judgement(0.2, "ok")
        await back.set("k1", Judgement(0.9, "changed behind its back"))
        assert await cache.get("k1") == Judgement(0.2, "ok")  # from memory
        await back.set("k2", Judgement(0.3, "only in Redis"))
        assert await cache.get("k2") == Judgement(0.3, "only in Redis")
        assert await cache.front.get("k2") == Judgement(0.3, "only in Redis")  # now in memory too
    finally:
        await cache.aclose()


# --- two replicas ------------------------------------------------------------------------


async def test_two_replicas_ask_the_judge_once(
    monkeypatch: pytest.MonkeyPatch, prefix: str, fresh_judge: FakeJudge
) -> None:
    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    monkeypatch.setattr(shared_state, "KEY_PREFIX", prefix)
    first, second = make_policy(fresh_judge), make_policy(fresh_judge)
    try:
        verdict = await first.judge(DANGEROUS, metadata())
        assert not verdict.allowed and verdict.details["cached"] is False
        shared = await second.judge(ToolCall(0, "call-b", "bash", '{"command":"rm -rf /"}'), metadata())
        assert not shared.allowed and shared.details["cached"] is True
        assert shared.reason == verdict.reason
        assert fresh_judge.count == 1
        assert len(raw_keys(prefix)) == 1
    finally:
        await close(first.cache)
        await close(second.cache)


async def test_replicas_without_memory_cache_share_through_redis(
    monkeypatch: pytest.MonkeyPatch, prefix: str, fresh_judge: FakeJudge
) -> None:
    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    monkeypatch.setattr(shared_state, "KEY_PREFIX", prefix)
    first, second = make_policy(fresh_judge, cache_size=0), make_policy(fresh_judge, cache_size=0)
    try:
        await first.judge(DANGEROUS, metadata())
        await first.judge(DANGEROUS, metadata())
        assert (await second.judge(DANGEROUS, metadata())).details["cached"] is True
        assert fresh_judge.count == 1
    finally:
        await close(first.cache)
        await close(second.cache)


# --- no Redis ----------------------------------------------------------------------------


async def test_judging_goes_on_when_redis_is_down(
    monkeypatch: pytest.MonkeyPatch, fresh_judge: FakeJudge, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://:s3cret-pass@127.0.0.1:{free_port()}/0")  # nothing listens
    caplog.set_level(logging.DEBUG)
    memory_first, redis_only = make_policy(fresh_judge), make_policy(fresh_judge, cache_size=0)
    try:
        started = time.monotonic()
        verdict = await memory_first.judge(DANGEROUS, metadata())
        assert not verdict.allowed and verdict.details["cached"] is False
        again = await memory_first.judge(DANGEROUS, metadata())
        assert again.details["cached"] is True  # from the LRU in front of Redis
        assert fresh_judge.count == 1
        for expected in (2, 3):  # without memory, every call is judged again
            verdict = await redis_only.judge(DANGEROUS, metadata())
            assert not verdict.allowed and verdict.details["cached"] is False
            assert fresh_judge.count == expected
        assert time.monotonic() - started < 5
    finally:
        await close(memory_first.cache)
        await close(redis_only.cache)
    assert "judge cache lookup failed: ConnectionError" in caplog.text
    assert "judge cache update failed: ConnectionError" in caplog.text
    assert "s3cret-pass" not in caplog.text


async def test_a_stalled_redis_costs_about_a_second_per_operation(
    monkeypatch: pytest.MonkeyPatch, fresh_judge: FakeJudge
) -> None:
    with socket.socket() as stalled:  # the kernel accepts connections; nothing ever answers
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(8)
        monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{stalled.getsockname()[1]}/0")
        policy = make_policy(fresh_judge, cache_size=0)
        try:
            started = time.monotonic()
            verdict = await policy.judge(DANGEROUS, metadata())
            elapsed = time.monotonic() - started
        finally:
            await close(policy.cache)
    assert not verdict.allowed and verdict.details["cached"] is False and fresh_judge.count == 1
    assert 1.5 < elapsed < 4  # a lookup and an update, each given up after about a second
