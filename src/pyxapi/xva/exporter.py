"""Writing an XVA: ova.xml, then each disk's chunks with their checksums, then the end of the tar.

The archive goes out through `emit` as it is made: one chunk (1 MiB) is the most held at a time,
and the next chunk is read while the current one is hashed and sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from pyxapi.context import Context
from pyxapi.xva import disks, ovaxml, tar
from pyxapi.xva.chunks import SHA1_SUFFIX, ChunkPlan, chunk_name, is_zero, sha1_hex
from pyxapi.xva.collect import ExportPlan, version

Emit = Callable[[bytes], Awaitable[None]]
Progress = Callable[[float], None]


def ova_xml(ctx: Context, plan: ExportPlan) -> bytes:
    return ovaxml.encode(version(ctx), plan.objects)


async def write_metadata(ctx: Context, plan: ExportPlan, emit: Emit) -> None:
    data = ova_xml(ctx, plan)
    await emit(tar.member(ovaxml.FILENAME, data, int(time.time())) + tar.END_OF_ARCHIVE)


async def write_xva(ctx: Context, plan: ExportPlan, emit: Emit, progress: Progress | None = None) -> None:
    now = int(time.time())
    await emit(tar.member(ovaxml.FILENAME, ova_xml(ctx, plan), now))
    total = sum(size for _, _, size in plan.disks) or 1
    done = 0

    reported = [0.0]

    def report(n: int) -> None:
        # a task update is an event for every watcher: one per percent, not one per chunk
        fraction = min((done + n) / total, 1.0)
        if progress is not None and fraction - reported[0] >= 0.01:
            reported[0] = fraction
            progress(fraction)

    for prefix, vdi, size in plan.disks:
        async with disks.reading(ctx, vdi) as reader:
            await _write_disk(reader, prefix, size, emit, now, report)
        done += size
    await emit(tar.END_OF_ARCHIVE)


async def _write_disk(
    reader: disks.DiskReader, prefix: str, size: int, emit: Emit, mtime: int, progress: Callable[[int], None]
) -> None:
    chunks = ChunkPlan(size)
    numbers = chunks.numbers(await reader.data_extents()) if size else []

    async def fetch(n: int) -> bytes:
        return await reader.read(n * (1 << 20), chunks.length(n))

    pending = asyncio.ensure_future(fetch(numbers[0])) if numbers else None
    try:
        for i, n in enumerate(numbers):
            assert pending is not None
            data = await pending
            pending = asyncio.ensure_future(fetch(numbers[i + 1])) if i + 1 < len(numbers) else None
            if not chunks.must_send(n) and is_zero(data):
                continue  # allocated but zero (a qcow2 cluster, a raw file's written zeros): sparse
            digest = await asyncio.to_thread(sha1_hex, data)
            name = chunk_name(prefix, n)
            await emit(tar.header(name, len(data), mtime) + data + tar.padding(len(data)))
            await emit(tar.member(name + SHA1_SUFFIX, digest.encode(), mtime))
            progress(n * (1 << 20) + len(data))
    finally:
        if pending is not None:
            pending.cancel()  # an abandoned read: wait for it to end, its outcome no longer matters
            await asyncio.wait([pending])
