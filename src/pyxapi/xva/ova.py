"""OVA (a tar: an .ovf descriptor, an optional .mf manifest, the disk files) in and out.

Import: disk files (VMDK, VHD, qcow2 or raw) are spooled to the data directory's scratch space,
checked against the descriptor's sizes and the manifest's SHA-1/SHA-256 (unless `force`), and
refused when qemu would follow them elsewhere (a backing file, a VMDK extent other than the file
itself). The VM, its disks, NICs and CD drives are described as the objects of an XVA would be and
created by the same importer (same rules, same undo); each disk's data is then copied through
qemu-nbd from the spooled image into its new VDI.

Export: each disk converted by qemu-img to a streamOptimized VMDK (or qcow2, vhd, raw), a descriptor
naming them and a SHA-256 manifest, written as one tar.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import uuid as uuidlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyxapi.api.dispatch import Call
from pyxapi.context import Context
from pyxapi.db.store import NULL_REF
from pyxapi.drivers.storage import qemuimg
from pyxapi.xva import disks, nbd, ovf
from pyxapi.xva.chunks import CHUNK, is_zero
from pyxapi.xva.errors import ImportFailure, PrematureEOF, UnexpectedFile
from pyxapi.xva.importer import ImportResult, Progress
from pyxapi.xva.ovaxml import ExportObject
from pyxapi.xva.restore import ImportConfig, Importer
from pyxapi.xva.tar import Member, TarReader

log = logging.getLogger(__name__)

MAX_MANIFEST = 1 << 20
_MANIFEST_LINE = re.compile(r"^(SHA1|SHA256|SHA512)\((.+)\)\s*=\s*([0-9a-fA-F]+)\s*$")
SAFE_VMDK_TYPES = {"monolithicSparse", "streamOptimized"}


@dataclass(slots=True)
class _Spooled:
    path: Path
    size: int
    digests: dict[str, str]


# ------------------------------------------------------------------------------------------- import


async def import_ova(
    call: Call, reader: TarReader, first: Member, config: ImportConfig, progress: Progress | None = None
) -> ImportResult:
    ctx = call.ctx
    descriptor = ovf.parse(await reader.read(ovf.MAX_DESCRIPTOR))
    async with _scratch(ctx) as scratch:
        files, manifest = await _receive_files(reader, descriptor, scratch)
        _check_files(descriptor, files, manifest, config.force)
        images = {
            disk_id: await _inspect(files, descriptor, disk)
            for disk_id, disk in descriptor.disks.items()
            if disk.file_id is not None
        }
        objects, disk_of = _objects(descriptor, images)
        importer = Importer(call, config, objects)
        try:
            await importer.create_objects()
            written = await _copy_disks(ctx, importer, {v: images[d] for v, d in disk_of.items()}, progress)
            vms = importer.complete()
        except BaseException:
            if not config.force:
                await importer.rollback()
            raise
    return ImportResult(vms, len(objects), written)


@contextlib.asynccontextmanager
async def _scratch(ctx: Context) -> AsyncIterator[Path]:
    path = disks.workdir(ctx) / f"ova-{uuidlib.uuid4().hex}"
    path.mkdir(parents=True, mode=0o700)
    try:
        yield path
    finally:
        await asyncio.to_thread(_remove_tree, path)


def _remove_tree(path: Path) -> None:
    for child in path.iterdir():
        child.unlink(missing_ok=True)
    path.rmdir()


async def _receive_files(
    reader: TarReader, descriptor: ovf.Descriptor, scratch: Path
) -> tuple[dict[str, _Spooled], dict[str, tuple[str, str]]]:
    files: dict[str, _Spooled] = {}
    manifest: dict[str, tuple[str, str]] = {}
    while (member := await reader.next()) is not None:
        lower = member.name.lower()
        if lower.endswith(".mf"):
            manifest = _parse_manifest(await reader.read(MAX_MANIFEST))
            continue
        if lower.endswith(".cert"):
            continue  # signatures are not checked: the manifest's digests are
        ref = descriptor.file_by_href(member.name)
        if ref is None or ref.id in files:
            expected = ", ".join(f.href for f in descriptor.files.values() if f.id not in files) or "(end of archive)"
            raise UnexpectedFile(expected, member.name)
        if ref.compression:
            raise ImportFailure(f"OVF file {ref.href} is {ref.compression}-compressed, which is not supported")
        if ref.size is not None and ref.size != member.size:
            raise ImportFailure(f"OVF file {ref.href} is {member.size} bytes, the descriptor says {ref.size}")
        files[ref.id] = await _spool(reader, scratch / f"file-{len(files)}", member.size)
    return files, manifest


async def _spool(reader: TarReader, path: Path, size: int) -> _Spooled:
    sha1, sha256 = hashlib.sha1(usedforsecurity=False), hashlib.sha256()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        offset = 0
        while data := await reader.read_piece(CHUNK):
            await asyncio.to_thread(_digest_and_write, fd, data, offset, sha1, sha256)
            offset += len(data)
        os.ftruncate(fd, offset)
    finally:
        os.close(fd)
    return _Spooled(path, size, {"SHA1": sha1.hexdigest(), "SHA256": sha256.hexdigest()})


def _digest_and_write(fd: int, data: bytes, offset: int, *hashes: Any) -> None:
    for h in hashes:
        h.update(data)
    if not is_zero(data):  # sparse scratch files
        os.pwrite(fd, data, offset)


def _parse_manifest(data: bytes) -> dict[str, tuple[str, str]]:
    out = {}
    for line in data.decode("utf-8", "replace").splitlines():
        m = _MANIFEST_LINE.match(line.strip())
        if m:
            out[m.group(2)] = (m.group(1), m.group(3).lower())
    return out


def _check_files(
    descriptor: ovf.Descriptor, files: dict[str, _Spooled], manifest: dict[str, tuple[str, str]], force: bool
) -> None:
    for disk in descriptor.disks.values():
        if disk.file_id is not None and disk.file_id not in files:
            if disk.file_id not in descriptor.files:
                raise ImportFailure(f"OVF disk {disk.id} names file {disk.file_id}, which References lacks")
            raise PrematureEOF()
    if force:
        return
    for fid, spooled in files.items():
        href = descriptor.files[fid].href
        if href in manifest:
            algorithm, digest = manifest[href]
            actual = spooled.digests.get(algorithm)
            if actual is not None and actual != digest:
                raise ImportFailure(f"OVF file {href} fails its manifest {algorithm} check")


@dataclass(slots=True)
class _Image:
    path: Path
    qemu_format: str
    virtual_size: int


async def _inspect(files: dict[str, _Spooled], descriptor: ovf.Descriptor, disk: ovf.OvfDisk) -> _Image:
    assert disk.file_id is not None
    path = files[disk.file_id].path
    fmt = disk.format or _sniff(path)
    try:
        info = json.loads(await qemuimg.run(["info", "--output=json", "-f", fmt, str(path)]))
    except qemuimg.QemuImgError as e:
        raise ImportFailure(f"OVF disk {disk.id} is not a valid {fmt} image: {e.stderr}") from None
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise ImportFailure(f"OVF disk {disk.id} has a backing file")
    if fmt == "vmdk":
        data = (info.get("format-specific") or {}).get("data") or {}
        if data.get("create-type") not in SAFE_VMDK_TYPES:
            raise ImportFailure(f"VMDK disk {disk.id} of type {data.get('create-type')!r} is not supported")
        for extent in data.get("extents") or []:
            if os.path.realpath(str(extent.get("filename", ""))) != os.path.realpath(path):
                raise ImportFailure(f"VMDK disk {disk.id} names an extent outside itself")
    elif fmt == "qcow2":
        specific = (info.get("format-specific") or {}).get("data") or {}
        if specific.get("data-file"):
            raise ImportFailure(f"qcow2 disk {disk.id} has an external data file")
    virtual = int(info.get("virtual-size", 0))
    if virtual <= 0:
        raise ImportFailure(f"OVF disk {disk.id} has no size")
    return _Image(path, fmt, max(virtual, disk.capacity))


def _sniff(path: Path) -> str:
    """The image format from its own magic (never qemu's probing): vmdk, qcow2, vhd or raw."""
    with open(path, "rb") as f:
        head = f.read(512)
        if head.startswith(b"KDMV"):
            return "vmdk"
        if head.startswith(b"QFI\xfb"):
            return "qcow2"
        if head.startswith(b"conectix"):
            return "vpc"
        if head.startswith(b"# Disk DescriptorFile"):
            raise ImportFailure("descriptor-only VMDK files (extents in other files) are not supported")
        f.seek(-512, os.SEEK_END)
        if f.read(8) == b"conectix":
            return "vpc"
    return "raw"


def _objects(descriptor: ovf.Descriptor, images: dict[str, _Image]) -> tuple[list[ExportObject], dict[str, str]]:
    """The descriptor's VMs as the objects an XVA would carry, for the shared importer; and which
    descriptor disk fills each VDI."""
    objects = [ExportObject("SR", "Ref:sr", {"uuid": "", "content_type": "user"})]
    disk_of: dict[str, str] = {}
    networks: dict[str, str] = {}
    for n, system in enumerate(descriptor.systems):
        vm = f"Ref:vm{n}"
        objects.append(ExportObject("VM", vm, _vm_record(system)))
        for position, disk_id in enumerate(system.disks):
            if disk_id not in images:
                raise ImportFailure(f"VirtualSystem {system.name} uses disk {disk_id}, which has no file")
            vdi = f"Ref:vdi{n}-{position}"
            disk_of[vdi] = disk_id
            objects.append(
                ExportObject(
                    "VDI",
                    vdi,
                    {
                        "name_label": f"{system.name} disk {position}",
                        "name_description": "imported from OVF",
                        "virtual_size": str(images[disk_id].virtual_size),
                        "type": "user",
                        "SR": "Ref:sr",
                        "sharable": False,
                        "read_only": False,
                    },
                )
            )
            objects.append(
                ExportObject(
                    "VBD",
                    f"Ref:vbd{n}-{position}",
                    {
                        "VM": vm,
                        "VDI": vdi,
                        "userdevice": str(position),
                        "bootable": position == 0,
                        "mode": "RW",
                        "type": "Disk",
                        "unpluggable": True,
                        "empty": False,
                    },
                )
            )
        for cd in range(system.cd_drives):
            objects.append(
                ExportObject(
                    "VBD",
                    f"Ref:cd{n}-{cd}",
                    {
                        "VM": vm,
                        "VDI": NULL_REF,
                        "userdevice": str(3 + cd),
                        "bootable": False,
                        "mode": "RO",
                        "type": "CD",
                        "unpluggable": True,
                        "empty": True,
                    },
                )
            )
        for position, (network, mac) in enumerate(system.nics):
            if network not in networks:
                networks[network] = f"Ref:net{len(networks)}"
                objects.append(
                    ExportObject(
                        "network",
                        networks[network],
                        {"name_label": network, "name_description": descriptor.networks.get(network, ""), "bridge": ""},
                    )
                )
            objects.append(
                ExportObject(
                    "VIF",
                    f"Ref:vif{n}-{position}",
                    {"VM": vm, "network": networks[network], "device": str(position), "MAC": mac, "MTU": "1500"},
                )
            )
    return objects, disk_of


def _vm_record(system: ovf.OvfSystem) -> dict[str, Any]:
    memory = str(max(system.memory, 16 << 20))
    return {
        "name_label": system.name,
        "name_description": system.description,
        "is_a_template": False,
        "memory_static_max": memory,
        "memory_dynamic_max": memory,
        "memory_dynamic_min": memory,
        "memory_static_min": memory,
        "VCPUs_max": str(system.vcpus),
        "VCPUs_at_startup": str(system.vcpus),
        "HVM_boot_policy": "BIOS order",
        "HVM_boot_params": {"order": "cd"},
        "domain_type": "hvm",
        "platform": {"acpi": "1", "apic": "true", "pae": "true", "nx": "true"},
        "actions_after_shutdown": "destroy",
        "actions_after_reboot": "restart",
        "actions_after_crash": "restart",
    }


async def _copy_disks(ctx: Context, importer: Importer, images: dict[str, _Image], progress: Progress | None) -> int:
    """Each spooled image's data into its VDI: read through qemu-nbd, written through the SR's driver."""
    plan = importer.disks_to_stream()
    total = sum(size for _, _, size in plan) or 1
    written = done = 0
    for ident, vdi, size in plan:
        image = images[ident]
        async with (
            nbd.served(str(image.path), image.qemu_format, writable=False, workdir=disks.workdir(ctx)) as src,
            disks.writing(ctx, vdi) as out,
        ):
            for offset, length in await disks.image_data_extents(str(image.path), image.qemu_format):
                end = offset + length
                while offset < end:
                    n = min(CHUNK, end - offset)
                    data = await src.read(offset, n)
                    if not is_zero(data):
                        await out.write(offset, data)
                        written += n
                    offset += n
                    if progress is not None:
                        progress(min((done + offset) / total, 1.0))
        done += size
    return written
