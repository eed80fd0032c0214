"""Joined upstream reads: whatever the pace of the provider and of the consumer, the bytes come out
whole and in order, the first read goes on alone, no piece joins more than MAX_JOINED reads, and
an error reading upstream is raised after every read before it. Closing early stops the reader."""

import asyncio
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from addon.joined_reads import MAX_JOINED, joined_reads


class ProviderBroke(Exception):
    pass


async def provider(reads: list[bytes], pauses: list[bool], error: bool) -> AsyncIterator[bytes]:
    for index, read in enumerate(reads):
        if pauses[index % len(pauses)]:
            await asyncio.sleep(0)  # the next read is not there yet
        yield read
    if error:
        raise ProviderBroke


async def consume(pieces: AsyncIterator[bytes], slow: list[bool]) -> list[bytes]:
    out = []
    async for piece in pieces:
        out.append(piece)
        for _ in range(3 if slow[len(out) % len(slow)] else 0):
            await asyncio.sleep(0)  # policing takes a while: reads accumulate meanwhile
    return out


@settings(max_examples=200, deadline=None)
@given(
    reads=st.lists(st.binary(min_size=1, max_size=8), min_size=1, max_size=60),
    pauses=st.lists(st.booleans(), min_size=1, max_size=8),
    slow=st.lists(st.booleans(), min_size=1, max_size=8),
    error=st.booleans(),
)
def test_the_bytes_come_out_whole_in_order_and_in_bounded_pieces(
    reads: list[bytes], pauses: list[bool], slow: list[bool], error: bool
) -> None:
    pieces: list[bytes] = []
    raised = False

    async def run_collecting() -> None:
        nonlocal raised
        try:
            async for piece in joined_reads(provider(reads, pauses, error)):
                pieces.append(piece)
                for _ in range(3 if slow[len(pieces) % len(slow)] else 0):
                    await asyncio.sleep(0)
        except ProviderBroke:
            raised = True

    asyncio.run(run_collecting())
    assert b"".join(pieces) == b"".join(reads)  # nothing lost, duplicated or reordered
    assert raised is error  # and the error after everything read before it
    assert pieces[0] == reads[0]  # the first read goes on alone
    assert all(1 <= n <= MAX_JOINED for n in reads_per_piece(pieces, reads))


def reads_per_piece(pieces: list[bytes], reads: list[bytes]) -> list[int]:
    """How many whole, consecutive reads each piece joins (a piece that cuts a read fails)."""
    counts, position = [], 0
    for piece in pieces:
        joined, start = b"", position
        while len(joined) < len(piece):
            joined += reads[position]
            position += 1
        assert joined == piece, "a piece does not end where a read ends"
        counts.append(position - start)
    return counts


async def test_reads_that_arrive_while_the_consumer_works_are_joined() -> None:
    reads = [b"event %d\n\n" % n for n in range(40)]
    pieces = await consume(joined_reads(provider(reads, [False], False)), [True])
    counts = reads_per_piece(pieces, reads)
    assert counts[:4] == [1, 2, 4, 8]  # the first alone, then pieces that grow
    assert max(counts) == MAX_JOINED  # to as many as had accumulated, up to the bound


async def test_closing_early_stops_reading_upstream() -> None:
    read = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal read
        while True:
            read += 1
            yield b"x"
            await asyncio.sleep(0)

    pieces = joined_reads(endless())
    assert await anext(pieces) == b"x"
    await pieces.aclose()
    stopped_at = read
    for _ in range(20):
        await asyncio.sleep(0)
    assert read <= stopped_at + 1  # the reader task is gone, not filling a queue nobody reads
    assert read <= MAX_JOINED + 2  # and it never ran far ahead of the consumer


@pytest.mark.parametrize("error", [False, True])
async def test_an_upstream_that_ends_at_once_ends_the_pieces(error: bool) -> None:
    pieces = joined_reads(provider([b"only"], [False], error))
    assert await anext(pieces) == b"only"
    if error:
        with pytest.raises(ProviderBroke):
            await anext(pieces)
    else:
        with pytest.raises(StopAsyncIteration):
            await anext(pieces)
