"""Disk data written by the storage drivers is on stable storage before the call returns (durable.py).

Two independent checks, both on real qemu-img images and real files:

* the page cache itself (pagecache.py): once a driver call returns, no page of the image it wrote is
  dirty, i.e. nothing a power loss could take is still only in memory. For nfs and iscsi the pages
  looked at are those of the server's own files (the export, the LUN's backing file): the flush has to
  travel through qemu's nfs/iscsi driver and the server to get there (for nfs, see the test's note);
* the order of the syscalls (file SR): every name the driver gives a file in the SR directory
  (link, rename, replace) names data already fsync'ed, and the directory itself is fsync'ed after the
  last such name and before the call returns, so the names survive a power loss too.

test_the_checks_catch_a_driver_that_skips_its_syncs shows that the ordering check fails when the
syncs are left out, and test_the_probe_sees_what_qemu_img_leaves_unflushed that the page probe sees
qemu-img's default (cache=unsafe) output as not yet on disk: neither check passes by construction.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyxapi.drivers.storage import durable, qemuimg
from tests.drivers.iscsi_target import IscsiTarget
from tests.drivers.pagecache import dirty_pages
from tests.drivers.storage_fixtures import (  # noqa: F401 - nfs_share/iscsi_portal/qemu_utils: fixtures
    Harness,
    MiB,
    iscsi_portal,
    make_harness,
    make_vdi,
    new_uuid,
    nfs_share,
    qemu_utils,
    run,
)
from tests.drivers.syscall_log import Syscalls, inodes


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Syscalls]:
    yield Syscalls(monkeypatch)


def image(tmp: Path, fmt: str, size: int = 8 * MiB, seed: int = 1) -> Path:
    """An image of incompressible data (every page has to reach the disk), in qemu's format fmt."""
    raw = tmp / f"img-{seed}.raw"
    raw.write_bytes(os.urandom(size))
    if fmt == "raw":
        return raw
    out = tmp / f"img-{seed}.{fmt}"
    run("qemu-img", "convert", "-f", "raw", "-O", fmt, str(raw), str(out))
    return out


def same(a: Path, a_fmt: str, b: Path, b_fmt: str) -> bool:
    res = subprocess.run(["qemu-img", "compare", "-f", a_fmt, "-F", b_fmt, str(a), str(b)], capture_output=True)
    return res.returncode == 0


# -------------------------------------------------------------------------------------- file SR


async def test_file_create_vdi_names_a_synced_file_in_a_synced_directory(fh: Harness, calls: Syscalls) -> None:
    mark = calls.mark()
    info = await fh.driver.create_vdi(fh.sr, new_uuid(), 64 * MiB)
    assert calls.names_since(mark, fh.root) == [info.location]
    calls.assert_durable(mark, fh.root, presumed=set())
    assert dirty_pages(fh.root / info.location) == 0


async def test_file_import_of_a_new_vdi_is_on_disk_when_it_returns(fh: Harness, calls: Syscalls) -> None:
    src = image(fh.tmp, "qcow2")
    mark = calls.mark()
    info = await fh.driver.import_new_vdi(fh.sr, new_uuid(), src, "qcow2")
    assert dirty_pages(fh.root / info.location) == 0
    assert calls.names_since(mark, fh.root) == [info.location]
    calls.assert_durable(mark, fh.root, presumed=set())
    assert same(fh.root / info.location, "qcow2", src, "qcow2")


async def test_file_import_over_a_vdi_is_on_disk_when_it_returns(fh: Harness, calls: Syscalls) -> None:
    location = await make_vdi(fh, 16 * MiB)
    src = image(fh.tmp, "raw", 8 * MiB)  # smaller than the VDI: converted, then grown (qemu-img resize)
    before = inodes(fh.root)
    mark = calls.mark()
    await fh.driver.import_data(fh.sr, location, src, "raw")
    assert dirty_pages(fh.root / location) == 0
    assert calls.names_since(mark, fh.root) == [location]  # os.replace over the VDI
    calls.assert_durable(mark, fh.root, presumed=before)
    assert await fh.read(location, 0, 8 * MiB) == src.read_bytes()


async def test_file_copy_is_on_disk_when_it_returns(fh: Harness, calls: Syscalls) -> None:
    location = await make_vdi(fh, 16 * MiB)
    await fh.driver.import_data(fh.sr, location, image(fh.tmp, "raw", 16 * MiB), "raw")
    await fh.driver.snapshot_vdi(fh.sr, location, new_uuid())  # a chain: the copy flattens it
    await fh.write(location, 0, 0x6B, 4 * MiB)
    before = inodes(fh.root)
    mark = calls.mark()
    info = await fh.driver.copy_vdi(fh.sr, location, fh.sr, new_uuid())
    assert dirty_pages(fh.root / info.location) == 0
    assert calls.names_since(mark, fh.root) == [info.location]
    calls.assert_durable(mark, fh.root, presumed=before)
    assert await fh.read(info.location, 0, 16 * MiB) == await fh.read(location, 0, 16 * MiB)


