"""Shared NFS SR ("nfs"): qcow2/raw images in `<serverpath>/<sr-uuid>` on an NFS export, as XenServer.

No kernel mount is needed (this kernel has no NFS client): QEMU and qemu-img reach the images through
their own `nfs://` block driver, and the driver's file operations (list, stat, mkdir, rename, unlink,
statvfs) go through libnfs (libnfs.py). Layout, linked clones and snapshots are the file SR's (see
nfs_chain.py for the one difference: backing files are recorded as absolute nfs:// URLs).

Errors are XenServer's NFSSR ones: ConfigServerMissing (102), ConfigServerPathMissing (101, with the
export list as XML for probe), ConfigServerPathBad (103), DNSError (140), NFSTarget (108), NFSVersion
(72), NFSMount (73), NFSCreate (88), SRExists (42). The server must let root write (no_root_squash):
QEMU's driver authenticates as the daemon's user.
"""

from __future__ import annotations

import asyncio
import errno
import tempfile
import uuid as uuidlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from . import nfs_chain as chain
from . import nfs_data, qemuimg
from .base import (
    IMAGE_SR,
    AttachInfo,
    BackendFailure,
    CloneResult,
    DataSource,
    ImageFormat,
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
    VDITooSmall,
    check_size,
)
from .filechain import BASE_SUFFIX, BRANCH_PREFIX, SUFFIXES, TMP_PREFIX, Image, referenced, to_info, visible
from .libnfs import LibnfsMissing, NfsClient, NfsError, exports
from .nfs_config import FailureWithOutput, NfsConfig, check_server, exports_xml, parse, parse_server
from .paths import check_file_name, check_uuid
from .usage import DiskUses

T = TypeVar("T")
MAX_VIRTUAL_SIZE = 64 * 1024**4
"""As the file SR: a cap that catches sizes given in the wrong unit."""


