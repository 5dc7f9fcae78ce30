"""The NFS SR's data movers: import, export, copy, and chain coalescing (NfsStorageDriver calls these).

Uploads are spooled to a local work file first (qemu-img must inspect an image before trusting it),
then converted straight onto the export through qemu-img's nfs:// driver into a work file that is
renamed into place only once complete: a failed import leaves the SR as it was.

Coalescing differs from the file SR's: QEMU's nfs driver cannot reopen a read-only backing image
read-write, so `qemu-img commit` fails on an export. A base with a single child is merged by the
other direction, a safe `qemu-img rebase` of the child onto the base's own backing (the child takes
the base's data it does not override), after which nothing references the base and it is deleted.
Reads through the child are unchanged by it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from . import nfs_chain as chain
from . import qemuimg
from .base import (
    BackendFailure,
    DataSource,
    ImageFormat,
    ProgressFn,
    SMError,
    SRHandle,
    SRNotAttached,
    UnsafePath,
    VDIExists,
    VdiFormat,
    VDIInfo,
    VDIInUse,
    VDIReadOnly,
    VDITooLarge,
    VDITooSmall,
    check_image_format,
    check_size,
)
from .filechain import SUFFIXES, TMP_PREFIX, Image
from .filegc import next_merge
from .nfs_config import NfsConfig
from .paths import check_file_name, check_uuid
from .transfer import local_file

if TYPE_CHECKING:
    from .nfs import NfsStorageDriver

MAX_VIRTUAL_SIZE = 64 * 1024**4


async def import_data(
    drv: NfsStorageDriver,
    sr: SRHandle,
    location: str,
    source: DataSource,
    format: ImageFormat,
    progress: ProgressFn | None = None,
) -> VDIInfo:
    check_file_name(location, tuple(SUFFIXES))
    cfg = drv._cfg(sr)
    fmt = check_image_format(format)
    image, _ = await drv._leaf(sr, cfg, location)
    drv._assert_unused(sr, location, "import")
    if not image.writable:
        raise VDIReadOnly(location)
    url = cfg.sr_url(sr.uuid)
    async with local_file(source, drv.work_dir, TMP_PREFIX) as src:
        virtual = await qemuimg.inspect_import(src, fmt)
        if virtual > image.virtual_size:
            raise VDITooSmall(location, virtual)
        await drv._assert_space(cfg, sr.uuid, Path(src).stat().st_size)
        tmp = drv._tmp_name(image.format)
        try:
            await qemuimg.convert(src, fmt, f"{url}/{tmp}", image.format, progress)
            if virtual < image.virtual_size:
                await qemuimg.resize(f"{url}/{tmp}", image.format, image.virtual_size)
            async with drv._lock(sr.uuid):
                current, _ = await drv._leaf(sr, cfg, location)  # a clone may have re-pointed it
                drv._assert_unused(sr, location, "import")

                def replace(d: chain.SrDir) -> None:
                    d.client.rename(d.file(tmp), d.file(location))
                    chain.collect_bases(d, current.backing)

                await drv._io(cfg, sr.uuid, replace)
        except qemuimg.QemuImgError as exc:
            raise await drv._failure(cfg, sr.uuid, exc, SMError.VDI_CREATE, virtual) from None
        finally:
            await drv._discard(cfg, sr.uuid, tmp)
    return await drv.stat_vdi(sr, location)


async def import_new_vdi(
    drv: NfsStorageDriver,
    sr: SRHandle,
    vdi_uuid: str,
    source: DataSource,
    format: ImageFormat,
    vdi_format: VdiFormat | None = None,
    progress: ProgressFn | None = None,
) -> VDIInfo:
    cfg = drv._cfg(sr)
    check_uuid(vdi_uuid)
    fmt = check_image_format(format)
    target_fmt = drv._format(vdi_format)
    name = f"{vdi_uuid}.{target_fmt}"
    await drv._fresh_name(cfg, sr.uuid, name)
    async with local_file(source, drv.work_dir, TMP_PREFIX) as src:
        virtual = await qemuimg.inspect_import(src, fmt)
        check_size(vdi_uuid, virtual, MAX_VIRTUAL_SIZE)
        await drv._assert_space(cfg, sr.uuid, Path(src).stat().st_size)
        tmp = drv._tmp_name(target_fmt)
        try:
            await qemuimg.convert(src, fmt, f"{cfg.sr_url(sr.uuid)}/{tmp}", target_fmt, progress)
            await drv._publish(cfg, sr.uuid, tmp, name)
        except qemuimg.QemuImgError as exc:
            raise await drv._failure(cfg, sr.uuid, exc, SMError.VDI_CREATE, virtual) from None
        finally:
            await drv._discard(cfg, sr.uuid, tmp)
    return await drv.stat_vdi(sr, name)


async def export_data(
    drv: NfsStorageDriver,
    sr: SRHandle,
    location: str,
    format: ImageFormat,
    dest: Path,
    progress: ProgressFn | None = None,
) -> int:
    """The VDI's contents, flattened, as a standalone image at the local path dest."""
    check_file_name(location, tuple(SUFFIXES))
    cfg = drv._cfg(sr)
    fmt = check_image_format(format)
    image, _ = await drv._leaf(sr, cfg, location)
    if drv._uses.written(sr.uuid, location):
        raise VDIInUse(location, "export")
    if fmt == "vhd" and image.virtual_size > qemuimg.VHD_MAX_SIZE:
        raise VDITooLarge(location, qemuimg.VHD_MAX_SIZE)
    await _assert_safe_chain(drv, cfg, sr.uuid, location)
    try:
        await qemuimg.convert(f"{cfg.sr_url(sr.uuid)}/{location}", image.format, str(dest), fmt, progress)
    except qemuimg.QemuImgError as exc:
        raise BackendFailure(SMError.EIO, exc.stderr) from None
    return dest.stat().st_size


