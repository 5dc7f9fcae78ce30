"""Disks inside an XVA: `Ref:N/00000000`-style chunk members and their checksum members.

Writing: a disk of S bytes is cut into 1 MiB chunks (the last one shorter when S is not a multiple);
a chunk is written when it holds data, and the first and the last always (the importer knows a disk
has ended when the bytes it placed reach S). Each chunk is followed by `<name>.checksum`, the SHA-1
of its bytes in lower-case hex, which every xapi release verifies (newer ones also read `.xxhash`,
16 upper-case hex digits of XXH64, and write that instead).

Reading follows xapi's receiver: chunks of one disk come in increasing name order; a gap of k numbers
stands for k all-zero chunks; each chunk's bytes go at the running offset (a chunk may be empty: xapi
sends one to keep idle connections open); the disk is complete when the offset reaches its size.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import xxhash

from pyxapi.xva.errors import ImportFailure, UnexpectedFile

CHUNK = 1 << 20
SHA1_SUFFIX = ".checksum"
XXHASH_SUFFIX = ".xxhash"
CHECKSUM_SUFFIXES = (SHA1_SUFFIX, XXHASH_SUFFIX)
MAX_CHUNK = 16 * CHUNK  # xapi writes 1 MiB; anything far larger is no XVA of ours or xapi's
MAX_CHECKSUM_MEMBER = 256


def chunk_name(prefix: str, number: int) -> str:
    return f"{prefix}/{number:08d}"


def sha1_hex(data: bytes) -> str:
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def xxhash_hex(data: bytes) -> str:
    return xxhash.xxh64(data).hexdigest().upper()


def checksum_of(suffix: str, data: bytes) -> str:
    return sha1_hex(data) if suffix == SHA1_SUFFIX else xxhash_hex(data)


def chunk_count(size: int) -> int:
    return (size + CHUNK - 1) // CHUNK


_ZERO = bytes(CHUNK)


def is_zero(data: bytes) -> bool:
    # memcmp against a zero chunk: memory speed, and it stops at the first byte that differs
    if len(data) == CHUNK:
        return data == _ZERO
    return not data.strip(b"\0")


@dataclass(slots=True)
class ChunkPlan:
    """Which chunk numbers of a disk to send: the ones holding data, plus the first and the last."""

    size: int

    @property
    def last(self) -> int:
        return max(chunk_count(self.size) - 1, 0)

    def length(self, number: int) -> int:
        return min(CHUNK, self.size - number * CHUNK)

    def must_send(self, number: int) -> bool:
        return number in (0, self.last)

    def numbers(self, data_extents: list[tuple[int, int]]) -> list[int]:
        """Chunk numbers covering the (offset, length) extents that hold data, with first and last."""
        wanted = {0, self.last}
        for offset, length in data_extents:
            if length <= 0:
                continue
            first = offset // CHUNK
            last = min((offset + length - 1) // CHUNK, self.last)
            wanted.update(range(first, last + 1))
        return sorted(n for n in wanted if n <= self.last)


class DiskReceiver:
    """xapi's receive rules for one disk: validates each member name in turn and says where its
    bytes go. `place(name, length)` returns the offset for the chunk's data."""

    def __init__(self, prefix: str, size: int) -> None:
        self.prefix = prefix
        self.size = size
        self.offset = 0
        self.last_number = -1

    @property
    def done(self) -> bool:
        return self.offset >= self.size

    def expected(self) -> str:
        return chunk_name(self.prefix, self.last_number + 1)

    def place(self, name: str, length: int) -> int:
        number = self._number(name)
        if number <= self.last_number:
            raise UnexpectedFile(self.expected(), name)
        if length > MAX_CHUNK:
            raise ImportFailure(f"chunk {name} of {length} bytes is larger than any XVA chunk")
        offset = self.offset + (number - self.last_number - 1) * CHUNK
        if offset + length > self.size:
            raise ImportFailure(f"chunk {name} ends at byte {offset + length}, past the disk's {self.size} bytes")
        self.last_number = number
        self.offset = offset + length
        return offset

    def _number(self, name: str) -> int:
        head, sep, digits = name.rpartition("/")
        if head != self.prefix or not sep or not digits.isdigit() or len(digits) > 12:
            raise UnexpectedFile(self.expected(), name)
        return int(digits)


def checksum_suffix(prefix_name: str, member: str) -> str:
    """The checksum member that must follow chunk `prefix_name`: `.checksum` or `.xxhash`."""
    for suffix in CHECKSUM_SUFFIXES:
        if member == prefix_name + suffix:
            return suffix
    raise UnexpectedFile(prefix_name + SHA1_SUFFIX, member)


def verify(name: str, suffix: str, data: bytes, stated: bytes) -> None:
    """xapi's inline check: a mismatch fails the import with IMPORT_ERROR and the block named."""
    text = stated.decode("ascii", "replace").strip()
    computed = checksum_of(suffix, data)
    if text.lower() != computed.lower():
        raise ImportFailure(f"Block {name} checksum failed: original = {text}; recomputed = {computed}")