class NfsStorageDriver:
    sr_type = "nfs"
    capabilities: frozenset[str] = IMAGE_SR
    configuration: Mapping[str, str] = {
        "server": "hostname or IP address of the NFS server (required)",
        "serverpath": "path on the server: an export or a directory below one (required)",
        "nfsversion": "NFS version for file operations: 3 (default), 4, 4.0 or 4.1",
    }
    required_device_config: frozenset[str] = frozenset({"server", "serverpath"})
    sm_info = SMInfo(
        sr_type="nfs",
        name="NFS",
        description="Shared SR of qcow2 or raw images on an NFS export, with linked clones (QEMU's nfs:// datapath)",
        capabilities=capabilities,
        configuration=configuration,
        required_device_config=required_device_config,
        supported_image_formats=frozenset({"raw", "qcow2"}),
    )

    def __init__(self, default_format: VdiFormat = "qcow2", work_dir: str | None = None) -> None:
        self.default_format: VdiFormat = default_format
        self.work_dir = work_dir or tempfile.gettempdir()  # uploads are spooled here before conversion
        self._attached_srs: set[str] = set()
        self._uses = DiskUses()
        self._locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------------------------------- plumbing

    async def _io(self, cfg: NfsConfig, sr_uuid: str, fn: Callable[[chain.SrDir], T]) -> T:
        """Run fn with a fresh libnfs mount of serverpath in a worker thread."""
        return await asyncio.to_thread(_with_mount, cfg, sr_uuid, fn)

    async def _reachable(self, server: str) -> None:
        await asyncio.to_thread(check_server, server)

    def _cfg(self, sr: SRHandle) -> NfsConfig:
        if sr.uuid not in self._attached_srs:
            raise SRNotAttached(sr.uuid)
        return parse(sr.device_config)

    def _lock(self, sr_uuid: str) -> asyncio.Lock:
        return self._locks.setdefault(sr_uuid, asyncio.Lock())

    def _tmp_name(self, fmt: str) -> str:
        return f"{TMP_PREFIX}{uuidlib.uuid4().hex}.{fmt}"

    # ------------------------------------------------------------------------------------------ SRs

    async def probe(self, device_config: Mapping[str, str]) -> list[ProbeResult]:
        server = parse_server(device_config)
        await self._reachable(server)
        if not device_config.get("serverpath"):
            found = await asyncio.to_thread(_exports, server)
            raise FailureWithOutput(SMError.CONFIG_SERVER_PATH_MISSING, exports_xml(server, found))
        cfg = parse(device_config)

        def find(sr: chain.SrDir) -> list[tuple[str, int, int]]:
            results = []
            for entry in sr.client.listdir("/"):
                if entry.is_dir and _is_uuid(entry.name):
                    marker = chain.read_marker(sr.client, f"/{entry.name}")
                    if marker and marker.get("uuid") == entry.name:
                        size, _ = sr.client.statvfs("/")
                        sub = chain.SrDir(sr.client, f"/{entry.name}", cfg.sr_url(entry.name))
                        used = sum(img.allocated for img in chain.list_images(sub).values())
                        results.append((entry.name, size, used))
            return results

        found_srs = await self._io(cfg, "", find)
        return [
            ProbeResult(uuid, dict(device_config), SRInfo(size, used, 0, "user", {}))
            for uuid, size, used in sorted(found_srs)
        ]

    async def create_sr(self, device_config: Mapping[str, str], sr_uuid: str, size: int = 0) -> SRInfo:
        check_uuid(sr_uuid, "SR")
        cfg = parse(device_config)
        await self._reachable(cfg.server)

        def make(sr: chain.SrDir) -> None:
            entry = sr.client.stat(sr.path)
            if entry is not None:
                if not entry.is_dir or list(sr.client.listdir(sr.path)):
                    raise SRExists(f"{cfg.serverpath}/{sr_uuid} already exists on {cfg.server}")
            else:
                try:
                    sr.client.mkdir(sr.path)
                except NfsError as exc:
                    raise BackendFailure(SMError.NFS_CREATE, f"remote directory creation error: {exc}") from None
            try:
                chain.write_marker(sr.client, sr.path, sr_uuid, self.sr_type)
            except NfsError as exc:
                if not list(sr.client.listdir(sr.path)):
                    sr.client.rmdir(sr.path)
                raise BackendFailure(SMError.NFS_CREATE, str(exc)) from None

        await self._io(cfg, sr_uuid, make)
        return await self._stat(cfg, sr_uuid)

    async def attach_sr(self, sr: SRHandle) -> SRInfo:
        cfg = parse(sr.device_config)
        await self._reachable(cfg.server)

        def attach(d: chain.SrDir) -> list[str]:
            entry = d.client.stat(d.path)
            if entry is None or not entry.is_dir:
                raise BackendFailure(SMError.SR_UNAVAILABLE, f"{cfg.serverpath}/{sr.uuid} is missing on {cfg.server}")
            marker = chain.read_marker(d.client, d.path)
            if marker is None:
                chain.write_marker(d.client, d.path, sr.uuid, self.sr_type)  # introduced: adopt it
            elif marker.get("uuid") != sr.uuid:
                raise BackendFailure(SMError.SR_UNAVAILABLE, f"the directory belongs to SR {marker.get('uuid', '?')}")
            return chain.recover(d)

        async with self._lock(sr.uuid):
            await self._io(cfg, sr.uuid, attach)
        self._attached_srs.add(sr.uuid)
        return await self._stat(cfg, sr.uuid)

    async def detach_sr(self, sr: SRHandle) -> None:
        if self._uses.any_in(sr.uuid):
            raise SRInUse("VDIs of this SR are still attached")
        self._attached_srs.discard(sr.uuid)

    async def destroy_sr(self, sr: SRHandle) -> None:
        cfg = parse(sr.device_config)
        await self._reachable(cfg.server)

        def destroy(d: chain.SrDir) -> None:
            if d.client.stat(d.path) is None:
                return
            marker = chain.read_marker(d.client, d.path)
            if marker and marker.get("uuid") != sr.uuid:
                raise BackendFailure(SMError.NFS_DELETE, f"the directory belongs to SR {marker.get('uuid')}")
            images = chain.list_images(d)
            if visible(images):
                raise SRNotEmpty()
            chain.remove_sr_files(d, images)

        async with self._lock(sr.uuid):
            if self._uses.any_in(sr.uuid):
                raise SRInUse("VDIs of this SR are still attached")
            await self._io(cfg, sr.uuid, destroy)
        self._attached_srs.discard(sr.uuid)

    async def stat_sr(self, sr: SRHandle) -> SRInfo:
        return await self._stat(self._cfg(sr), sr.uuid)

    async def scan(self, sr: SRHandle) -> list[VDIInfo]:
        def scan(d: chain.SrDir) -> list[VDIInfo]:
            images = chain.list_images(d)
            return [to_info(img) for img in visible(images) if chain.chain_problem(d, img.name) is None]

        found = await self._io(self._cfg(sr), sr.uuid, scan)
        return sorted(found, key=lambda v: v.location)

    async def _stat(self, cfg: NfsConfig, sr_uuid: str) -> SRInfo:
        def stat(d: chain.SrDir) -> SRInfo:
            size, _ = d.client.statvfs("/")
            images = chain.list_images(d)
            return SRInfo(
                physical_size=size,
                physical_utilisation=sum(img.allocated for img in images.values()),
                virtual_allocation=sum(img.virtual_size for img in visible(images)),
                content_type="user",
                sm_config={"nfs-server": cfg.server, "nfs-serverpath": cfg.serverpath},
            )

        return await self._io(cfg, sr_uuid, stat)

    # ----------------------------------------------------------------------------------------- VDIs

    async def _leaf(self, sr: SRHandle, cfg: NfsConfig, location: str) -> tuple[Image, dict[str, Image]]:
        check_file_name(location, tuple(SUFFIXES))
        images = await self._io(cfg, sr.uuid, chain.list_images)
        image = images.get(location)
        if image is None or image.is_base or location in referenced(images.values()):
            raise VDIMissing(sr.uuid, location)
        return image, images

    async def stat_vdi(self, sr: SRHandle, location: str) -> VDIInfo:
        check_file_name(location, tuple(SUFFIXES))
        image, _ = await self._leaf(sr, self._cfg(sr), location)
        return to_info(image)

    async def create_vdi(
        self, sr: SRHandle, vdi_uuid: str, virtual_size: int, format: VdiFormat | None = None
    ) -> VDIInfo:
        cfg = self._cfg(sr)
        check_uuid(vdi_uuid)
        fmt = self._format(format)
        size = check_size(vdi_uuid, virtual_size, MAX_VIRTUAL_SIZE)
        name = f"{vdi_uuid}.{fmt}"
        await self._fresh_name(cfg, sr.uuid, name)
        tmp = self._tmp_name(fmt)
        try:
            await qemuimg.create(f"{cfg.sr_url(sr.uuid)}/{tmp}", fmt, size)
            await self._publish(cfg, sr.uuid, tmp, name)
        except qemuimg.QemuImgError as exc:
            raise await self._failure(cfg, sr.uuid, exc, SMError.VDI_CREATE, size) from None
        finally:
            await self._discard(cfg, sr.uuid, tmp)
        return await self.stat_vdi(sr, name)

    async def destroy_vdi(self, sr: SRHandle, location: str) -> None:
        check_file_name(location, tuple(SUFFIXES))
        cfg = self._cfg(sr)
        async with self._lock(sr.uuid):
            image, _ = await self._leaf(sr, cfg, location)
            self._assert_unused(sr, location, "destroy")

            def remove(d: chain.SrDir) -> None:
                d.client.unlink(d.file(location))
                chain.collect_bases(d, image.backing)

            await self._io(cfg, sr.uuid, remove)

    async def clone_vdi(self, sr: SRHandle, location: str, new_uuid: str) -> CloneResult:
        return await self._branch(sr, location, new_uuid, snapshot=False)

    async def snapshot_vdi(self, sr: SRHandle, location: str, new_uuid: str) -> CloneResult:
        return await self._branch(sr, location, new_uuid, snapshot=True)

    async def resize_vdi(self, sr: SRHandle, location: str, new_size: int, online: bool = False) -> VDIInfo:
        """Grow only. Online the running QEMU grows it (QMP block_resize); here only the record."""
        check_file_name(location, tuple(SUFFIXES))
        cfg = self._cfg(sr)
        async with self._lock(sr.uuid):
            image, _ = await self._leaf(sr, cfg, location)
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
                    await qemuimg.resize(f"{cfg.sr_url(sr.uuid)}/{location}", image.format, size)
                except qemuimg.QemuImgError as exc:
                    grow = size - image.virtual_size
                    raise await self._failure(cfg, sr.uuid, exc, SMError.VDI_RESIZE, grow) from None
            image, _ = await self._leaf(sr, cfg, location)
            return to_info(image)

    async def attach_vdi(self, sr: SRHandle, location: str, read_only: bool = False) -> AttachInfo:
        check_file_name(location, tuple(SUFFIXES))
        cfg = self._cfg(sr)
        image, _ = await self._leaf(sr, cfg, location)
        problem = await self._io(cfg, sr.uuid, lambda d: chain.chain_problem(d, location))
        if problem is not None:
            raise UnsafePath(location, problem)
        if not read_only and not image.writable:
            raise VDIReadOnly(location)
        self._uses.claim(sr.uuid, location, read_only)
        return AttachInfo(f"{cfg.sr_url(sr.uuid)}/{location}", image.format, read_only)

    async def detach_vdi(self, sr: SRHandle, location: str) -> None:
        self._uses.release(sr.uuid, location)

    async def coalesce(self, sr: SRHandle) -> list[str]:
        """Merge single-child bases while nothing above them is attached (nfs_data.merge_chains)."""
        cfg = self._cfg(sr)
        busy = self._uses.busy(sr.uuid)
        async with self._lock(sr.uuid):
            try:
                return await nfs_data.merge_chains(self, cfg, sr.uuid, busy)
            except qemuimg.QemuImgError as exc:
                raise BackendFailure(SMError.SM_GENERAL, exc.stderr) from None

    # --------------------------------------------------------------------- data transfer (nfs_data)

    async def import_data(
        self,
        sr: SRHandle,
        location: str,
        source: DataSource,
        format: ImageFormat,
        progress: ProgressFn | None = None,
    ) -> VDIInfo:
        return await nfs_data.import_data(self, sr, location, source, format, progress)

    async def import_new_vdi(
        self,
        sr: SRHandle,
        vdi_uuid: str,
        source: DataSource,
        format: ImageFormat,
        vdi_format: VdiFormat | None = None,
        progress: ProgressFn | None = None,
    ) -> VDIInfo:
        return await nfs_data.import_new_vdi(self, sr, vdi_uuid, source, format, vdi_format, progress)

    async def export_data(
        self, sr: SRHandle, location: str, format: ImageFormat, dest: Path, progress: ProgressFn | None = None
    ) -> int:
        return await nfs_data.export_data(self, sr, location, format, dest, progress)

    async def copy_vdi(
        self, sr: SRHandle, location: str, dest_sr: SRHandle, new_uuid: str, progress: ProgressFn | None = None
    ) -> VDIInfo:
        return await nfs_data.copy_vdi(self, sr, location, dest_sr, new_uuid, progress)

    # ------------------------------------------------------------------------------------ internals

    async def _branch(self, sr: SRHandle, location: str, new_uuid: str, snapshot: bool) -> CloneResult:
        """The file SR's clone: the source becomes a hidden read-only base under two empty overlays,
        renamed into place in a row so the chain never looks half-made. raw is copied in full."""
        check_file_name(location, tuple(SUFFIXES))
        cfg = self._cfg(sr)
        check_uuid(new_uuid)
        error = SMError.VDI_SNAPSHOT if snapshot else SMError.VDI_CLONE
        url = cfg.sr_url(sr.uuid)
        async with self._lock(sr.uuid):
            image, _ = await self._leaf(sr, cfg, location)
            new_name = f"{new_uuid}.{image.format}"
            await self._fresh_name(cfg, sr.uuid, new_name)
            extra = {"is_a_snapshot": True, "snapshot_of": location} if snapshot else {}
            if image.format == "raw":
                tmp = self._tmp_name("raw")
                try:
                    await self._assert_space(cfg, sr.uuid, image.allocated)
                    await qemuimg.convert(f"{url}/{location}", "raw", f"{url}/{tmp}", "raw")
                    await self._publish(cfg, sr.uuid, tmp, new_name)
                except qemuimg.QemuImgError as exc:
                    raise await self._failure(cfg, sr.uuid, exc, error, image.allocated) from None
                finally:
                    await self._discard(cfg, sr.uuid, tmp)
                new, _ = await self._leaf(sr, cfg, new_name)
                return CloneResult(to_info(new, **extra), to_info(image), None, False)
            base = f"{uuidlib.uuid4()}{BASE_SUFFIX}"
            tmp_src, tmp_new = f"{BRANCH_PREFIX}{location}", f"{BRANCH_PREFIX}{new_name}"
            try:
                for tmp in (tmp_src, tmp_new):
                    await qemuimg.create(f"{url}/{tmp}", "qcow2", image.virtual_size, f"{url}/{base}", "qcow2")
                await self._io(cfg, sr.uuid, lambda d: _swap(d, location, base, tmp_src, tmp_new, new_name))
            except qemuimg.QemuImgError as exc:
                raise await self._failure(cfg, sr.uuid, exc, error, 0) from None
            finally:
                await self._discard(cfg, sr.uuid, tmp_src, tmp_new)
            source, _ = await self._leaf(sr, cfg, location)
            new, _ = await self._leaf(sr, cfg, new_name)
            return CloneResult(to_info(new, **extra), to_info(source), base, True)

    def _format(self, requested: str | None) -> VdiFormat:
        fmt = requested or self.default_format
        if fmt not in ("qcow2", "raw"):
            raise BackendFailure(SMError.VDI_TYPE, f"unsupported VDI format {fmt!r} (qcow2 or raw)")
        return fmt  # type: ignore[return-value]

    def _assert_unused(self, sr: SRHandle, location: str, operation: str) -> None:
        if self._uses.in_use(sr.uuid, location):
            raise VDIInUse(location, operation)

    async def _fresh_name(self, cfg: NfsConfig, sr_uuid: str, name: str) -> None:
        if await self._io(cfg, sr_uuid, lambda d: d.client.stat(d.file(name))) is not None:
            raise VDIExists(name)

    async def _publish(self, cfg: NfsConfig, sr_uuid: str, tmp: str, final: str) -> None:
        """Give a finished work file its final name, never replacing anything (a hard link, then unlink)."""

        def publish(d: chain.SrDir) -> None:
            try:
                d.client.link(d.file(tmp), d.file(final))
            except NfsError as exc:
                if exc.errno == errno.EEXIST:
                    raise VDIExists(final) from None
                raise
            d.client.unlink(d.file(tmp))

        await self._io(cfg, sr_uuid, publish)

    async def _discard(self, cfg: NfsConfig, sr_uuid: str, *names: str) -> None:
        def discard(d: chain.SrDir) -> None:
            for name in names:
                if d.client.stat(d.file(name)) is not None:
                    d.client.unlink(d.file(name))

        await self._io(cfg, sr_uuid, discard)

    async def _assert_space(self, cfg: NfsConfig, sr_uuid: str, needed: int) -> None:
        _, free = await self._io(cfg, sr_uuid, lambda d: d.client.statvfs("/"))
        if needed > free:
            raise SRFull(needed, free)

    async def _failure(
        self, cfg: NfsConfig, sr_uuid: str, exc: qemuimg.QemuImgError, error: SMError, requested: int
    ) -> Exception:
        if exc.no_space:
            _, free = await self._io(cfg, sr_uuid, lambda d: d.client.statvfs("/"))
            return SRFull(requested, free)
        return BackendFailure(error, exc.stderr)


