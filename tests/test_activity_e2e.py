"""A proxy publishes each call's life on Redis, where a process of its own (a dashboard) follows
it live: the multi-process deployment, end to end."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controlplane.activity import PublishedEvent, RedisStreamBus
from controlplane.models import ActivityType
from tests.conftest import start_proxy, wait_until_listening
from tests.databases import require_service
from tests.fake_provider import FakeProvider

pytestmark = pytest.mark.timeout(180)
REDIS_URL = "redis://127.0.0.1:6379/0"


async def events_of(
    subscription: AsyncIterator[PublishedEvent], model: str, until: ActivityType
) -> list[str]:
    """The types of the events of calls to ``model``, up to the first ``until``."""
    seen: list[str] = []
    async for published in subscription:
        if published.event.model == model:
            seen.append(published.event.type)
            if published.event.type == until:
                return seen
    raise AssertionError("the subscription ended")


async def test_a_call_is_followed_live_over_redis(fake: FakeProvider, tmp_path: Path) -> None:
    require_service("Redis", "127.0.0.1", 6379)
    proxy = start_proxy(
        "redis",
        {"class": "UppercaseNthWordPolicy", "config": {"n": 2}},
        fake,
        tmp_path,
        tmp_path / "data",
        extra_args=["--redis-url", REDIS_URL],
    )
    follower = RedisStreamBus(REDIS_URL)
    try:
        wait_until_listening(proxy)
        subscription = follower.subscribe()
        model = f"claude-{uuid.uuid4().hex[:8]}"
        following = asyncio.ensure_future(events_of(subscription, model, ActivityType.COMPLETED))
        await asyncio.sleep(0.5)  # subscribed before the call starts
        (result,) = await asyncio.to_thread(
            proxy.sdk, {"api": "messages", "stream": True, "prompt": "hi", "model": model}
        )
        assert result["ok"], result
        seen = await asyncio.wait_for(following, 20)
    finally:
        await follower.close()
        proxy.terminate()
        proxy.wait()
    assert seen[0] == ActivityType.REQUEST_RECEIVED
    assert seen.index(ActivityType.UPSTREAM_SENT) < seen.index(ActivityType.FIRST_BYTE)
    assert seen[-1] == ActivityType.COMPLETED
