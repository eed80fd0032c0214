"""The nudge that tells every control-plane replica a policy version was activated: Redis pub/sub
when there is a Redis (``REDIS_URL``), nothing in a single process. A nudge carries no truth (the
database has it): replicas read the active version when nudged, and also check it periodically,
often while no nudge can arrive (no Redis, or Redis down), rarely while one can."""

import asyncio
import contextlib
import logging
from typing import Protocol

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

log = logging.getLogger(__name__)

CHANNEL = "luthien:policy-activated"
_SOCKET_TIMEOUT = 3.0
_READ_SECONDS = 1.0  # bounds how long the listener takes to notice close()
_RECONNECT_SECONDS = 1.0


class PolicyNudge(Protocol):
    @property
    def listening(self) -> bool:
        """Whether a nudge published elsewhere would reach this process now."""
        ...

    def start(self) -> None: ...

    async def publish(self, version: str) -> None:
        """Best effort: a replica that misses it sees the version at its next periodic check."""
        ...

    async def wait(self, timeout: float) -> None:
        """Returns when nudged, or after ``timeout`` seconds."""
        ...

    async def close(self) -> None: ...


class NoNudge:
    """One process: whatever activates a version applies it itself; others (``luthien policy
    activate``) are seen at the periodic check."""

    listening = False

    def start(self) -> None:
        pass

    async def publish(self, version: str) -> None:
        pass

    async def wait(self, timeout: float) -> None:
        await asyncio.sleep(timeout)

    async def close(self) -> None:
        pass


class RedisNudge:
    def __init__(self, url: str) -> None:
        # No retries inside redis-py: the listener reconnects itself, and a publish is best effort.
        self._redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=_SOCKET_TIMEOUT,
            socket_connect_timeout=_SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        self._nudged = asyncio.Event()
        self._listening = False
        self._task: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        return self._listening

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._listen())

    async def publish(self, version: str) -> None:
        try:
            await self._redis.publish(CHANNEL, version)
        except (RedisError, OSError) as exc:
            log.warning(
                "cannot nudge the other replicas through Redis (%s): they see version %s "
                "at their next periodic check",
                exc,
                version,
            )

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._nudged.wait(), timeout)
        self._nudged.clear()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._redis.aclose()

    async def _listen(self) -> None:
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                self._listening = True
                self._nudged.set()  # what was activated while nobody listened is read now
                while True:
                    if await pubsub.get_message(timeout=_READ_SECONDS) is not None:
                        self._nudged.set()
            except (RedisError, OSError) as exc:
                if self._listening:
                    log.warning(
                        "policy nudges from Redis lost (%s): checking the database every "
                        "second until Redis is back",
                        exc,
                    )
                self._listening = False
                self._nudged.set()  # a waiter on the long interval checks now, then every second
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(_RECONNECT_SECONDS)


def open_nudge(redis_url: str | None) -> PolicyNudge:
    return RedisNudge(redis_url) if redis_url else NoNudge()