def _swap(d: chain.SrDir, location: str, base: str, tmp_src: str, tmp_new: str, new_name: str) -> None:
    mode = d.client.stat(d.file(location))
    if mode is not None:
        d.client.chmod(d.file(tmp_src), mode.mode & 0o777)
    d.client.rename(d.file(location), d.file(base))
    d.client.rename(d.file(tmp_src), d.file(location))
    d.client.rename(d.file(tmp_new), d.file(new_name))
    d.client.chmod(d.file(base), 0o444)  # children depend on it: nothing may write it again


def _with_mount(cfg: NfsConfig, sr_uuid: str, fn: Callable[[chain.SrDir], T]) -> T:
    try:
        client = NfsClient(cfg.server, cfg.serverpath or "/", cfg.version)
    except LibnfsMissing as exc:
        raise BackendFailure(SMError.SM_GENERAL, str(exc)) from None
    except NfsError as exc:
        raise BackendFailure(SMError.NFS_MOUNT, f"{cfg.server}:{cfg.serverpath or '/'}: {exc.message}") from None
    with client:
        try:
            return fn(chain.SrDir(client, f"/{sr_uuid}" if sr_uuid else "", cfg.sr_url(sr_uuid)))
        except NfsError as exc:
            raise BackendFailure(SMError.EIO, str(exc)) from None


def _exports(server: str) -> list[tuple[str, tuple[str, ...]]]:
    try:
        return [(e.path, e.groups) for e in exports(server)]
    except LibnfsMissing as exc:
        raise BackendFailure(SMError.SM_GENERAL, str(exc)) from None
    except NfsError as exc:
        raise BackendFailure(SMError.NFS_TARGET, str(exc)) from None


def _is_uuid(name: str) -> bool:
    try:
        return str(uuidlib.UUID(name)) == name
    except ValueError:
        return False
