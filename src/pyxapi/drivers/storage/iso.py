"""A read-only library of .iso files in a local directory ("iso"), content_type iso.

device_config: location = absolute path of an existing directory. The driver never writes to it: VDIs
are the *.iso files found by scan (location = file name), attached read-only as raw images. Creating,
destroying, cloning or resizing VDIs is refused with SR_OPERATION_NOT_SUPPORTED, as xapi does for an SR
type that lacks the capability. A symlink is accepted only if it resolves inside the library.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from . import qemuimg
from .base import (
    SR_LIFECYCLE,
    VDI_RECORDS,
    AttachInfo,
    BackendFailure,
    Capability,
    DataSource,
    ImageFormat,
    OperationNotSupported,
    ProbeResult,
    ProgressFn,
    SMError,
    SMInfo,
    SRHandle,
    SRInfo,
    SRInUse,
    SRNotAttached,
    UnsafePath,
    VDIInfo,
    VDIMissing,
    VDIReadOnly,
    VDITooLarge,
    check_image_format,
)
from .fixed import FixedVdis
from .paths import check_library_name, device_config_dir, fs_space, inside

SUFFIX = ".iso"


class IsoStorageDriver(FixedVdis):
    sr_type = "iso"
    capabilities: frozenset[str] = SR_LIFECYCLE | VDI_RECORDS | {Capability.VDI_EXPORT}
    configuration: Mapping[str, str] = {"location": "Absolute path of an existing local directory of .iso files"}
    required_device_config: frozenset[str] = frozenset({"location"})
    sm_info = SMInfo(
        sr_type="iso",
        name="Local ISO library",
        description="Read-only .iso files in a local directory",
        capabilities=capabilities,
        configuration=configuration,
        required_device_config=required_device_config,
        supported_image_formats=frozenset({"raw"}),
    )

    def __init__(self) -> None:
        self._attached_srs: set[str] = set()
        self._readers: dict[tuple[str, str], int] = {}

    # ------------------------------------------------------------------------------------------ SRs

    async def probe(self, device_config: Mapping[str, str]) -> list[ProbeResult]:
        return []  # a library has no identity on disk to find; SR_PROBE is not a capability

    async def create_sr(self, device_config: Mapping[str, str], sr_uuid: str, size: int = 0) -> SRInfo:
        return await self._stat(self._library(device_config))

    async def attach_sr(self, sr: SRHandle) -> SRInfo:
        info = await self._stat(self._library(sr.device_config))
        self._attached_srs.add(sr.uuid)
        return info

    async def detach_sr(self, sr: SRHandle) -> None:
        if any(key[0] == sr.uuid for key in self._readers):
            raise SRInUse("ISOs of this library are still attached")
        self._attached_srs.discard(sr.uuid)

    async def destroy_sr(self, sr: SRHandle) -> None:
        # The files belong to whoever filled the library; destroying the SR only forgets it.
        if any(key[0] == sr.uuid for key in self._readers):
            raise SRInUse("ISOs of this library are still attached")
        self._attached_srs.discard(sr.uuid)

    async def stat_sr(self, sr: SRHandle) -> SRInfo:
        return await self._stat(self._root(sr))

    async def scan(self, sr: SRHandle) -> list[VDIInfo]:
        return await asyncio.to_thread(_scan, self._root(sr))

    # ----------------------------------------------------------------------------------------- VDIs

    async def stat_vdi(self, sr: SRHandle, location: str) -> VDIInfo:
        root = self._root(sr)
        info = await asyncio.to_thread(_iso, root, location)
        if info is None:
            raise VDIMissing(sr.uuid, location)
        return info

    async def attach_vdi(self, sr: SRHandle, location: str, read_only: bool = False) -> AttachInfo:
        await self.stat_vdi(sr, location)
        if not read_only:
            raise VDIReadOnly(location)
        key = (sr.uuid, location)
        self._readers[key] = self._readers.get(key, 0) + 1
        return AttachInfo(os.path.join(self._root(sr), location), "raw", True)

    async def detach_vdi(self, sr: SRHandle, location: str) -> None:
        key = (sr.uuid, location)
        if self._readers.get(key, 0) > 1:
            self._readers[key] -= 1
        else:
            self._readers.pop(key, None)

    async def export_data(
        self,
        sr: SRHandle,
        location: str,
        format: ImageFormat,
        dest: Path,
        progress: ProgressFn | None = None,
    ) -> int:
        fmt = check_image_format(format)
        info = await self.stat_vdi(sr, location)
        if fmt == "vhd" and info.virtual_size > qemuimg.VHD_MAX_SIZE:
            raise VDITooLarge(location, qemuimg.VHD_MAX_SIZE)
        try:
            await qemuimg.convert(os.path.join(self._root(sr), location), "raw", str(dest), fmt, progress)
        except qemuimg.QemuImgError as exc:
            raise BackendFailure(SMError.EIO, exc.stderr) from None
        return os.path.getsize(dest)

    async def import_data(
        self,
        sr: SRHandle,
        location: str,
        source: DataSource,
        format: ImageFormat,
        progress: ProgressFn | None = None,
    ) -> VDIInfo:
        # a library is read-only (the VDI-changing calls are refused by FixedVdis)
        raise OperationNotSupported(sr.uuid, Capability.VDI_IMPORT)

    # ------------------------------------------------------------------------------------- internals

    def _library(self, device_config: Mapping[str, str]) -> str:
        root = device_config_dir(
            device_config, missing=SMError.ISO_DCONF_MISSING_LOCATION, invalid=SMError.ISO_LOCAL_PATH
        )
        if not os.path.isdir(root):
            raise BackendFailure(SMError.ISO_LOCAL_PATH, f"{root} is not a directory")
        return os.path.realpath(root)

    def _root(self, sr: SRHandle) -> str:
        if sr.uuid not in self._attached_srs:
            raise SRNotAttached(sr.uuid)
        return self._library(sr.device_config)

    async def _stat(self, root: str) -> SRInfo:
        size, _ = await asyncio.to_thread(fs_space, root)
        isos = await asyncio.to_thread(_scan, root)
        used = sum(v.virtual_size for v in isos)
        return SRInfo(physical_size=size, physical_utilisation=used, virtual_allocation=used, content_type="iso")


def _iso(root: str, name: str) -> VDIInfo | None:
    """The ISO called name, or None; raises UnsafePath for names or links that leave the library."""
    check_library_name(name, SUFFIX)
    path = inside(root, name, allow_symlink_inside=True)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return VDIInfo(
        location=name,
        virtual_size=st.st_size,
        physical_utilisation=st.st_blocks * 512,
        format="raw",
        read_only=True,
        sharable=True,  # any number of VMs may read the same ISO
        content_type="iso",
    )


def _scan(root: str) -> list[VDIInfo]:
    found: list[VDIInfo] = []
    with os.scandir(root) as entries:
        for entry in entries:
            try:
                info = _iso(root, entry.name)
            except UnsafePath:
                continue  # hidden files, other suffixes, links out of the library: not ISOs of ours
            if info is not None:
                found.append(info)
    return sorted(found, key=lambda v: v.location)
