"""A VDI's guest-visible bytes, read for an export or written by an import, through its SR driver.

Local images (the file SR) are attached through the driver, which takes its lock on the VDI, and
served by qemu-nbd: exports read only the extents `qemu-img map` reports as holding data, imports
write chunks in place, so neither copies a whole disk first. Drivers whose attach gives no local file
(the simulator, remote URIs) go through their own export/import path and a sparse raw file under the
data directory instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid as uuidlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pyxapi.context import Context
from pyxapi.drivers.storage import qemuimg
from pyxapi.drivers.storage.base import AttachInfo
from pyxapi.drivers.storage.qemuimg import QEMU_FORMAT
from pyxapi.ops.storage_runtime import StorageRuntime, storage_errors
from pyxapi.xva import nbd


class DiskReader(Protocol):
    size: int

    async def data_extents(self) -> list[tuple[int, int]]: ...

    async def read(self, offset: int, length: int) -> bytes: ...


class DiskWriter(Protocol):
    async def write(self, offset: int, data: bytes) -> None: ...


def storage(ctx: Context) -> StorageRuntime:
    runtime = ctx.services.get("storage")
    if not isinstance(runtime, StorageRuntime):
        raise RuntimeError("storage runtime not wired")
    return runtime


def workdir(ctx: Context) -> Path:
    return ctx.config.data_dir / "tmp"


@dataclass(slots=True)
class _NbdReader:
    client: nbd.NbdClient
    attach: AttachInfo
    size: int

    async def data_extents(self) -> list[tuple[int, int]]:
        return await image_data_extents(self.attach.path, QEMU_FORMAT[self.attach.format])

    async def read(self, offset: int, length: int) -> bytes:
        return await self.client.read(offset, length)


@dataclass(slots=True)
class _FileReader:
    path: str
    size: int

    async def data_extents(self) -> list[tuple[int, int]]:
        return file_data_extents(self.path, self.size)

    async def read(self, offset: int, length: int) -> bytes:
        with open(self.path, "rb") as f:
            return os.pread(f.fileno(), length, offset)


async def image_data_extents(path: str, qemu_format: str) -> list[tuple[int, int]]:
    """(offset, length) of the ranges holding data, whole chain included; zero ranges left out."""
    out: list[tuple[int, int]] = []
    for ext in json.loads(await qemuimg.run(["map", "--output=json", "-f", qemu_format, path])):
        if ext.get("data") and not ext.get("zero"):
            start, length = int(ext["start"]), int(ext["length"])
            if out and out[-1][0] + out[-1][1] == start:
                out[-1] = (out[-1][0], out[-1][1] + length)
            else:
                out.append((start, length))
    return out


def file_data_extents(path: str, size: int) -> list[tuple[int, int]]:
    """Allocated ranges of a sparse file (SEEK_DATA/SEEK_HOLE); the whole file where unsupported."""
    out: list[tuple[int, int]] = []
    with open(path, "rb") as f:
        fd, pos = f.fileno(), 0
        try:
            while pos < size:
                start = os.lseek(fd, pos, os.SEEK_DATA)
                end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
                out.append((start, end - start))
                pos = end
        except OSError as e:
            if e.errno == 6:  # ENXIO: no data after pos
                return out
            return [(0, size)]
    return out


@contextlib.asynccontextmanager
async def reading(ctx: Context, vdi: str) -> AsyncIterator[DiskReader]:
    """The VDI's contents for reading; its driver holds it read-only meanwhile."""
    runtime = storage(ctx)
    rec = ctx.store.get("VDI", vdi)
    sr, location, size = rec["SR"], rec["location"], int(rec["virtual_size"])
    driver, handle = await runtime.sr(sr)
    with storage_errors(ctx.store, sr, vdi):
        attach = await driver.attach_vdi(handle, location, read_only=True)
    try:
        if not attach.is_uri and os.path.isfile(attach.path):
            qemu_format = QEMU_FORMAT[attach.format]
            async with nbd.served(attach.path, qemu_format, writable=False, workdir=workdir(ctx)) as client:
                yield _NbdReader(client, attach, size)
            return
        # No local image: the driver's own export path, to a sparse raw file.
        tmp = _tmp_file(ctx, "export")
        try:
            with storage_errors(ctx.store, sr, vdi):
                await driver.export_data(handle, location, "raw", tmp)
            yield _FileReader(str(tmp), size)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        with storage_errors(ctx.store, sr, vdi):
            await driver.detach_vdi(handle, location)


