"""Joins an upstream stream's reads so that per-read work is paid per batch, not per event.

httpx hands over one piece per chunked-encoding chunk and providers send one event per chunk, so
everything after a read (policing, the relay's send, mitmproxy's per-chunk work, the TLS write)
would run once per event. A reader task drains upstream into a bounded queue while the stream is
being policed; each time the consumer comes back, it takes what has accumulated in one piece. The
first read always goes on alone, the next pieces may join 2, 4, 8 reads and then MAX_JOINED,
and when the consumer keeps up, every read goes on alone.
"""

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

#: The most reads joined into one piece: enough to pay per-read work rarely, few enough that a
#: policy still sees a stream arrive in small steps.
MAX_JOINED = 16


@dataclass(frozen=True)
class _End:
    """Upstream is over: cleanly, or with the error that ended it."""

    error: BaseException | None = None


async def joined_reads(reads: AsyncIterator[bytes]) -> AsyncGenerator[bytes]:
    """``reads``, each piece what arrived while the previous one was being handled (at most
    MAX_JOINED reads). An error reading upstream is raised after the pieces read before it.
    Closing this stops reading upstream."""
    queue: asyncio.Queue[bytes | _End] = asyncio.Queue(maxsize=MAX_JOINED)
    reader = asyncio.create_task(_drain(reads, queue))
    # The first read goes on alone, and the next pieces grow from there: the client's first
    # events are forwarded by mitmproxy (on this loop) while the next small piece is policed,
    # not after a full batch.
    most = 1
    try:
        while True:
            pieces: list[bytes] = []
            item = await queue.get()
            while isinstance(item, bytes):
                pieces.append(item)
                if len(pieces) == most or queue.empty():
                    break
                item = queue.get_nowait()
            most = min(most * 2, MAX_JOINED)
            if pieces:
                yield b"".join(pieces)
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def _drain(reads: AsyncIterator[bytes], queue: asyncio.Queue[bytes | _End]) -> None:
    try:
        async for piece in reads:
            if piece:
                await queue.put(piece)
    except Exception as exc:  # handed to the consumer, which raises it where the stream is
        await queue.put(_End(exc))
    else:
        await queue.put(_End())
    finally:
        if isinstance(reads, AsyncGenerator):  # closed here, in the task that iterated it
            await reads.aclose()
