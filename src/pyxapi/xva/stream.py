"""Byte streams for archives: an exact-read source over any async chunk iterator, and the
gzip/zstd layers an XVA may be wrapped in (xapi detects them by their magic bytes on import and
applies them on export when asked with `use_compression`).

Decompression is bounded: output is produced in pieces of at most PIECE bytes as the reader asks
for them, so a small compressed body cannot make the daemon hold gigabytes at once.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from typing import Literal, Protocol

import zstandard

from pyxapi.xva.errors import PrematureEOF

PIECE = 4 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

Compression = Literal["gzip", "zstd"]


class ByteSource(Protocol):
    """What the tar reader needs: exact reads, and how much of the (decoded) stream it has taken."""

    consumed: int

    async def read_exactly(self, n: int) -> bytes: ...

    async def at_eof(self) -> bool: ...


class ChunkSource:
    """Exact reads over an async iterator of byte chunks; PrematureEOF when it ends too soon."""

    def __init__(self, chunks: AsyncIterable[bytes], first: bytes = b"") -> None:
        self._chunks = aiter(chunks)
        self._buf = bytearray(first)
        self._done = False
        self.consumed = 0

    async def _fill(self, n: int) -> bool:
        while len(self._buf) < n and not self._done:
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                self._done = True
                break
            self._buf += chunk
        return len(self._buf) >= n

    async def read_exactly(self, n: int) -> bytes:
        if not await self._fill(n):
            raise PrematureEOF()
        out = bytes(self._buf[:n])
        del self._buf[:n]
        self.consumed += n
        return out

    async def at_eof(self) -> bool:
        return not await self._fill(1)


async def first_bytes(chunks: AsyncIterable[bytes], n: int) -> tuple[bytes, AsyncIterator[bytes]]:
    """Read at least n bytes (fewer at EOF) to sniff a format; returns them and the rest."""
    it = aiter(chunks)
    head = bytearray()
    while len(head) < n:
        try:
            head += await anext(it)
        except StopAsyncIteration:
            break
    return bytes(head), it


def sniff(head: bytes) -> Compression | None:
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    return None


async def open_archive(body: AsyncIterable[bytes]) -> tuple[ChunkSource, Compression | None]:
    """The archive's plain bytes, whatever compression the body came in."""
    head, rest = await first_bytes(body, 4)
    kind = sniff(head)
    if kind is None:
        return ChunkSource(rest, head), None
    return ChunkSource(decompress(_prepend(head, rest), kind)), kind


async def _prepend(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if head:
        yield head
    async for chunk in rest:
        yield chunk


ZSTD_SLICE = 4096  # zstd input fed at a time: its output per call is unbounded, its ratio is not


async def decompress(chunks: AsyncIterable[bytes], kind: Compression) -> AsyncIterator[bytes]:
    """Decoded bytes of a gzip or zstd stream (several members or frames in a row are allowed).
    A stream cut short simply ends: the tar reader then reports the premature end."""
    decoder = _Decoder(kind)
    async for chunk in chunks:
        for out in decoder.feed(chunk):
            yield out
            await asyncio.sleep(0)  # let other clients in between pieces of a large chunk


class _Decoder:
    def __init__(self, kind: Compression) -> None:
        self.kind = kind
        self._new()

    def _new(self) -> None:
        self._gz = zlib.decompressobj(16 + zlib.MAX_WBITS) if self.kind == "gzip" else None
        self._zs = zstandard.ZstdDecompressor().decompressobj() if self.kind == "zstd" else None
        self._members = getattr(self, "_members", -1) + 1
        self._fresh = True

    def feed(self, data: bytes) -> Iterator[bytes]:
        from pyxapi.xva.errors import ImportFailure

        try:
            while data:
                if self._fresh and self._members and not data.strip(b"\0"):
                    return  # zero padding after the last member
                self._fresh = False
                if self._gz is not None:
                    out = self._gz.decompress(data, PIECE)
                    data = self._gz.unconsumed_tail
                    eof, rest = self._gz.eof, self._gz.unused_data
                else:
                    assert self._zs is not None
                    piece, data = data[:ZSTD_SLICE], data[ZSTD_SLICE:]
                    out = self._zs.decompress(piece)
                    eof, rest = self._zs.eof, self._zs.unused_data
                if out:
                    yield out
                if eof:  # the next member or frame starts in `rest`
                    data = rest + data
                    self._new()
        except (zlib.error, zstandard.ZstdError) as e:
            raise ImportFailure(f"the {self.kind} stream is corrupt: {e}") from None


class Compressor:
    """Streaming gzip or zstd for exports; `None` passes bytes through."""

    def __init__(self, kind: Compression | None) -> None:
        self.kind = kind
        self._gz = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS) if kind == "gzip" else None
        self._zs = zstandard.ZstdCompressor(level=3).compressobj() if kind == "zstd" else None

    def compress(self, data: bytes) -> bytes:
        if self._gz is not None:
            return self._gz.compress(data)
        if self._zs is not None:
            return self._zs.compress(data)
        return data

    def flush(self) -> bytes:
        if self._gz is not None:
            return self._gz.flush()
        if self._zs is not None:
            return self._zs.flush()
        return b""


def compression_of(value: str | None) -> Compression | None:
    """`use_compression=`: true and gzip mean gzip, zstd means zstd, anything else none (as xapi)."""
    if value in ("true", "gzip"):
        return "gzip"
    if value == "zstd":
        return "zstd"
    return None