async def copy_vdi(
    drv: NfsStorageDriver,
    sr: SRHandle,
    location: str,
    dest_sr: SRHandle,
    new_uuid: str,
    progress: ProgressFn | None = None,
) -> VDIInfo:
    """A full, independent copy (chain flattened) into another SR of this driver."""
    check_file_name(location, tuple(SUFFIXES))
    cfg, dest_cfg = drv._cfg(sr), drv._cfg(dest_sr)
    check_uuid(new_uuid)
    image, images = await drv._leaf(sr, cfg, location)
    name = f"{new_uuid}.{image.format}"
    await drv._fresh_name(dest_cfg, dest_sr.uuid, name)
    await _assert_safe_chain(drv, cfg, sr.uuid, location)
    await drv._assert_space(dest_cfg, dest_sr.uuid, _chain_allocation(images, location))
    tmp = drv._tmp_name(image.format)
    src_url, dest_url = f"{cfg.sr_url(sr.uuid)}/{location}", f"{dest_cfg.sr_url(dest_sr.uuid)}/{tmp}"
    try:
        await qemuimg.convert(src_url, image.format, dest_url, image.format, progress)
        await drv._publish(dest_cfg, dest_sr.uuid, tmp, name)
    except qemuimg.QemuImgError as exc:
        raise await drv._failure(dest_cfg, dest_sr.uuid, exc, SMError.VDI_CREATE, image.virtual_size) from None
    except VDIExists:
        raise
    finally:
        await drv._discard(dest_cfg, dest_sr.uuid, tmp)
    return await drv.stat_vdi(dest_sr, name)


async def merge_chains(drv: NfsStorageDriver, cfg: NfsConfig, sr_uuid: str, busy: set[str]) -> list[str]:
    """Merge every base with exactly one child whose subtree holds nothing in busy; the caller
    holds the SR lock. Returns the merged (now deleted) bases."""
    if sr_uuid not in drv._attached_srs:
        raise SRNotAttached(sr_uuid)
    merged: list[str] = []
    while True:
        images = await drv._io(cfg, sr_uuid, chain.list_images)
        candidate = next_merge(images, busy)
        if candidate is None:
            return merged
        base, child = images[candidate[0]], images[candidate[1]]
        await _merge(drv, cfg, sr_uuid, base, child)
        merged.append(base.name)


async def _merge(drv: NfsStorageDriver, cfg: NfsConfig, sr_uuid: str, base: Image, child: Image) -> None:
    url = cfg.sr_url(sr_uuid)

    def set_mode(d: chain.SrDir, mode: int) -> None:
        d.client.chmod(d.file(child.name), mode)

    def drop_base(d: chain.SrDir) -> None:
        d.client.unlink(d.file(base.name))

    await drv._io(cfg, sr_uuid, lambda d: set_mode(d, 0o644))  # a child that is a base is kept read-only
    try:
        new_backing = f"{url}/{base.backing}" if base.backing else ""
        args = ["rebase", "-q", "-f", "qcow2", "-b", new_backing]
        if base.backing:
            args += ["-F", qemuimg.QEMU_FORMAT[base.backing_format or "qcow2"]]
        await qemuimg.run([*args, f"{url}/{child.name}"])
    finally:
        mode = 0o644 if child.writable else 0o444
        await drv._io(cfg, sr_uuid, lambda d: set_mode(d, mode))
    await drv._io(cfg, sr_uuid, drop_base)


async def _assert_safe_chain(drv: NfsStorageDriver, cfg: NfsConfig, sr_uuid: str, location: str) -> None:
    problem = await drv._io(cfg, sr_uuid, lambda d: chain.chain_problem(d, location))
    if problem is not None:
        raise UnsafePath(location, problem)


def _chain_allocation(images: dict[str, Image], location: str) -> int:
    total, current, hops = 0, images.get(location), 0
    while current is not None and hops < 256:
        total += current.allocated
        current = images.get(current.backing) if current.backing else None
        hops += 1
    return total