async def test_file_clone_and_snapshot_are_durable(fh: Harness, calls: Syscalls) -> None:
    # qcow2: two new overlays renamed into place over the source's name and the new one
    location = await make_vdi(fh, 16 * MiB)
    await fh.write(location, 0, 0x3C, MiB)
    before = inodes(fh.root)
    mark = calls.mark()
    result = await fh.driver.clone_vdi(fh.sr, location, new_uuid())
    assert sorted(calls.names_since(mark, fh.root)) == sorted([str(result.base), location, result.vdi.location])
    calls.assert_durable(mark, fh.root, presumed=before)  # the base is the source's old, untouched file
    for name in (location, result.vdi.location):
        assert dirty_pages(fh.root / name) == 0
    # raw: copied in full
    raw = await make_vdi(fh, 8 * MiB, "raw")
    await fh.write(raw, MiB, 0x4D, MiB)
    before = inodes(fh.root)
    mark = calls.mark()
    snap = await fh.driver.snapshot_vdi(fh.sr, raw, new_uuid())
    assert calls.names_since(mark, fh.root) == [snap.vdi.location]
    calls.assert_durable(mark, fh.root, presumed=before)
    assert dirty_pages(fh.root / snap.vdi.location) == 0
    assert await fh.read(snap.vdi.location, MiB, MiB) == b"\x4d" * MiB


async def test_file_offline_resize_is_synced(fh: Harness, calls: Syscalls) -> None:
    location = await make_vdi(fh, 16 * MiB)
    ino = (fh.root / location).stat().st_ino
    mark = calls.mark()
    await fh.driver.resize_vdi(fh.sr, location, 32 * MiB)
    assert any(e.op == "fsync" and e.ino == ino for e in calls.events[mark:])
    assert dirty_pages(fh.root / location) == 0


async def test_file_coalesce_syncs_the_merged_base_before_it_replaces_the_child(fh: Harness, calls: Syscalls) -> None:
    location = await make_vdi(fh, 16 * MiB)
    await fh.write(location, 0, 0x11, MiB)
    snap = await fh.driver.snapshot_vdi(fh.sr, location, new_uuid())
    await fh.write(location, 2 * MiB, 0x22, 2 * MiB)  # the child's own data, committed into the base
    await fh.driver.destroy_vdi(fh.sr, snap.vdi.location)  # the base now has one child: it merges
    mark = calls.mark()
    assert await fh.driver.coalesce(fh.sr) == [snap.base]
    assert calls.names_since(mark, fh.root) == [location]
    # Nothing presumed on disk: the base was written by the commit and must be synced before the rename.
    synced = {e.ino for e in calls.events[mark:] if e.op == "fsync"}
    assert (fh.root / location).stat().st_ino in synced
    assert dirty_pages(fh.root / location) == 0
    assert await fh.read(location, 2 * MiB, 2 * MiB) == b"\x22" * 2 * MiB


