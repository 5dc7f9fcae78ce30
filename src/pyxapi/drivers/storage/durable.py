"""Disk data on stable storage before an operation reports success (as xapi's SM does).

`qemu-img convert` opens its output with cache=unsafe unless told otherwise: it never flushes, so a
converted image can sit in the page cache for half a minute after the call returned, and a power
loss in that window loses a disk the client was told had been written. So every path that writes a
VDI ends in one of two ways before it returns:

* a local work file: written the fast way, then fsync'ed here, given its final name, and its
  directory fsync'ed so that the name survives too (publish; import_data's os.replace and a clone's
  renames the same way). Our own fsync rather than `-t writeback`: a 1 GiB conversion took the same
  time both ways, and a failing write-back is reported to our fsync, whereas qemu-img ignores the
  result of the flush it does when it closes the image;
* a remote image (nfs://, iscsi://), which only qemu can flush: qemu-img runs with `-t writeback`
  (qemuimg.convert does that for any URL target), so it ends with a flush that its nfs and iscsi
  drivers turn into an NFS COMMIT or a SCSI SYNCHRONIZE CACHE. Names on an NFS export change through
  the server (RENAME, LINK), which commits them before it answers.

The other tools flush by themselves: qemu-img create/resize/commit/rebase default to writeback
(a flush on close), qemu-io to writethrough, and the XVA importer's qemu-nbd gets NBD_CMD_FLUSH.
Scratch files (upload spools, export files) are never synced: they are read back at once and then
removed, and after a crash they are only work files (attach_sr and the transfer endpoint remove them).
"""

from __future__ import annotations

import asyncio
import os

from .base import VDIExists


def fsync_file(path: str) -> None:
    """fsync a written file (fsync works on a read-only descriptor: it flushes the inode's pages)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """fsync a directory, which makes the names created, renamed or removed in it durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_new_file(path: str) -> None:
    """fsync a file written in place and the directory holding its (possibly new) name."""
    fsync_file(path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


async def sync_file(path: str) -> None:
    # fsync waits for the disk: never on the event loop.
    await asyncio.to_thread(fsync_file, path)


async def sync_files(*paths: str) -> None:
    """Several files in one trip to a worker thread (a clone's two overlays: it is on the O(1) path)."""

    def sync_all() -> None:
        for path in paths:
            fsync_file(path)

    await asyncio.to_thread(sync_all)


async def sync_dir(path: str) -> None:
    await asyncio.to_thread(fsync_dir, path)


def publish_file(tmp: str, final: str) -> None:
    """Give a finished work file its final name, durably and without replacing anything: its data is
    synced first (so the name can never point at data still in flight), then it is hard-linked to its
    name, the work name dropped, and the directory synced."""
    fsync_file(tmp)
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise VDIExists(os.path.basename(final)) from None
    os.unlink(tmp)
    fsync_dir(os.path.dirname(final))


async def publish(tmp: str, final: str) -> None:
    await asyncio.to_thread(publish_file, tmp, final)
