"""Live activity events: see ``bus`` for the contract, ``open_bus`` to get one."""

from controlplane.activity.bus import FROM_START, ActivityBus, BusReach, BusUnavailable, PublishedEvent
from controlplane.activity.memory import InMemoryBus
from controlplane.activity.redis_stream import RedisStreamBus

__all__ = [
    "FROM_START",
    "ActivityBus",
    "BusReach",
    "BusUnavailable",
    "InMemoryBus",
    "PublishedEvent",
    "RedisStreamBus",
    "open_bus",
]


def open_bus(redis_url: str | None) -> ActivityBus:
    """In memory without a URL (one process); on a Redis Stream with one (several processes)."""
    if not redis_url:
        return InMemoryBus()
    if redis_url.startswith(("redis://", "rediss://")):
        return RedisStreamBus(redis_url)
    raise ValueError("the activity bus URL must start with redis:// or rediss://, or be empty for in-memory")
