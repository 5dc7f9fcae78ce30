"""The tar layer of XVA and OVA files: ustar headers to write, and a strict streaming reader.

Nothing read here ever becomes a path on disk: members are data in memory or bytes sent to a disk
the caller chose. The reader still refuses what no XVA/OVA contains, so a hostile archive fails
early and plainly: links, devices, directories and other special members, absolute or `..` names,
headers whose checksum is wrong, and metadata headers (pax, GNU long names) above a small bound.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass

from pyxapi.xva.errors import ImportFailure
from pyxapi.xva.stream import ByteSource

BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)
MAX_META_HEADER = 64 * 1024  # pax / GNU long-name payloads: real ones are a few hundred bytes

_REGULAR = (b"0", b"\0", b"7")
_META = {b"x": "pax", b"g": "pax global", b"L": "GNU long name"}
_KINDS = {
    b"1": "a hard link",
    b"2": "a symbolic link",
    b"3": "a character device",
    b"4": "a block device",
    b"5": "a directory",
    b"6": "a FIFO",
    b"K": "a GNU long link name",
    b"S": "a GNU sparse file",
    b"V": "a GNU volume header",
    b"M": "a GNU multi-volume member",
}


# ------------------------------------------------------------------------------------------ writing


def header(name: str, size: int, mtime: int = 0) -> bytes:
    """A ustar header for a regular file (names here are short ASCII: `Ref:12/00000003.checksum`)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.type = tarfile.REGTYPE
    return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


def padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


def member(name: str, data: bytes, mtime: int = 0) -> bytes:
    return header(name, len(data), mtime) + data + padding(len(data))


# ------------------------------------------------------------------------------------------ reading


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    size: int


class TarReader:
    """Members one at a time; the caller reads each member's data (or skips it) before the next."""

    def __init__(self, source: ByteSource) -> None:
        self.source = source
        self._remaining = 0  # data bytes of the current member not yet read
        self._pad = 0
        self.ended = False

    async def next(self) -> Member | None:
        """The next regular member, or None at the end of the archive (a zero block or the body's end)."""
        await self.skip_rest()
        name_override: str | None = None
        size_override: int | None = None
        for _ in range(8):  # meta headers in a row before a real one: a few at most
            if await self.source.at_eof():
                self.ended = True
                return None
            block = await self.source.read_exactly(BLOCK)
            if not block.strip(b"\0"):
                self.ended = True
                return None
            name, size, kind = _parse(block)
            if kind in _META:
                if size > MAX_META_HEADER:
                    raise ImportFailure(f"tar {_META[kind]} header of {size} bytes is too large")
                payload = await self.source.read_exactly(size + (-size % BLOCK))
                payload = payload[:size]
                if kind == b"L":
                    name_override = payload.rstrip(b"\0").decode("utf-8", "replace")
                elif kind == b"x":
                    fields = _pax(payload)
                    name_override = fields.get("path", name_override)
                    if "size" in fields:
                        size_override = _pax_int(fields["size"])
                continue
            if kind not in _REGULAR:
                what = _KINDS.get(kind, f"of type {kind!r}")
                raise ImportFailure(f"tar member {name!r} is {what}, not a regular file")
            name = name_override if name_override is not None else name
            size = size_override if size_override is not None else size
            check_name(name)
            self._remaining, self._pad = size, -size % BLOCK
            return Member(name, size)
        raise ImportFailure("too many tar metadata headers in a row")

    async def read(self, limit: int) -> bytes:
        """The current member's data, which must be at most `limit` bytes (refused before reading)."""
        if self._remaining > limit:
            raise ImportFailure(f"tar member of {self._remaining} bytes exceeds the limit of {limit}")
        data = await self.source.read_exactly(self._remaining) if self._remaining else b""
        self._remaining = 0
        return data

    async def read_piece(self, n: int) -> bytes:
        """Up to n bytes more of the current member (b"" once it is all read): for big members."""
        n = min(n, self._remaining)
        data = await self.source.read_exactly(n) if n else b""
        self._remaining -= n
        return data

    async def skip_rest(self) -> None:
        while self._remaining:
            n = min(self._remaining, 1 << 20)
            await self.source.read_exactly(n)
            self._remaining -= n
        if self._pad:
            await self.source.read_exactly(self._pad)
            self._pad = 0


def check_name(name: str) -> None:
    """Refuse names no XVA/OVA member has: absolute, `..`, empty parts, control characters."""
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or ".." in parts
        or any(p in ("", ".") for p in parts)
        or any(ord(c) < 32 or c == "\\" for c in name)
        or len(name) > 255
    ):
        raise ImportFailure(f"tar member name {name!r} is not allowed")


def _parse(block: bytes) -> tuple[str, int, bytes]:
    stored = _octal(block[148:156], "checksum")
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = (
        sum(b - 256 if b > 127 else b for b in block[:148])
        + 8 * 32
        + sum(b - 256 if b > 127 else b for b in block[156:])
    )
    if stored not in (unsigned, signed):
        raise ImportFailure("tar header checksum mismatch: not a tar archive, or a corrupt one")
    name = block[0:100].split(b"\0", 1)[0]
    if block[257:262] == b"ustar":
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "replace"), _size(block[124:136]), block[156:157]


def _size(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        if field[0] & 0x40:
            raise ImportFailure("tar member with a negative size")
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    return _octal(field, "size")


def _octal(field: bytes, what: str) -> int:
    text = field.replace(b"\0", b" ").strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise ImportFailure(f"tar header {what} field is not a number: {field!r}") from None


def _pax(payload: bytes) -> dict[str, str]:
    """`<length> <key>=<value>\\n` records."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(payload):
        space = payload.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(payload[pos:space])
        except ValueError:
            raise ImportFailure("malformed pax header") from None
        if length <= 0 or pos + length > len(payload):
            raise ImportFailure("malformed pax header")
        record = payload[space + 1 : pos + length].rstrip(b"\n")
        key, _, value = record.partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return out


def _pax_int(text: str) -> int:
    if not text.isdigit() or len(text) > 20:
        raise ImportFailure(f"malformed pax size {text!r}")
    return int(text)
