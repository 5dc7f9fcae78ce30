"""Moving an upload from the socket to the import job, a bounded piece at a time.

The request handler reads the body (it is the task aiohttp cancels when the client goes away) and
hands aligned 1 MiB blocks to a `BodyChannel`; the import job, a task of its own, consumes them. At
most `depth` blocks wait in between, so a disk of any size never sits in memory, and either side
stopping is seen by the other: the job gets IMPORT_ERROR_PREMATURE_EOF when the client vanished,
the reader stops when the job failed.

Also here: xapi's own sparse "chunked" upload protocol (`?chunked=true`, raw only), and a progress
reporter that maps a phase onto part of a task's progress without writing the task on every block.
"""

from __future__ import annotations

import asyncio
import collections
import os
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from pyxapi.model.errors import ApiError

BLOCK = 1 << 20
"""Upload blocks are re-cut to this size and offset, so all-zero ones can become holes when spooled."""

CHUNK_HEADER = struct.Struct("<QI")
"""xapi's chunked upload: a little-endian u64 disk offset and u32 length before each piece of data;
offset 0 with length 0 ends the stream (vhd-tool's `chunked` source)."""

MAX_PROTOCOL_CHUNK = 64 << 20


def premature_eof() -> ApiError:
    return ApiError("IMPORT_ERROR_PREMATURE_EOF")


class ConsumerGone(Exception):
    """The import job stopped reading (it failed or was cancelled): stop feeding it."""


class BodyChannel:
    """A bounded hand-over of body blocks from one producer task to one consumer task."""

    def __init__(self, depth: int = 4) -> None:
        self.depth = depth
        self._blocks: collections.deque[bytes] = collections.deque()
        self._ready = asyncio.Event()  # blocks, an end or an error are waiting for the consumer
        self._space = asyncio.Event()  # the producer may put again
        self._ended = False
        self._error: ApiError | None = None
        self._consumer_gone = False

    async def put(self, block: bytes) -> None:
        while len(self._blocks) >= self.depth and not self._consumer_gone:
            self._space.clear()
            await self._space.wait()
        if self._consumer_gone:
            raise ConsumerGone()
        self._blocks.append(block)
        self._ready.set()

    def end(self) -> None:
        self._ended = True
        self._ready.set()

    def abort(self, error: ApiError) -> None:
        """The producer cannot go on (the client left, the body was malformed)."""
        if not self._ended:
            self._error = error
            self._ready.set()

    def consumer_done(self) -> None:
        self._consumer_gone = True
        self._blocks.clear()
        self._space.set()

    @property
    def consumer_gone(self) -> bool:
        return self._consumer_gone

    async def blocks(self) -> AsyncIterator[bytes]:
        try:
            while True:
                while not self._blocks and not self._ended and self._error is None:
                    self._ready.clear()
                    await self._ready.wait()
                if self._blocks:
                    block = self._blocks.popleft()
                    self._space.set()
                    yield block
                elif self._error is not None:
                    raise self._error
                else:
                    return
        finally:
            self.consumer_done()


async def feed(
    read: Callable[[int], Awaitable[bytes]],
    channel: BodyChannel,
    expected: int | None,
    idle_timeout: float,
    on_bytes: Callable[[int], None] | None = None,
) -> int:
    """Read the body with `read(n)` (an awaitable returning b'' at the end) into the channel as
    aligned blocks. Returns the byte count; IMPORT_ERROR_PREMATURE_EOF when fewer than `expected`
    bytes came or the client stalled longer than `idle_timeout`."""
    pending = bytearray()
    total = 0
    while True:
        try:
            piece = await asyncio.wait_for(read(BLOCK), idle_timeout)
        except TimeoutError:
            raise premature_eof() from None
        if not piece:
            break
        total += len(piece)
        if on_bytes is not None:
            on_bytes(total)
        pending += piece
        while len(pending) >= BLOCK:
            await channel.put(bytes(pending[:BLOCK]))
            del pending[:BLOCK]
    if expected is not None and total < expected:
        raise premature_eof()
    if pending:
        await channel.put(bytes(pending))
    return total


class ExactReader:
    """`read_exactly(n)` over a stream of blocks (for the chunk protocol's headers and pieces)."""

    def __init__(self, blocks: AsyncIterator[bytes]) -> None:
        self._blocks = blocks
        self._buffer = bytearray()

    async def read_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            try:
                self._buffer += await anext(self._blocks)
            except StopAsyncIteration:
                raise premature_eof() from None
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    async def at_end(self) -> bool:
        if self._buffer:
            return False
        try:
            self._buffer += await anext(self._blocks)
        except StopAsyncIteration:
            return True
        return not self._buffer


async def apply_chunk_protocol(blocks: AsyncIterator[bytes], fd: int, disk_size: int) -> int:
    """Write each (offset, data) piece of a chunked upload into the raw image open at `fd`; returns
    the bytes written. Pieces past the disk's end, or a stream without its end marker, fail."""
    reader = ExactReader(blocks)
    written = 0
    while True:
        offset, length = CHUNK_HEADER.unpack(await reader.read_exactly(CHUNK_HEADER.size))
        if offset == 0 and length == 0:
            break
        if length > MAX_PROTOCOL_CHUNK:
            raise ApiError("IMPORT_ERROR", f"chunk of {length} bytes at offset {offset} is larger than allowed")
        if offset + length > disk_size:
            raise ApiError("IMPORT_ERROR", f"chunk at offset {offset} (+{length}) is past the end of the disk")
        data = await reader.read_exactly(length)
        await asyncio.to_thread(os.pwrite, fd, data, offset)
        written += length
    if not await reader.at_end():
        raise ApiError("IMPORT_ERROR", "data after the end-of-stream chunk")
    return written


class Progress:
    """A task's progress from a phase's own fraction, mapped onto [low, high] of the whole and
    written at most every `period` seconds (or on a 1% step), so events stay few."""

    def __init__(self, write: Callable[[float], None], period: float = 0.5) -> None:
        self._write = write
        self._period = period
        self._last_value = -1.0
        self._last_time = 0.0

    def phase(self, low: float, high: float) -> Callable[[float], None]:
        def report(fraction: float) -> None:
            self.set(low + (high - low) * max(0.0, min(1.0, fraction)))

        return report

    def set(self, value: float) -> None:
        now = time.monotonic()
        due = value - self._last_value >= 0.01 or now - self._last_time >= self._period
        if due and value != self._last_value:
            self._write(value)
            self._last_value, self._last_time = value, now
