"""The activity bus: the same behaviour in memory and on Redis Streams, then what only the Redis bus
has to survive (a connection cut under a subscriber or a publisher, a Redis that is not there)."""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any
from uuid import uuid4

import pytest
import redis

from controlplane.activity import (
    FROM_START,
    ActivityBus,
    InMemoryBus,
    PublishedEvent,
    RedisStreamBus,
    open_bus,
)
from controlplane.models import ActivityEvent, ActivityType
from tests.conftest import free_port
from tests.databases import require_service
from tests.tcp_relay import TcpRelay

pytestmark = pytest.mark.asyncio(loop_scope="session")

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}"
PROBE = "probe-"


@pytest.fixture
def stream() -> Iterator[str]:
    """A stream key of this test's own, deleted afterwards."""
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    key = f"luthien:test:{uuid4().hex}"
    yield key
    with redis.Redis(host=REDIS_HOST, port=REDIS_PORT) as client:
        client.delete(key, f"{key}:published")


@pytest.fixture(params=["memory", "redis"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[ActivityBus]:
    instance: ActivityBus
    if request.param == "memory":
        instance = InMemoryBus()
    else:
        instance = RedisStreamBus(REDIS_URL, stream=request.getfixturevalue("stream"))
    yield instance
    await instance.close()


def event(call_id: str) -> ActivityEvent:
    return ActivityEvent(call_id=call_id, type=ActivityType.REQUEST_RECEIVED)


def names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{index}" for index in range(count)]


async def publish(bus: ActivityBus, call_ids: list[str]) -> None:
    for call_id in call_ids:
        await bus.publish(event(call_id))


def run_without_suspending(coroutine: Coroutine[Any, Any, None]) -> None:
    """Runs ``coroutine`` to completion in a single step and fails if it ever waits on anything:
    "publish never waits on the network", checked without depending on how fast anything is."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    pytest.fail("publish waited on something")


async def eventually(condition: Callable[[], bool], what: Callable[[], str], timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting: {what()}")
        await asyncio.sleep(0.01)


async def until_stored(bus: ActivityBus, call_id: str) -> None:
    """Waits until ``call_id`` is the newest event the bus holds: the Redis bus sends in the
    background, so a publish has returned before the event is in the stream."""

    async def newest() -> list[str]:
        return [item.event.call_id for item in await bus.recent(1)]

    deadline = asyncio.get_running_loop().time() + 10
    while await newest() != [call_id]:
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"{call_id} never reached the bus; newest is {await newest()}")
        await asyncio.sleep(0.01)


async def held(bus: ActivityBus) -> list[str]:
    """The call ids of every event the bus holds but probes, oldest first."""
    return [
        item.event.call_id for item in await bus.recent(10_000) if not item.event.call_id.startswith(PROBE)
    ]


class Listener:
    """Reads a subscription in a background task, so that a test can publish while it listens."""

    def __init__(self, subscription: AsyncIterator[PublishedEvent]) -> None:
        self.received: list[PublishedEvent] = []
        self._task = asyncio.create_task(self._read(subscription))

    async def _read(self, subscription: AsyncIterator[PublishedEvent]) -> None:
        async for item in subscription:
            self.received.append(item)

    @property
    def events(self) -> list[PublishedEvent]:
        return [item for item in self.received if not item.event.call_id.startswith(PROBE)]

    @property
    def call_ids(self) -> list[str]:
        return [item.event.call_id for item in self.events]

    @property
    def finished(self) -> bool:
        return self._task.done()

    def id_of(self, call_id: str) -> str:
        return next(item.id for item in self.events if item.event.call_id == call_id)

    async def expect(self, call_ids: list[str]) -> None:
        """Waits for as many events as expected, then they must be exactly those, in order. End
        ``call_ids`` with the last event published, and a repeat of any earlier one shows up."""
        await eventually(lambda: len(self.call_ids) >= len(call_ids), lambda: f"got {self.call_ids}")
        assert self.call_ids == call_ids

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.wait({self._task})


async def listen(bus: ActivityBus, after: str | None = None, via: ActivityBus | None = None) -> Listener:
    """Subscribes, and returns once the subscription is live: sure to see the next event published.
    Nothing marks that moment for a subscription that starts "from the next event", so probe events
    are published (on ``via``, default ``bus``) until one arrives; listeners ignore probes."""
    listener = Listener(bus.subscribe(after))
    probe = f"{PROBE}{uuid4().hex[:8]}-"

    def probes() -> list[str]:
        return [item.event.call_id for item in listener.received if item.event.call_id.startswith(probe)]

    sent = 0
    deadline = asyncio.get_running_loop().time() + 10
    while not probes():
        if asyncio.get_running_loop().time() > deadline or listener.finished:
            pytest.fail("the subscription never went live")
        await (via or bus).publish(event(f"{probe}{sent}"))
        sent += 1
        await asyncio.sleep(0.05)
    # Probes published before one arrived may still be on their way; none may pass for a test's event.
    await eventually(lambda: f"{probe}{sent - 1}" in probes(), lambda: f"probes seen: {probes()}")
    return listener


# Behaviour of every bus


async def test_a_new_subscriber_sees_only_events_published_after_it(bus: ActivityBus) -> None:
    await publish(bus, ["old-0", "old-1"])
    await until_stored(bus, "old-1")
    listener = await listen(bus)
    await publish(bus, ["new-0"])
    await listener.expect(["new-0"])
    await listener.stop()


async def test_events_arrive_in_order(bus: ActivityBus) -> None:
    listener = await listen(bus)
    await publish(bus, names("e", 500))
    await listener.expect(names("e", 500))
    assert len({item.id for item in listener.events}) == 500
    await listener.stop()


async def test_every_subscriber_gets_every_event(bus: ActivityBus) -> None:
    listeners = [await listen(bus) for _ in range(3)]
    await publish(bus, names("e", 50))
    for listener in listeners:
        await listener.expect(names("e", 50))
        await listener.stop()


async def test_a_subscriber_resumes_after_the_last_id_it_saw(bus: ActivityBus) -> None:
    first = await listen(bus)
    await publish(bus, names("e", 10))
    await first.expect(names("e", 10))
    await first.stop()
    await publish(bus, names("missed", 5))

    from_last = await listen(bus, after=first.id_of("e9"))
    from_middle = await listen(bus, after=first.id_of("e4"))
    await publish(bus, ["new"])
    await from_last.expect([*names("missed", 5), "new"])
    await from_middle.expect([*names("e", 10)[5:], *names("missed", 5), "new"])
    await from_last.stop()
    await from_middle.stop()


async def test_recent_returns_the_latest_events_oldest_first(bus: ActivityBus) -> None:
    assert await bus.recent(5) == []
    await publish(bus, names("r", 5))
    await until_stored(bus, "r4")
    assert [item.event.call_id for item in await bus.recent(3)] == ["r2", "r3", "r4"]
    assert [item.event.call_id for item in await bus.recent(100)] == names("r", 5)
    assert await bus.recent(0) == []


async def test_from_start_means_every_retained_event_then_new_ones(bus: ActivityBus) -> None:
    await publish(bus, ["old-0", "old-1"])
    await until_stored(bus, "old-1")
    listener = await listen(bus, after=FROM_START)
    await publish(bus, ["new"])
    await listener.expect(["old-0", "old-1", "new"])
    await listener.stop()


@pytest.mark.parametrize(
    "after",
    ["garbage", "", "-1", "1" * 30, "1-2-3", "²", "99999", "99999999999999-0", "18446744073709551616-0"],
)
async def test_an_id_the_bus_never_issued_means_from_the_next_event(bus: ActivityBus, after: str) -> None:
    await publish(bus, ["old"])
    await until_stored(bus, "old")
    listener = await listen(bus, after=after)
    await publish(bus, ["new"])
    await listener.expect(["new"])
    await listener.stop()


async def test_publish_never_waits(bus: ActivityBus) -> None:
    listener = await listen(bus)
    for call_id in names("e", 1000):
        run_without_suspending(bus.publish(event(call_id)))
    await listener.expect(names("e", 1000))
    await listener.stop()


async def test_close_ends_subscriptions(bus: ActivityBus) -> None:
    listener = await listen(bus)
    await bus.close()
    await eventually(lambda: listener.finished, lambda: "the subscription is still running")


async def test_an_event_published_again_reaches_no_follower_again(bus: ActivityBus) -> None:
    """A sidecar whose POST failed after the control plane had published its batch sends the same
    events again (maybe to another control plane): followers live and resuming see them once."""
    live = await listen(bus)
    batch = [event("once-0"), event("once-1")]
    for sent in batch:
        await bus.publish(sent)
    await live.expect(["once-0", "once-1"])
    resuming = await listen(bus, after=live.id_of("once-1"))
    for copy in batch:
        await bus.publish(copy)
    await publish(bus, ["after"])

    await live.expect(["once-0", "once-1", "after"])
    await resuming.expect(["after"])
    await until_stored(bus, "after")
    assert await held(bus) == ["once-0", "once-1", "after"]
    await live.stop()
    await resuming.stop()


async def test_a_memory_subscriber_that_falls_behind_continues_from_the_oldest_retained() -> None:
    bus = InMemoryBus(retain=5)
    await publish(bus, names("e", 3))
    [e1] = [item.id for item in await bus.recent(5) if item.event.call_id == "e1"]
    await publish(bus, names("e", 10)[3:])
    listener = Listener(bus.subscribe(after=e1))
    await listener.expect(names("e", 10)[5:])
    await listener.stop()


# Redis: outages and absence


async def test_a_subscriber_survives_a_cut_and_misses_nothing(
    stream: str, caplog: pytest.LogCaptureFixture
) -> None:
    direct = RedisStreamBus(REDIS_URL, stream=stream)
    with TcpRelay(REDIS_HOST, REDIS_PORT) as relay, caplog.at_level(logging.WARNING, "controlplane.activity"):
        relayed = RedisStreamBus(f"redis://127.0.0.1:{relay.port}", stream=stream)
        listener = await listen(relayed, via=direct)
        await publish(direct, names("before", 10))
        await listener.expect(names("before", 10))
        connections = relay.connections

        await publish(direct, names("racing", 10))  # some may be in flight when the cut comes
        relay.cut()
        await publish(direct, names("during", 10))
        await until_stored(direct, "during9")
        await eventually(
            lambda: "subscription" in caplog.text, lambda: "the subscriber never noticed the cut"
        )
        await asyncio.sleep(0.5)  # it fails to reconnect a few times
        relay.restore()
        await publish(direct, names("after", 10))

        await listener.expect(
            [name for phase in ("before", "racing", "during", "after") for name in names(phase, 10)]
        )
        assert relay.connections > connections
        await listener.stop()
        await relayed.close()
    await direct.close()


async def test_a_batch_whose_reply_was_lost_reaches_readers_once(stream: str) -> None:
    """Redis stores a batch but its reply is lost: the publisher sends the batch again. Neither a
    follower that saw the batch nor one that resumes right after it sees the copy."""
    direct = RedisStreamBus(REDIS_URL, stream=stream)
    live = await listen(direct)
    with TcpRelay(REDIS_HOST, REDIS_PORT) as relay:
        relayed = RedisStreamBus(f"redis://127.0.0.1:{relay.port}", stream=stream)
        await publish(relayed, ["before"])
        await live.expect(["before"])

        relay.mute()
        await publish(relayed, ["lost-0", "lost-1"])
        await live.expect(["before", "lost-0", "lost-1"])  # stored, though the publisher never heard
        resuming = await listen(direct, after=live.id_of("lost-1"))
        relay.cut()  # the publisher's connection breaks: it sends the batch again
        relay.restore()
        await publish(relayed, ["after"])

        await live.expect(["before", "lost-0", "lost-1", "after"])
        await resuming.expect(["after"])
        assert await held(direct) == ["before", "lost-0", "lost-1", "after"]
        await resuming.stop()
        await relayed.close()
    await live.stop()
    await direct.close()


async def test_a_publisher_keeps_its_events_through_a_cut(stream: str) -> None:
    direct = RedisStreamBus(REDIS_URL, stream=stream)
    listener = await listen(direct)
    with TcpRelay(REDIS_HOST, REDIS_PORT) as relay:
        relayed = RedisStreamBus(f"redis://127.0.0.1:{relay.port}", stream=stream)
        await publish(relayed, names("before", 5))
        await listener.expect(names("before", 5))

        relay.cut()
        for call_id in names("during", 1000):
            run_without_suspending(relayed.publish(event(call_id)))
        await asyncio.sleep(0.5)  # the sender fails a few times
        assert listener.call_ids == names("before", 5)
        relay.restore()

        await listener.expect([*names("before", 5), *names("during", 1000)])
        assert relayed.dropped == 0
        await relayed.close()
    await listener.stop()
    await direct.close()


async def test_a_full_queue_drops_the_oldest_events(stream: str) -> None:
    direct = RedisStreamBus(REDIS_URL, stream=stream)
    listener = await listen(direct)
    with TcpRelay(REDIS_HOST, REDIS_PORT) as relay:
        relayed = RedisStreamBus(f"redis://127.0.0.1:{relay.port}", stream=stream, retain=10)
        relay.cut()
        for call_id in names("e", 25):
            run_without_suspending(relayed.publish(event(call_id)))
        assert relayed.dropped == 15
        relay.restore()
        await listener.expect(names("e", 25)[15:])
        await relayed.close()
    await listener.stop()
    await direct.close()


async def test_a_redis_that_is_not_there_breaks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    bus = RedisStreamBus(f"redis://luthien:s3cret@127.0.0.1:{free_port()}/0")
    listener = Listener(bus.subscribe())
    with caplog.at_level(logging.WARNING, logger="controlplane.activity"):
        for call_id in names("e", 100):
            run_without_suspending(bus.publish(event(call_id)))
        await asyncio.sleep(0.5)
        assert not listener.finished  # still trying, not crashed
        await asyncio.wait_for(bus.close(), timeout=5)
    await eventually(lambda: listener.finished, lambda: "the subscription outlived close()")
    assert "cannot send activity events" in caplog.text
    assert "s3cret" not in caplog.text


# Choosing a bus


@pytest.mark.parametrize("url", [None, ""])
async def test_no_url_means_in_memory(url: str | None) -> None:
    bus = open_bus(url)
    assert isinstance(bus, InMemoryBus)
    await bus.close()


@pytest.mark.parametrize("url", ["redis://localhost:6379/0", "rediss://user:pw@example.test:6380"])
async def test_a_redis_url_means_redis_streams(url: str) -> None:
    bus = open_bus(url)
    assert isinstance(bus, RedisStreamBus)
    await bus.close()


@pytest.mark.parametrize("url", ["localhost:6379", "http://localhost:6379", "postgresql://db/luthien"])
async def test_any_other_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"redis://"):
        open_bus(url)