@dataclass(slots=True)
class _NbdWriter:
    client: nbd.NbdClient

    async def write(self, offset: int, data: bytes) -> None:
        await self.client.write(offset, data)


@dataclass(slots=True)
class _FileWriter:
    fd: int

    async def write(self, offset: int, data: bytes) -> None:
        os.pwrite(self.fd, data, offset)


@contextlib.asynccontextmanager
async def writing(ctx: Context, vdi: str) -> AsyncIterator[DiskWriter]:
    """Write into a (new, empty) VDI; unwritten ranges stay zero. The data is in the VDI when the
    block ends without an error."""
    runtime = storage(ctx)
    rec = ctx.store.get("VDI", vdi)
    sr, location, size = rec["SR"], rec["location"], int(rec["virtual_size"])
    driver, handle = await runtime.sr(sr)
    with storage_errors(ctx.store, sr, vdi):
        attach = await driver.attach_vdi(handle, location, read_only=False)
    local = not attach.is_uri and os.path.isfile(attach.path)
    try:
        if local:
            qemu_format = QEMU_FORMAT[attach.format]
            async with nbd.served(attach.path, qemu_format, writable=True, workdir=workdir(ctx)) as client:
                yield _NbdWriter(client)
    finally:
        with storage_errors(ctx.store, sr, vdi):
            await driver.detach_vdi(handle, location)
    if local:
        with storage_errors(ctx.store, sr, vdi):
            runtime.apply_vdi_info(vdi, await driver.stat_vdi(handle, location))
        return
    tmp = _tmp_file(ctx, "import")
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            yield _FileWriter(fd)
            # No fsync of this spool: import_data reads it back at once and makes the VDI durable.
        finally:
            os.close(fd)
        with storage_errors(ctx.store, sr, vdi):
            info = await driver.import_data(handle, location, tmp, "raw")
        runtime.apply_vdi_info(vdi, info)
    finally:
        tmp.unlink(missing_ok=True)


def _tmp_file(ctx: Context, what: str) -> Path:
    work = workdir(ctx)
    work.mkdir(parents=True, exist_ok=True)
    return work / f"xva-{what}-{uuidlib.uuid4().hex}.raw"


@contextlib.asynccontextmanager
async def image_file(ctx: Context, vdi: str) -> AsyncIterator[tuple[str, str]]:
    """A local image of the VDI's contents and qemu's name for its format, held read-only: the VDI's
    own file where the driver has one, else a raw copy from the driver's export path."""
    runtime = storage(ctx)
    rec = ctx.store.get("VDI", vdi)
    sr, location = rec["SR"], rec["location"]
    driver, handle = await runtime.sr(sr)
    with storage_errors(ctx.store, sr, vdi):
        attach = await driver.attach_vdi(handle, location, read_only=True)
    tmp: Path | None = None
    try:
        if not attach.is_uri and os.path.isfile(attach.path):
            yield attach.path, QEMU_FORMAT[attach.format]
        else:
            tmp = _tmp_file(ctx, "image")
            with storage_errors(ctx.store, sr, vdi):
                await driver.export_data(handle, location, "raw", tmp)
            yield str(tmp), "raw"
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        with storage_errors(ctx.store, sr, vdi):
            await driver.detach_vdi(handle, location)
