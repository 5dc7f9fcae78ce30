"""Helpers for the storage driver contract suite (tests/drivers/test_storage_contract.py).

A Harness is one driver with one attached SR plus the guest-side view of its disks: writing and reading
bytes the way a hypervisor would (qemu-io / qemu-img on the attach path for real drivers, the
simulator's hooks otherwise).

The suite runs over KINDS; a test decorated with @needs(capabilities...) runs only on the drivers that
declare them (capabilities decide, as xapi checks SM capabilities), and test_undeclared_capabilities_
are_refused checks that every driver refuses what it does not declare. Shared SRs run against real
servers: nfs on nfs-ganesha (nfs_server.py), iscsi on tgtd (iscsi_target.py), each in a namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pyxapi.drivers.hypervisor.qemu_cmdline import protocol_node
from pyxapi.drivers.storage import make_driver
from pyxapi.drivers.storage.base import Capability, SRHandle, StorageDriver
from pyxapi.drivers.storage.file import FileStorageDriver
from pyxapi.drivers.storage.sim import SimStorageDriver
from tests.drivers.iscsi_target import IscsiTarget
from tests.drivers.nfs_server import NfsServer, TestNetns

MiB = 1024**2
GiB = 1024**3
TiB = 1024**4


KINDS = ("sim", "file", "nfs", "iscsi")
SEES_FILES = ("file", "nfs")  # kinds whose SR directory the test can list (the export, server side)
F = TypeVar("F", bound=Callable[..., Any])


def needs(*capabilities: Capability) -> Callable[[F], F]:
    """Mark a contract test as applying only to drivers that declare all these capabilities."""

    def mark(fn: F) -> F:
        fn._needs = frozenset(capabilities)  # type: ignore[attr-defined]
        return fn

    return mark


def kinds_for(fn: Callable[..., Any]) -> list[str]:
    wanted = getattr(fn, "_needs", frozenset())
    return [k for k in KINDS if wanted <= make_driver(k).capabilities]


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
    url_root: str | None = None  # remote SRs: where add_foreign puts images (through the server)
    provision: Callable[[int], Awaitable[str]] | None = None  # SRs without VDI_CREATE: a new LUN

    @property
    def sees_files(self) -> bool:
        return self.kind in SEES_FILES

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
            if attach.is_uri:  # nfs:// or iscsi://: the protocol node the hypervisor would open
                protocol = protocol_node(attach.path, "read", True)
                protocol.pop("node-name")
                window = {"driver": "raw", "offset": offset, "size": length,
                          "file": {"driver": attach.format, "file": protocol}}  # fmt: skip
                run("qemu-img", "convert", f"json:{json.dumps(window)}", "-O", "raw", str(out))
                return out.read_bytes()
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
            target = f"{self.url_root}/{location}" if self.url_root else str(self.root / location)
            run("qemu-img", "create", "-q", "-f", "qcow2", target, str(size))

    def files(self) -> set[str]:
        return set(os.listdir(self.root)) if self.sees_files else set()


async def make_vdi(h: Harness, size: int = 64 * MiB, fmt: str | None = None) -> str:
    if h.provision is not None and Capability.VDI_CREATE not in h.driver.capabilities:
        return await h.provision(size)  # what an admin does on such storage: a new LUN
    info = await h.driver.create_vdi(h.sr, new_uuid(), size, fmt)  # type: ignore[arg-type]
    return info.location


# ------------------------------------------------------------------------------- shared servers


async def file_harness(tmp_path: Path) -> AsyncIterator[Harness]:
    """A file SR in tmp_path (conftest's `fh` fixture: the file driver's own tests use it)."""
    driver = FileStorageDriver()
    root = tmp_path / "sr"
    sr = SRHandle(new_uuid(), {"location": str(root)})
    await driver.create_sr(sr.device_config, sr.uuid)
    await driver.attach_sr(sr)
    (tmp_path / "work").mkdir()
    yield Harness("file", driver, sr, root, tmp_path / "work")


@pytest.fixture(scope="module")
def nfs_share(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NfsServer]:
    """One nfs-ganesha per test module, in its own namespace; each test makes its own SR on it."""
    net = TestNetns.create("pyxnfs")
    server = NfsServer(net, tmp_path_factory.mktemp("nfs"))
    try:
        yield server.start()
    finally:
        server.stop()
        net.delete()


@pytest.fixture(scope="module")
def iscsi_portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IscsiTarget]:
    """One tgtd per test module, in its own namespace; each test gets its own target (IQN)."""
    net = TestNetns.create("pyxisc")
    target = IscsiTarget(net, tmp_path_factory.mktemp("iscsi"))
    try:
        yield target.start()
    finally:
        target.stop()
        net.delete()


@contextlib.asynccontextmanager
async def make_harness(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> AsyncIterator[Harness]:
    """A driver of `kind` with a fresh, attached SR (on the module's server for nfs and iscsi)."""
    driver = make_driver(kind)
    work = tmp_path / "work"
    work.mkdir()
    sr_uuid = new_uuid()
    url_root = None
    provision = None
    if kind == "nfs":
        share: NfsServer = request.getfixturevalue("nfs_share")
        serverpath = share.export / f"t-{sr_uuid[:8]}"  # a directory of its own below the export
        serverpath.mkdir()
        device_config = share.device_config(serverpath)
        root = serverpath / sr_uuid
        url_root = f"nfs://{share.server}{serverpath}/{sr_uuid}"
        driver.work_dir = str(work)  # type: ignore[attr-defined] - uploads spool here, checked empty
    elif kind == "iscsi":
        portal: IscsiTarget = request.getfixturevalue("iscsi_portal")
        iqn = portal.new_target(tmp_path / "luns")
        device_config = portal.device_config(iqn)
        root = tmp_path / "luns"
        sr = SRHandle(sr_uuid, device_config)

        async def provision(size: int) -> str:
            lun = portal.add_lun(iqn, size)
            await driver.scan(sr)
            return f"LUN{lun}"
    else:
        root = tmp_path / "sr"
        device_config = {"location": str(root)}
    sr = SRHandle(sr_uuid, device_config)
    await driver.create_sr(device_config, sr_uuid)
    await driver.attach_sr(sr)
    try:
        yield Harness(kind, driver, sr, root, work, url_root, provision)
    finally:
        if kind == "iscsi":
            portal.remove_target(iqn)


@pytest.fixture(scope="session", autouse=True)
def qemu_utils() -> None:
    missing = [tool for tool in ("qemu-img", "qemu-io") if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: install Debian package qemu-utils (scripts/install-debian-deps.sh)"
        )
