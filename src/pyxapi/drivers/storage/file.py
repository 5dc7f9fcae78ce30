"""Local directory SR ("file"): qcow2 (default) or raw image files, linked clones through qcow2 backing files.

device_config: location = absolute path of the SR directory (created by create_sr if missing).
Layout and chain rules: see filechain.py and the module doc of base.py.

Sizes are true ones: physical_size and free space come from statvfs, utilisation from the blocks the
image files really occupy, virtual_allocation from the visible VDIs' virtual sizes (thin provisioned).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid as uuidlib
from collections.abc import Mapping
from pathlib import Path

from . import durable, qemuimg
from .base import (
    IMAGE_SR,
    AttachInfo,
    BackendFailure,
    CloneResult,
    DataSource,
    ImageFormat,
    InvalidDeviceConfig,
    ProbeResult,
    ProgressFn,
    SMError,
    SMInfo,
    SRExists,
    SRFull,
    SRHandle,
    SRInfo,
    SRInUse,
    SRNotAttached,
    SRNotEmpty,
    UnsafePath,
    VDIExists,
    VdiFormat,
    VDIInfo,
    VDIInUse,
    VDIMissing,
    VDIReadOnly,
    VDITooLarge,
    VDITooSmall,
    check_image_format,
    check_size,
)
from .filechain import (
    BASE_SUFFIX,
    BRANCH_PREFIX,
    MARKER,
    SUFFIXES,
    TMP_PREFIX,
    Image,
    chain_problem,
    collect_bases,
    list_images,
    read_marker,
    recover,
    referenced,
    remove_temporaries,
    to_info,
    visible,
    write_marker,
)
from .filegc import coalesce
from .fileoverlay import OverlayMaker
from .paths import check_file_name, check_uuid, device_config_dir, fs_space, inside
from .transfer import local_file
from .usage import DiskUses

log = logging.getLogger(__name__)

MAX_VIRTUAL_SIZE = 64 * 1024**4
"""A generous cap (qcow2 itself goes far beyond): refuses typos like a size given in KiB as bytes*1024."""


class FileStorageDriver:
    sr_type = "file"
    capabilities: frozenset[str] = IMAGE_SR
    configuration: Mapping[str, str] = {"location": "Absolute path of the local directory holding the disk images"}
    required_device_config: frozenset[str] = frozenset({"location"})
    sm_info = SMInfo(
        sr_type="file",
        name="Local directory SR",
        description="qcow2 or raw disk images in a local directory, with linked clones",
        capabilities=capabilities,
        configuration=configuration,
        required_device_config=required_device_config,
        supported_image_formats=frozenset({"raw", "qcow2"}),
    )

    def __init__(self, default_format: VdiFormat = "qcow2") -> None:
        self.default_format: VdiFormat = default_format
        self._attached_srs: set[str] = set()
        self._uses = DiskUses()
        self._locks: dict[str, asyncio.Lock] = {}
        self._overlays = OverlayMaker()  # empty overlays without a qemu-img run each

    # ------------------------------------------------------------------------------------------ SRs

    async def probe(self, device_config: Mapping[str, str]) -> list[ProbeResult]:
        root = device_config_dir(device_config)
        marker = await asyncio.to_thread(read_marker, root) if os.path.isdir(root) else None
        if not marker or not marker.get("uuid"):
            return []
        return [ProbeResult(marker["uuid"], dict(device_config), await self._stat(os.path.realpath(root)))]

    async def create_sr(self, device_config: Mapping[str, str], sr_uuid: str, size: int = 0) -> SRInfo:
        check_uuid(sr_uuid, "SR")
        root = device_config_dir(device_config)
        if os.path.exists(root) and not os.path.isdir(root):
            raise InvalidDeviceConfig("location", f"{root} exists and is not a directory", SMError.FILE_SR_CREATE)
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as exc:
            raise BackendFailure(SMError.FILE_SR_CREATE, f"{root}: {exc.strerror}") from None
        real = os.path.realpath(root)
        marker = await asyncio.to_thread(read_marker, real)
        if marker is not None:
            raise SRExists(f"{root} already holds SR {marker.get('uuid', '?')}")
        await asyncio.to_thread(write_marker, real, sr_uuid, self.sr_type)
        return await self._stat(real)

    async def attach_sr(self, sr: SRHandle) -> SRInfo:
        root = device_config_dir(sr.device_config)
        if not os.path.isdir(root):
            raise BackendFailure(SMError.SR_UNAVAILABLE, f"{root} is not a directory")
        real = os.path.realpath(root)
        marker = await asyncio.to_thread(read_marker, real)
        if marker is None:
            # An introduced directory of images: adopt it, so no second SR can claim it later.
            await asyncio.to_thread(write_marker, real, sr.uuid, self.sr_type)
        elif marker.get("uuid") != sr.uuid:
            raise BackendFailure(SMError.SR_UNAVAILABLE, f"{root} belongs to SR {marker.get('uuid', '?')}")
        async with self._lock(sr.uuid):
            restored = await asyncio.to_thread(recover, real)  # work files left by a crash mid-operation
        if restored:
            log.warning("file SR %s: completed an interrupted clone/snapshot: %s", sr.uuid, ", ".join(restored))
        self._attached_srs.add(sr.uuid)
        return await self._stat(real)

    async def detach_sr(self, sr: SRHandle) -> None:
        if self._uses.any_in(sr.uuid):
            raise SRInUse("VDIs of this SR are still attached")
        self._attached_srs.discard(sr.uuid)

    async def destroy_sr(self, sr: SRHandle) -> None:
        root = os.path.realpath(device_config_dir(sr.device_config))
        if not os.path.isdir(root):
            return
        async with self._lock(sr.uuid):
            marker = await asyncio.to_thread(read_marker, root)
            if marker and marker.get("uuid") != sr.uuid:
                raise BackendFailure(SMError.FILE_SR_DELETE, f"{root} belongs to SR {marker.get('uuid')}")
            if self._uses.any_in(sr.uuid):
                raise SRInUse("VDIs of this SR are still attached")
            images = await asyncio.to_thread(list_images, root)
            if visible(images):
                raise SRNotEmpty()
            await asyncio.to_thread(_remove_sr_files, root, images)
        self._attached_srs.discard(sr.uuid)

    async def stat_sr(self, sr: SRHandle) -> SRInfo:
        return await self._stat(self._root(sr))

    async def scan(self, sr: SRHandle) -> list[VDIInfo]:
        root = self._root(sr)
        images = await asyncio.to_thread(list_images, root)
        found = []
        for image in visible(images):
            problem = await asyncio.to_thread(chain_problem, root, image.name)
            if problem is None:
                found.append(to_info(image))
        return sorted(found, key=lambda v: v.location)

    # ----------------------------------------------------------------------------------------- VDIs

    async def stat_vdi(self, sr: SRHandle, location: str) -> VDIInfo:
        root = self._root(sr)
        image, _ = await self._leaf(sr, root, location)
        return to_info(image)

    async def create_vdi(
        self, sr: SRHandle, vdi_uuid: str, virtual_size: int, format: VdiFormat | None = None
    ) -> VDIInfo:
        root = self._root(sr)
        check_uuid(vdi_uuid)
        fmt = self._format(format)
        size = check_size(vdi_uuid, virtual_size, MAX_VIRTUAL_SIZE)
        name = f"{vdi_uuid}.{fmt}"
        path = inside(root, name, allow_symlink_inside=False)
        if os.path.lexists(path):
            raise VDIExists(name)
        tmp = self._tmp(root, fmt)
        try:
            await qemuimg.create(tmp, fmt, size)
            await durable.publish(tmp, path)
        except qemuimg.QemuImgError as exc:
            raise self._failure(root, exc, SMError.VDI_CREATE, size) from None
        finally:
            _discard(tmp)
        return await self.stat_vdi(sr, name)

    async def destroy_vdi(self, sr: SRHandle, location: str) -> None:
        root = self._root(sr)
        async with self._lock(sr.uuid):
            image, _ = await self._leaf(sr, root, location)
            self._assert_unused(sr, location, "destroy")
            # Freeing a large file's blocks can take a while: not on the event loop.
            await asyncio.to_thread(os.unlink, os.path.join(root, location))
            await asyncio.to_thread(collect_bases, root, image.backing)

    async def clone_vdi(self, sr: SRHandle, location: str, new_uuid: str) -> CloneResult:
        return await self._branch(sr, location, new_uuid, snapshot=False)

    async def snapshot_vdi(self, sr: SRHandle, location: str, new_uuid: str) -> CloneResult:
        return await self._branch(sr, location, new_uuid, snapshot=True)

    async def resize_vdi(self, sr: SRHandle, location: str, new_size: int, online: bool = False) -> VDIInfo:
        """Grow a VDI (never shrink). Online, with the disk attached, qemu holds the image's write lock,
        so only the hypervisor can grow it (QMP block_resize): the driver validates and reports the
        record the VDI will have, and leaves the file alone."""
        root = self._root(sr)
        async with self._lock(sr.uuid):
            image, _ = await self._leaf(sr, root, location)
            size = check_size(location, new_size, MAX_VIRTUAL_SIZE)
            if size < image.virtual_size:
                raise VDITooSmall(location, image.virtual_size)
            if not image.writable:
                raise VDIReadOnly(location)
            in_use = self._uses.in_use(sr.uuid, location)
            if in_use and not online:
                raise VDIInUse(location, "resize")
            if in_use:
                return to_info(image, virtual_size=size)
            if size != image.virtual_size:
                try:
                    await qemuimg.resize(os.path.join(root, location), image.format, size)
                    await durable.sync_file(os.path.join(root, location))
                except qemuimg.QemuImgError as exc:
                    raise self._failure(root, exc, SMError.VDI_RESIZE, size - image.virtual_size) from None
            image, _ = await self._leaf(sr, root, location)
            return to_info(image)

    async def attach_vdi(self, sr: SRHandle, location: str, read_only: bool = False) -> AttachInfo:
        root = self._root(sr)
        # Under the SR lock: a coalesce merging this chain must finish before a hypervisor opens it.
        async with self._lock(sr.uuid):
            image, _ = await self._leaf(sr, root, location)
            problem = await asyncio.to_thread(chain_problem, root, location)
            if problem is not None:
                raise UnsafePath(location, problem)
            if not read_only and not image.writable:
                raise VDIReadOnly(location)
            self._uses.claim(sr.uuid, location, read_only)
        return AttachInfo(os.path.join(root, location), image.format, read_only)

    async def detach_vdi(self, sr: SRHandle, location: str) -> None:
        self._uses.release(sr.uuid, location)

    async def coalesce(self, sr: SRHandle) -> list[str]:
        """Merge single-child bases into their child while nothing above them is attached (filegc.py)."""
        root = self._root(sr)
        async with self._lock(sr.uuid):
            # Read under the lock, which attach_vdi takes too: nothing becomes busy mid-merge.
            busy = self._uses.busy(sr.uuid)
            try:
                return await coalesce(root, busy)
            except qemuimg.QemuImgError as exc:
                raise self._failure(root, exc, SMError.SM_GENERAL, 0) from None

    # --------------------------------------------------------------------------------- data transfer

    async def import_data(
        self,
        sr: SRHandle,
        location: str,
        source: DataSource,
        format: ImageFormat,
        progress: ProgressFn | None = None,
    ) -> VDIInfo:
        """Replace the VDI's whole contents with an image. The new contents are written to a work file
        and renamed over the VDI only once complete, so a failed import leaves the VDI untouched."""
        root = self._root(sr)
        fmt = check_image_format(format)
        image, _ = await self._leaf(sr, root, location)
        self._assert_unused(sr, location, "import")
        if not image.writable:
            raise VDIReadOnly(location)
        async with local_file(source, root, TMP_PREFIX) as src:
            virtual = await qemuimg.inspect_import(src, fmt)
            if virtual > image.virtual_size:
                raise VDITooSmall(location, virtual)
            await self._assert_space(root, os.path.getsize(src))
            tmp = self._tmp(root, image.format)
            try:
                await qemuimg.convert(src, fmt, tmp, image.format, progress)
                if virtual < image.virtual_size:
                    await qemuimg.resize(tmp, image.format, image.virtual_size)
                await durable.sync_file(tmp)  # on disk before its name is the VDI's (durable.py)
                async with self._lock(sr.uuid):
                    # Re-read under the lock: a clone may have re-pointed the VDI meanwhile.
                    current, _ = await self._leaf(sr, root, location)
                    self._assert_unused(sr, location, "import")
                    os.replace(tmp, os.path.join(root, location))
                    await asyncio.to_thread(collect_bases, root, current.backing)
                    await durable.sync_dir(root)
            except qemuimg.QemuImgError as exc:
                raise self._failure(root, exc, SMError.VDI_CREATE, virtual) from None
            finally:
                _discard(tmp)
        return await self.stat_vdi(sr, location)

    async def import_new_vdi(
        self,
        sr: SRHandle,
        vdi_uuid: str,
        source: DataSource,
        format: ImageFormat,
        vdi_format: VdiFormat | None = None,
        progress: ProgressFn | None = None,
    ) -> VDIInfo:
        """Create a VDI sized and filled from an image; on any failure no file is left behind."""
        root = self._root(sr)
        check_uuid(vdi_uuid)
        fmt = check_image_format(format)
        target_fmt = self._format(vdi_format)
        name = f"{vdi_uuid}.{target_fmt}"
        path = inside(root, name, allow_symlink_inside=False)
        if os.path.lexists(path):
            raise VDIExists(name)
        async with local_file(source, root, TMP_PREFIX) as src:
            virtual = await qemuimg.inspect_import(src, fmt)
            check_size(vdi_uuid, virtual, MAX_VIRTUAL_SIZE)
            await self._assert_space(root, os.path.getsize(src))
            tmp = self._tmp(root, target_fmt)
            try:
                await qemuimg.convert(src, fmt, tmp, target_fmt, progress)
                await durable.publish(tmp, path)
            except qemuimg.QemuImgError as exc:
                raise self._failure(root, exc, SMError.VDI_CREATE, virtual) from None
            finally:
                _discard(tmp)
        return await self.stat_vdi(sr, name)

    async def export_data(
        self,
        sr: SRHandle,
        location: str,
        format: ImageFormat,
        dest: Path,
        progress: ProgressFn | None = None,
    ) -> int:
        """Write the VDI's contents, flattened (no backing file), as a standalone image at dest."""
        root = self._root(sr)
        fmt = check_image_format(format)
        image, _ = await self._leaf(sr, root, location)
        if self._uses.written(sr.uuid, location):
            raise VDIInUse(location, "export")  # a disk being written cannot be read consistently
        if fmt == "vhd" and image.virtual_size > qemuimg.VHD_MAX_SIZE:
            raise VDITooLarge(location, qemuimg.VHD_MAX_SIZE)
        problem = await asyncio.to_thread(chain_problem, root, location)
        if problem is not None:
            raise UnsafePath(location, problem)
        try:
            await qemuimg.convert(os.path.join(root, location), image.format, str(dest), fmt, progress)
        except qemuimg.QemuImgError as exc:
            raise BackendFailure(SMError.EIO, exc.stderr) from None
        return os.path.getsize(dest)

    async def copy_vdi(
        self,
        sr: SRHandle,
        location: str,
        dest_sr: SRHandle,
        new_uuid: str,
        progress: ProgressFn | None = None,
    ) -> VDIInfo:
        """A full, independent copy (the chain flattened) in dest_sr, in the source's format."""
        root = self._root(sr)
        dest_root = self._root(dest_sr)
        check_uuid(new_uuid)
        image, images = await self._leaf(sr, root, location)
        name = f"{new_uuid}.{image.format}"
        path = inside(dest_root, name, allow_symlink_inside=False)
        if os.path.lexists(path):
            raise VDIExists(name)
        await self._assert_space(dest_root, _chain_allocation(images, location))
        tmp = self._tmp(dest_root, image.format)
        try:
            await qemuimg.convert(os.path.join(root, location), image.format, tmp, image.format, progress)
            await durable.publish(tmp, path)
        except qemuimg.QemuImgError as exc:
            raise self._failure(dest_root, exc, SMError.VDI_CREATE, image.virtual_size) from None
        finally:
            _discard(tmp)
        return await self.stat_vdi(dest_sr, name)

    # ------------------------------------------------------------------------------------- internals

    async def _branch(self, sr: SRHandle, location: str, new_uuid: str, snapshot: bool) -> CloneResult:
        """Clone or snapshot. qcow2: the source's file becomes a hidden base and two empty overlays are
        renamed into place with no await in between, so the chain never looks half-made to anyone
        reading the directory. raw cannot carry a backing file, so raw VDIs are copied in full."""
        root = self._root(sr)
        check_uuid(new_uuid)
        error = SMError.VDI_SNAPSHOT if snapshot else SMError.VDI_CLONE
        async with self._lock(sr.uuid):
            image, _ = await self._leaf(sr, root, location)
            new_name = f"{new_uuid}.{image.format}"
            new_path = inside(root, new_name, allow_symlink_inside=False)
            if os.path.lexists(new_path):
                raise VDIExists(new_name)
            src_path = os.path.join(root, location)
            extra = {"is_a_snapshot": True, "snapshot_of": location} if snapshot else {}
            if image.format == "raw":
                tmp = self._tmp(root, "raw")
                try:
                    await self._assert_space(root, image.allocated)
                    # In use, the hypervisor holds the image's lock; the caller paused the guest's I/O.
                    in_use = self._uses.in_use(sr.uuid, location)
                    await qemuimg.convert(src_path, "raw", tmp, "raw", force_share=in_use)
                    await durable.publish(tmp, new_path)
                except qemuimg.QemuImgError as exc:
                    raise self._failure(root, exc, error, image.allocated) from None
                finally:
                    _discard(tmp)
                new, _ = await self._leaf(sr, root, new_name)
                return CloneResult(to_info(new, **extra), to_info(image), None, False)
            base = f"{uuidlib.uuid4()}{BASE_SUFFIX}"
            # Named after their destinations so that attach_sr can finish the renames after a crash.
            tmp_src = os.path.join(root, f"{BRANCH_PREFIX}{location}")
            tmp_new = os.path.join(root, f"{BRANCH_PREFIX}{new_name}")
            try:
                await self._overlays.create(tmp_src, image.virtual_size, base, root)
                await self._overlays.create(tmp_new, image.virtual_size, base, root)
                await durable.sync_files(tmp_src, tmp_new)  # on disk before they take the VDIs' names
                os.chmod(tmp_src, os.stat(src_path).st_mode & 0o777)
                os.rename(src_path, os.path.join(root, base))
                os.rename(tmp_src, src_path)
                os.rename(tmp_new, new_path)
            except qemuimg.QemuImgError as exc:
                raise self._failure(root, exc, error, 0) from None
            finally:
                _discard(tmp_src)
                _discard(tmp_new)
            # Nothing may write a base again: children's contents depend on it.
            os.chmod(os.path.join(root, base), 0o444)
            await durable.sync_dir(root)  # the renames, before the new VDI is recorded
            source, _ = await self._leaf(sr, root, location)
            new, _ = await self._leaf(sr, root, new_name)
            return CloneResult(to_info(new, **extra), to_info(source), base, True)

    def _root(self, sr: SRHandle) -> str:
        if sr.uuid not in self._attached_srs:
            raise SRNotAttached(sr.uuid)
        return os.path.realpath(device_config_dir(sr.device_config))

    async def _leaf(self, sr: SRHandle, root: str, location: str) -> tuple[Image, dict[str, Image]]:
        """The visible VDI at location (bases and backing files of other images are not VDIs)."""
        check_file_name(location, tuple(SUFFIXES))
        inside(root, location, allow_symlink_inside=False)
        images = await asyncio.to_thread(list_images, root)
        image = images.get(location)
        if image is None or image.is_base or location in referenced(images.values()):
            raise VDIMissing(sr.uuid, location)
        return image, images

    def _format(self, requested: str | None) -> VdiFormat:
        fmt = requested or self.default_format
        if fmt not in ("qcow2", "raw"):
            raise BackendFailure(SMError.VDI_TYPE, f"unsupported VDI format {fmt!r} (qcow2 or raw)")
        return fmt  # type: ignore[return-value]

    def _assert_unused(self, sr: SRHandle, location: str, operation: str) -> None:
        if self._uses.in_use(sr.uuid, location):
            raise VDIInUse(location, operation)

    async def _assert_space(self, root: str, needed: int) -> None:
        _, free = await asyncio.to_thread(fs_space, root)
        if needed > free:
            raise SRFull(needed, free)

    def _failure(self, root: str, exc: qemuimg.QemuImgError, error: SMError, requested: int) -> Exception:
        if exc.no_space:
            return SRFull(requested, fs_space(root)[1])
        return BackendFailure(error, exc.stderr)

    def _tmp(self, root: str, fmt: str) -> str:
        return os.path.join(root, f"{TMP_PREFIX}{uuidlib.uuid4().hex}.{fmt}")

    def _lock(self, sr_uuid: str) -> asyncio.Lock:
        return self._locks.setdefault(sr_uuid, asyncio.Lock())

    async def _stat(self, root: str) -> SRInfo:
        size, _ = await asyncio.to_thread(fs_space, root)
        images = await asyncio.to_thread(list_images, root)
        return SRInfo(
            physical_size=size,
            physical_utilisation=sum(img.allocated for img in images.values()),
            virtual_allocation=sum(img.virtual_size for img in visible(images)),
            content_type="user",
        )


def _chain_allocation(images: dict[str, Image], location: str) -> int:
    total, current, hops = 0, images.get(location), 0
    while current is not None and hops < 256:
        total += current.allocated
        current = images.get(current.backing) if current.backing else None
        hops += 1
    return total


def _discard(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _remove_sr_files(root: str, images: dict[str, Image]) -> None:
    # Only what the SR itself made: orphaned bases, work files and the marker. Foreign files stay.
    for name in images:
        if name.endswith(BASE_SUFFIX):
            os.unlink(os.path.join(root, name))
    remove_temporaries(root)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(root, MARKER))
    with contextlib.suppress(OSError):
        os.rmdir(root)
