"""State that several control-plane replicas share through Redis, so that they behave as one.

``judgement_cache`` picks where ``ToolCallJudgePolicy`` keeps its judgements: with ``REDIS_URL``
set, in Redis (a verdict judged by one replica is a cache hit on every other), with a small
in-process LRU in front of it; without it, in the in-process LRU alone.
"""

import json
import logging
import os
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from controlplane.policies.tool_call_judge import (
    Judgement,
    JudgementCache,
    LRUJudgementCache,
    ToolCallJudgePolicy,
)

log = logging.getLogger(__name__)

#: Where Redis keys for judgements start; one key per judgement: the prefix and the cache key.
KEY_PREFIX = "luthien:judge:"
#: Bounds what an unreachable or stalled Redis costs one lookup or update (no retries).
_TIMEOUT_SECONDS = 1.0


class RedisJudgementCache:
    """Judgements in Redis as JSON ``{"score", "reason"}``, each stored with SET EX (SETEX) to
    expire ``ttl_seconds`` after it was stored. Errors (Redis down, an unreadable entry) are
    raised; the policy counts them as misses."""

    def __init__(self, url: str, ttl_seconds: int, prefix: str = KEY_PREFIX) -> None:
        if not url.startswith(("redis://", "rediss://")):
            raise ValueError("the judgement cache's Redis URL must start with redis:// or rediss://")
        if ttl_seconds < 1:
            raise ValueError("the judgement cache's TTL must be at least 1 second")
        self._redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=_TIMEOUT_SECONDS,
            socket_timeout=_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),  # a failure is a miss: the judge is asked instead
        )
        parts = urlsplit(url)  # only host and port: the URL may carry a password
        self.where = f"{parts.hostname}:{parts.port or 6379}"
        self.ttl_seconds = ttl_seconds
        self.prefix = prefix

    async def get(self, key: str) -> Judgement | None:
        raw = await self._redis.get(self.prefix + key)
        if raw is None:
            return None
        data = json.loads(raw)
        return Judgement(score=float(data["score"]), reason=str(data["reason"]))

    async def set(self, key: str, judgement: Judgement) -> None:
        value = json.dumps({"score": judgement.score, "reason": judgement.reason}, ensure_ascii=False)
        # SET with EX is SETEX, which redis-py deprecates as a method of its own.
        await self._redis.set(self.prefix + key, value, ex=self.ttl_seconds)

    async def aclose(self) -> None:
        await self._redis.aclose()


class TieredJudgementCache:
    """An in-process LRU in front of Redis: reads try memory first (and keep what Redis had in
    memory); writes go to both. A memory entry outlives its Redis TTL until it is evicted."""

    def __init__(self, front: LRUJudgementCache, back: RedisJudgementCache) -> None:
        self.front = front
        self.back = back

    async def get(self, key: str) -> Judgement | None:
        judgement = await self.front.get(key)
        if judgement is None:
            judgement = await self.back.get(key)
            if judgement is not None:
                await self.front.set(key, judgement)
        return judgement

    async def set(self, key: str, judgement: Judgement) -> None:
        await self.front.set(key, judgement)  # first, so a Redis failure still leaves it in memory
        await self.back.set(key, judgement)

    async def aclose(self) -> None:
        await self.back.aclose()


def judgement_cache(config: ToolCallJudgePolicy.Config) -> JudgementCache:
    """Redis (``REDIS_URL``) behind an LRU of ``cache_size`` judgements, or Redis alone when
    ``cache_size`` is 0; without ``REDIS_URL``, the LRU alone."""
    memory = LRUJudgementCache(config.cache_size)
    url = os.environ.get("REDIS_URL")
    if not url:
        return memory
    shared = RedisJudgementCache(url, config.cache_ttl_seconds, KEY_PREFIX)
    log.info("judge %s: verdicts are shared through Redis at %s", config.model, shared.where)
    return TieredJudgementCache(memory, shared) if config.cache_size > 0 else shared
