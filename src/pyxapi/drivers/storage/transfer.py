"""Moving bytes: spooling an upload stream to a file, and streaming an export back out."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

from .base import DataSource, ImageFormat, ProgressFn, SRHandle, StorageDriver

CHUNK = 1 << 20
_ZEROS = bytes(CHUNK)


def _all_zero(chunk: bytes) -> bool:
    if len(chunk) <= CHUNK:
        return chunk == _ZEROS[: len(chunk)]
    return chunk.count(0) == len(chunk)


async def spool(source: AsyncIterable[bytes], path: str) -> int:
    """Write a stream to a new file (never an existing one); returns the byte count.

    All-zero chunks are skipped over rather than written, so a mostly empty raw disk spools as a
    sparse file (uploads re-cut into aligned blocks make the holes whole filesystem blocks)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    total = 0
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in source:
                if not chunk:
                    continue
                if _all_zero(chunk):
                    f.seek(len(chunk), os.SEEK_CUR)
                else:
                    # Disk writes can stall; keep them off the event loop.
                    await asyncio.to_thread(f.write, chunk)
                total += len(chunk)
            f.truncate(total)  # a trailing hole still counts towards the length
            # No fsync: the spool is read back at once by qemu-img and removed; after a crash it is
            # only a work file (its name says so), never a disk's contents.
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    return total


@contextlib.asynccontextmanager
async def local_file(source: DataSource, workdir: str, prefix: str) -> AsyncIterator[str]:
    """A path for source: the file itself, or a spooled copy in workdir that is removed afterwards."""
    if isinstance(source, Path):
        yield str(source)
        return
    path = os.path.join(workdir, f"{prefix}{os.urandom(8).hex()}.upload")
    try:
        await spool(source, path)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


async def export_stream(
    driver: StorageDriver,
    sr: SRHandle,
    location: str,
    format: ImageFormat,
    workdir: str | None = None,
    progress: ProgressFn | None = None,
) -> AsyncIterator[bytes]:
    """Export to a temporary file and yield it in chunks (VHD and qcow2 writers need to seek)."""
    with tempfile.TemporaryDirectory(dir=workdir, prefix="pyxapi-export-") as tmp:
        dest = Path(tmp) / f"export.{format}"
        await driver.export_data(sr, location, format, dest, progress)
        with open(dest, "rb") as f:
            while chunk := await asyncio.to_thread(f.read, CHUNK):
                yield chunk
