"""Writing a VM as an OVA: `<name>.ovf`, `<name>.mf` (SHA-256 of each file), then the disks.

Each disk is converted by qemu-img into the data directory's scratch space first (a VMDK's size
must be in the descriptor before the tar member starts), then streamed; nothing stays behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from pyxapi.context import Context
from pyxapi.db.store import NULL_REF
from pyxapi.drivers.storage import qemuimg
from pyxapi.drivers.storage.base import BackendFailure, SMError
from pyxapi.model.errors import ApiError
from pyxapi.xva import disks, ovf, tar

Emit = Callable[[bytes], Awaitable[None]]

# disk_format= value -> (qemu-img driver, creation options, OVF format URL, file suffix)
DISK_FORMATS: dict[str, tuple[str, list[str], str, str]] = {
    "vmdk": ("vmdk", ["-o", "subformat=streamOptimized"], ovf.VMDK_STREAM, "vmdk"),
    "qcow2": ("qcow2", ["-o", "compat=1.1"], ovf.QCOW2_URL, "qcow2"),
    "vhd": ("vpc", ["-o", "subformat=dynamic,force_size=on"], ovf.VHD_URL, "vhd"),
    "raw": ("raw", [], ovf.RAW_URL, "img"),
}


@dataclass(slots=True)
class _Converted:
    out: ovf.DiskOut
    path: Path
    sha256: str


def check_disk_format(value: str) -> str:
    if value not in DISK_FORMATS:
        raise ApiError("VALUE_NOT_SUPPORTED", "disk_format", value, f"expected one of {', '.join(DISK_FORMATS)}")
    return value


def _file_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "vm"
    return stem[:64]


def disk_vdis(ctx: Context, vm: str) -> list[str]:
    store = ctx.store
    out = []
    vbds = sorted(store.get("VM", vm)["VBDs"], key=lambda b: str(store.get("VBD", b)["userdevice"]).zfill(4))
    for vbd in vbds:
        b = store.get("VBD", vbd)
        if b["type"] != "CD" and not b["empty"] and store.exists("VDI", b["VDI"]):
            out.append(b["VDI"])
    return out


@contextlib.asynccontextmanager
async def _converted(ctx: Context, vm: str, disk_format: str, stem: str) -> AsyncIterator[list[_Converted]]:
    scratch = disks.workdir(ctx) / f"ova-out-{uuidlib.uuid4().hex}"
    scratch.mkdir(parents=True, mode=0o700)
    driver, options, url, suffix = DISK_FORMATS[disk_format]
    made: list[_Converted] = []
    try:
        for n, vdi in enumerate(disk_vdis(ctx, vm)):
            target = scratch / f"{stem}-disk{n}.{suffix}"
            async with disks.image_file(ctx, vdi) as (path, fmt):
                try:
                    await qemuimg.run(["convert", "-f", fmt, "-O", driver, *options, path, str(target)])
                except qemuimg.QemuImgError as e:
                    raise BackendFailure(SMError.EIO, e.stderr) from None
            digest = await asyncio.to_thread(_sha256, target)
            capacity = int(ctx.store.get("VDI", vdi)["virtual_size"])
            out = ovf.DiskOut(f"disk{n}", target.name, target.stat().st_size, capacity, url)
            made.append(_Converted(out, target, digest))
        yield made
    finally:
        for c in made:
            c.path.unlink(missing_ok=True)
        for leftover in scratch.iterdir():
            leftover.unlink(missing_ok=True)
        scratch.rmdir()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _system(ctx: Context, vm: str) -> tuple[ovf.OvfSystem, list[str]]:
    store = ctx.store
    rec = store.get("VM", vm)
    nics, networks = [], []
    for vif in sorted(rec["VIFs"], key=lambda v: str(store.get("VIF", v)["device"]).zfill(4)):
        v = store.get("VIF", vif)
        net = store.find("network", v["network"]) if v["network"] != NULL_REF else None
        name = net["name_label"] if net else "network"
        nics.append((name, v["MAC"]))
        if name not in networks:
            networks.append(name)
    system = ovf.OvfSystem(
        name=rec["name_label"] or rec["uuid"],
        description=rec["name_description"],
        vcpus=int(rec["VCPUs_at_startup"]) or 1,
        memory=int(rec["memory_static_max"]),
        nics=nics,
    )
    return system, networks


async def write_ova(ctx: Context, vm: str, emit: Emit, disk_format: str = "vmdk") -> None:
    system, networks = _system(ctx, vm)
    stem = _file_stem(system.name)
    now = int(time.time())
    async with _converted(ctx, vm, disk_format, stem) as converted:
        descriptor = ovf.build(system, [c.out for c in converted], networks)
        manifest = [f"SHA256({stem}.ovf)= {hashlib.sha256(descriptor).hexdigest()}"]
        manifest += [f"SHA256({c.out.href})= {c.sha256}" for c in converted]
        await emit(tar.member(f"{stem}.ovf", descriptor, now))
        await emit(tar.member(f"{stem}.mf", ("\n".join(manifest) + "\n").encode(), now))
        for c in converted:
            await emit(tar.header(c.out.href, c.out.file_size, now))
            with open(c.path, "rb") as f:
                while block := await asyncio.to_thread(f.read, 1 << 20):
                    await emit(block)
            await emit(tar.padding(c.out.file_size))
    await emit(tar.END_OF_ARCHIVE)
