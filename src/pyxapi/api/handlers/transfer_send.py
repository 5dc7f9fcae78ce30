"""The bytes of an export after its headers: an image file (sendfile where the transport allows),
or a disk read through qemu-nbd as it goes (raw exports: no temporary copy, the first byte at once).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from pyxapi.model.errors import ApiError

from .nbd_reader import NbdError, serve

SEND_PIECE = 64 << 20  # a file is sent in pieces this big, with progress between them
READ_BLOCK = 1 << 20  # where sendfile cannot be used (TLS), the file is read and written this big
TAIL = 64 << 10  # held back until the disk is released (see send_disk)


QEMU_URI_SCHEMES = frozenset({"nfs", "iscsi", "nbd", "ssh", "gluster", "rbd", "http", "https"})


def qemu_can_open(path: str) -> bool:
    """A local image file, or a URI of one of QEMU's network block drivers (not a simulator's)."""
    scheme, sep, _ = path.partition("://")
    if sep:
        return scheme in QEMU_URI_SCHEMES
    return os.path.isabs(path) and os.path.exists(path)


async def _nothing() -> None:
    return None


async def send_disk(
    request: web.Request,
    response: web.StreamResponse,
    path: str,
    fmt: str,
    workdir: Path,
    progress: Callable[[float], None],
    before_last: Callable[[], Awaitable[None]] = _nothing,
) -> None:
    """A disk's guest-visible bytes (raw): a local raw image is its own contents; anything else
    (qcow2 chains, nfs://, iscsi://) is read through qemu-nbd. `before_last` runs once everything
    is read, before the last bytes go out: a client holding the whole body finds the disk free.
    `progress(1.0)` comes once every byte is written, and only then."""
    if fmt == "raw" and "://" not in path:
        size = os.path.getsize(path)
        response.content_length = size
        await response.prepare(request)
        await send_file(request, response, Path(path), size, progress, before_last)
        return
    try:
        async with serve(path, fmt, workdir) as nbd:
            response.content_length = nbd.size
            await response.prepare(request)
            sent, held = 0, b""
            async for data in nbd.chunks():
                if held:
                    await response.write(held)
                    sent += len(held)
                    progress(sent / nbd.size)
                held = data
            await before_last()
            if held:
                await response.write(held)
            progress(1.0)
    except NbdError as e:
        raise ApiError("VDI_IO_ERROR", f"Device I/O errors: {e}") from None


async def send_file(
    request: web.Request,
    response: web.StreamResponse,
    path: Path,
    size: int,
    progress: Callable[[float], None],
    before_last: Callable[[], Awaitable[None]] = _nothing,
) -> None:
    """The file's bytes after the headers: sendfile(2) in pieces where the transport allows it;
    `before_last` runs before the last piece (at most TAIL bytes) is sent."""
    tail = min(size, TAIL)
    with open(path, "rb") as f:
        await _send_range(request, response, f, 0, size - tail, size, progress)
        await before_last()
        await _send_range(request, response, f, size - tail, size, size, progress)
    progress(1.0)  # everything is out: callers rely on this last call


async def _send_range(
    request: web.Request,
    response: web.StreamResponse,
    f: BinaryIO,
    start: int,
    end: int,
    size: int,
    progress: Callable[[float], None],
) -> None:
    loop = asyncio.get_running_loop()
    sent = start
    use_sendfile = request.transport is not None
    while sent < end:
        piece = min(SEND_PIECE, end - sent)
        if use_sendfile:
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("the client closed the connection")
            try:
                await loop.sendfile(transport, f, sent, piece)  # type: ignore[arg-type]
            except NotImplementedError:
                use_sendfile = False
                continue
        else:
            f.seek(sent)
            left = piece
            while left:
                data = await asyncio.to_thread(f.read, min(left, READ_BLOCK))
                if not data:
                    raise OSError(f"the image shrank while being sent ({sent + piece - left} of {size})")
                await response.write(data)
                left -= len(data)
        sent += piece
        progress(sent / size)