async def test_the_checks_catch_a_driver_that_skips_its_syncs(
    fh: Harness, calls: Syscalls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same checks on a driver whose syncs are left out (as before durable.py): they fail."""
    fsync_file = durable.fsync_file
    monkeypatch.setattr(durable, "fsync_file", lambda path: None)
    monkeypatch.setattr(durable, "fsync_dir", lambda path: None)
    mark = calls.mark()
    await fh.driver.import_new_vdi(fh.sr, new_uuid(), image(fh.tmp, "qcow2"), "qcow2")
    with pytest.raises(AssertionError, match="never fsync'ed"):
        calls.assert_durable(mark, fh.root, presumed=set())
    monkeypatch.setattr(durable, "fsync_file", fsync_file)  # the data synced, its directory still not
    mark = calls.mark()
    await fh.driver.import_new_vdi(fh.sr, new_uuid(), image(fh.tmp, "qcow2", seed=2), "qcow2")
    with pytest.raises(AssertionError, match="no directory fsync"):
        calls.assert_durable(mark, fh.root, presumed=set())


def test_the_probe_sees_what_qemu_img_leaves_unflushed(tmp_path: Path) -> None:
    """qemu-img convert's default target cache (unsafe) never flushes: its output is dirty in the page
    cache right after it returns (what the drivers did before), and clean with -t writeback."""
    src = image(tmp_path, "raw", 4 * MiB)
    unsafe, writeback = tmp_path / "unsafe.qcow2", tmp_path / "writeback.qcow2"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(src), str(unsafe))
    run("qemu-img", "convert", "-t", "writeback", "-f", "raw", "-O", "qcow2", str(src), str(writeback))
    assert dirty_pages(unsafe) > 0
    assert dirty_pages(writeback) == 0
    durable.fsync_file(str(unsafe))
    assert dirty_pages(unsafe) == 0


# ------------------------------------------------------------------------- nfs and iscsi (servers)


@pytest.fixture
async def nfs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    async with make_harness(request, "nfs", tmp_path) as harness:
        yield harness


async def test_nfs_imports_and_copies_reach_the_servers_disk(nfs: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every image qemu-img writes onto the export is flushed (-t writeback: an NFS COMMIT at the end)
    and is on the server's disk when the call returns. nfs-ganesha's VFS backend here leaves no dirty
    page even for libnfs's UNSTABLE writes, so the page check alone would pass without the COMMIT (a
    kernel nfsd would not): qemu-img's arguments are checked too."""
    converts: list[list[str]] = []
    real_run = qemuimg.run

    async def recording_run(args: Any, *rest: Any, **kw: Any) -> str:
        if args and args[0] == "convert":
            converts.append(list(args))
        return await real_run(args, *rest, **kw)

    monkeypatch.setattr(qemuimg, "run", recording_run)
    src = image(nfs.tmp, "qcow2", 8 * MiB)
    new = await nfs.driver.import_new_vdi(nfs.sr, new_uuid(), src, "qcow2")
    assert dirty_pages(nfs.root / new.location) == 0
    location = await make_vdi(nfs, 16 * MiB)
    await nfs.driver.import_data(nfs.sr, location, image(nfs.tmp, "raw", 4 * MiB, seed=2), "raw")
    assert dirty_pages(nfs.root / location) == 0
    copy = await nfs.driver.copy_vdi(nfs.sr, new.location, nfs.sr, new_uuid())
    assert dirty_pages(nfs.root / copy.location) == 0
    raw = await make_vdi(nfs, 4 * MiB, "raw")
    await nfs.driver.import_data(nfs.sr, raw, image(nfs.tmp, "raw", 4 * MiB, seed=3), "raw")
    snap = await nfs.driver.snapshot_vdi(nfs.sr, raw, new_uuid())  # raw: a full copy on the export
    assert dirty_pages(nfs.root / snap.vdi.location) == 0
    assert same(nfs.root / copy.location, "qcow2", src, "qcow2")
    assert len(converts) == 5 and all(c[c.index("-t") + 1] == "writeback" for c in converts)


async def test_nfs_exports_are_not_flushed(nfs: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """An export's file is scratch (streamed out, then removed): no flush slows it down."""
    location = await make_vdi(nfs, 8 * MiB)
    await nfs.driver.import_data(nfs.sr, location, image(nfs.tmp, "raw", 8 * MiB), "raw")
    seen: list[list[str]] = []
    real_run = qemuimg.run

    async def recording_run(args: Any, *rest: Any, **kw: Any) -> str:
        seen.append(list(args))
        return await real_run(args, *rest, **kw)

    monkeypatch.setattr(qemuimg, "run", recording_run)
    await nfs.driver.export_data(nfs.sr, location, "qcow2", nfs.tmp / "out.qcow2")
    [convert] = [a for a in seen if a[0] == "convert"]
    assert "-t" not in convert


async def test_iscsi_import_reaches_the_luns_disk(
    request: pytest.FixtureRequest,
    iscsi_portal: IscsiTarget,  # noqa: F811
    tmp_path: Path,
) -> None:
    """An import writes the LUN in place through qemu's iscsi driver: SYNCHRONIZE CACHE at the end
    makes tgtd sync the LUN's backing file before the call returns. (tgtd writes through the page
    cache: without the flush, 16 MiB converted onto a LUN leave ~4000 dirty pages behind.)"""
    async with make_harness(request, "iscsi", tmp_path) as h:
        iqn = h.sr.device_config["targetIQN"]
        lun_dir = tmp_path / "lun-files"
        lun_dir.mkdir()
        lun = iscsi_portal.add_lun(iqn, 16 * MiB, lun_dir)
        await h.driver.scan(h.sr)
        [backing] = lun_dir.glob(f"*-lun{lun}.raw")
        # The LUN's exact size: no tail to zero (qemu-io flushes that part itself, writethrough).
        src = image(tmp_path, "qcow2", 16 * MiB)
        await h.driver.import_data(h.sr, f"LUN{lun}", src, "qcow2")
        assert dirty_pages(backing) == 0
        assert same(backing, "raw", src, "qcow2")
