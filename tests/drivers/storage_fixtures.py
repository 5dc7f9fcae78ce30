"""Helpers for the storage driver contract suite (tests/drivers/test_storage_contract.py).

A Harness is one driver with one attached SR plus the guest-side view of its disks: writing and reading
bytes the way a hypervisor would (qemu-io / qemu-img on the attach path for real drivers, the
simulator's hooks otherwise).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from pyxapi.drivers.storage.base import SRHandle, StorageDriver
from pyxapi.drivers.storage.sim import SimStorageDriver

MiB = 1024**2
GiB = 1024**3
TiB = 1024**4


def new_uuid() -> str:
    return str(uuid.uuid4())


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


@dataclass
class Harness:
    """A driver with one attached SR, plus the guest-side helpers that differ per driver."""

    kind: str
    driver: StorageDriver
    sr: SRHandle
    root: Path
    tmp: Path

    async def write(self, location: str, offset: int, byte: int, length: int) -> None:
        attach = await self.driver.attach_vdi(self.sr, location)
        try:
            if isinstance(self.driver, SimStorageDriver):
                self.driver.write(self.sr.uuid, location, offset, bytes([byte]) * length)
            else:
                run("qemu-io", "-f", attach.format, "-c", f"write -P {byte:#x} {offset} {length}", attach.path)
        finally:
            await self.driver.detach_vdi(self.sr, location)

    async def read(self, location: str, offset: int, length: int) -> bytes:
        attach = await self.driver.attach_vdi(self.sr, location, read_only=True)
        try:
            if isinstance(self.driver, SimStorageDriver):
                return self.driver.read(self.sr.uuid, location, offset, length)
            out = self.tmp / f"read-{new_uuid()}.raw"
            # A raw window (offset/size) over the image node: reads exactly the range, at any offset.
            opts = (
                f"driver=raw,offset={offset},size={length},file.driver={attach.format},"
                f"file.file.driver=file,file.file.filename={attach.path.replace(',', ',,')}"
            )
            run("qemu-img", "convert", "--image-opts", opts, "-O", "raw", str(out))
            return out.read_bytes()
        finally:
            await self.driver.detach_vdi(self.sr, location)

    def add_foreign(self, location: str, size: int) -> None:
        if isinstance(self.driver, SimStorageDriver):
            self.driver.add_foreign_image(self.sr.uuid, location, size)
        else:
            run("qemu-img", "create", "-q", "-f", "qcow2", str(self.root / location), str(size))

    def files(self) -> set[str]:
        return set(os.listdir(self.root)) if self.kind == "file" else set()


async def make_vdi(h: Harness, size: int = 64 * MiB, fmt: str | None = None) -> str:
    info = await h.driver.create_vdi(h.sr, new_uuid(), size, fmt)  # type: ignore[arg-type]
    return info.location
