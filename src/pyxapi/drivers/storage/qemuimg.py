"""qemu-img as asyncio subprocesses, plus a tiny qcow2 header reader for cheap scans.

Every call names the image format explicitly (-f/-F): letting qemu probe would let a guest that wrote a
qcow2 header into its raw disk point its "backing file" at any host file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .base import BackendFailure, ImportFailed, ProgressFn, SMError

QEMU_FORMAT = {"raw": "raw", "qcow2": "qcow2", "vhd": "vpc"}
"""Our format names to qemu's driver names (VHD is qemu's 'vpc')."""

VHD_MAX_SIZE = 2040 * 1024**3
"""Largest disk a VHD can describe (the format's 2040 GiB limit, which qemu enforces)."""

_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


class QemuImgError(Exception):
    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        self.cmd = list(args)
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(f"qemu-img {' '.join(self.cmd)}: exit {returncode}: {self.stderr}")

    @property
    def no_space(self) -> bool:
        return "No space left on device" in self.stderr


def executable(tool: str = "qemu-img") -> str:
    found = shutil.which(tool)
    if found is None:
        raise BackendFailure(SMError.SM_GENERAL, f"{tool} not found: install the Debian package qemu-utils")
    return found


def is_remote(image: str) -> bool:
    """An image qemu reaches through one of its network drivers (nfs://, iscsi://), not a local path."""
    return "://" in image


async def run(args: Sequence[str], progress: ProgressFn | None = None, ok_codes: tuple[int, ...] = (0,)) -> str:
    """Run qemu-img; returns stdout. Cancelling the awaiting task kills the child."""
    proc = await asyncio.create_subprocess_exec(
        executable(),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        if progress is None:
            out, err = await proc.communicate()
        else:
            out, err = await _communicate_with_progress(proc, progress)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    rc = proc.returncode if proc.returncode is not None else -1
    if rc not in ok_codes:
        raise QemuImgError(args, rc, err.decode(errors="replace"))
    return out.decode(errors="replace")


async def _communicate_with_progress(proc: asyncio.subprocess.Process, progress: ProgressFn) -> tuple[bytes, bytes]:
    # qemu-img -p rewrites one line with \r; read raw chunks and report the latest percentage seen.
    assert proc.stdout is not None and proc.stderr is not None
    err_task = asyncio.ensure_future(proc.stderr.read())
    out = bytearray()
    while chunk := await proc.stdout.read(4096):
        out += chunk
        found = _PROGRESS.findall(bytes(out[-256:]))
        if found:
            progress(min(float(found[-1]) / 100.0, 1.0))
    await proc.wait()
    return bytes(out), await err_task


async def info(path: str, fmt: str, chain: bool = False) -> Any:
    args = ["info", "--output=json", "-f", QEMU_FORMAT[fmt]]
    if chain:
        args.append("--backing-chain")
    return json.loads(await run([*args, path]))


async def create(
    path: str,
    fmt: str,
    size: int,
    backing: str | None = None,
    backing_fmt: str | None = None,
) -> None:
    """Create an image; with a backing file it is recorded by name and not opened (-u), so overlays can
    be prepared before their base is renamed into place."""
    args = ["create", "-q", "-f", QEMU_FORMAT[fmt]]
    if fmt == "qcow2":
        args += ["-o", "compat=1.1"]
    if backing is not None:
        assert backing_fmt is not None, "a backing file always needs an explicit format"
        args += ["-u", "-b", backing, "-F", QEMU_FORMAT[backing_fmt]]
    await run([*args, path, str(size)])


async def convert(
    src: str,
    src_fmt: str,
    dst: str,
    dst_fmt: str,
    progress: ProgressFn | None = None,
    target_exists: bool = False,
    force_share: bool = False,
) -> None:
    """Convert an image. A local target is left as qemu-img's default (cache=unsafe) writes it: the
    caller syncs it if it is a disk (durable.publish) and not if it is scratch. A remote target
    (nfs://, iscsi://) can only be flushed by qemu, so it gets `-t writeback`, which ends the
    conversion with a flush (durable.py)."""
    args = ["convert", "-f", QEMU_FORMAT[src_fmt], "-O", QEMU_FORMAT[dst_fmt]]
    if is_remote(dst):
        args += ["-t", "writeback"]
    if force_share:  # read an image a running hypervisor holds (its guest's I/O is paused)
        args.append("-U")
    if progress is not None:
        args.append("-p")
    if target_exists:
        args.append("-n")
    elif dst_fmt == "vhd":
        # Dynamic VHD with the exact byte size: without force_size qemu rounds up to a CHS geometry.
        args += ["-o", "subformat=dynamic,force_size=on"]
    elif dst_fmt == "qcow2":
        args += ["-o", "compat=1.1"]
    await run([*args, src, dst], progress=progress)


async def commit(path: str, fmt: str) -> None:
    """Write an overlay's data into its backing file (-d: leave the overlay as it is; we drop it)."""
    await run(["commit", "-q", "-d", "-f", QEMU_FORMAT[fmt], path])


async def resize(path: str, fmt: str, size: int) -> None:
    await run(["resize", "-q", "-f", QEMU_FORMAT[fmt], path, str(size)])


async def check_code(path: str, fmt: str) -> int:
    """qemu-img check's exit code: 0 clean, 2 corrupt, 3 leaked clusters only (harmless), 63 unsupported."""
    proc = await asyncio.create_subprocess_exec(
        executable(),
        "check",
        "-q",
        "-f",
        QEMU_FORMAT[fmt],
        path,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await proc.wait()


async def extents(path: str, fmt: str) -> list[dict[str, Any]]:
    return list(json.loads(await run(["map", "--output=json", "-f", QEMU_FORMAT[fmt], path])))


async def inspect_import(path: str, fmt: str) -> int:
    """Validate an image offered for import and return its virtual size; ImportFailed if unusable.

    qemu happily reads past the end of a truncated qcow2 as zeros, so a short upload would import as
    silently zeroed data: `check` (qcow2) and the extent map (any format) catch that. Backing files and
    external data files are refused because they would make qemu-img read arbitrary host files.
    """
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise ImportFailed(f"cannot read the image: {exc.strerror}") from None
    if fmt == "raw":
        if size == 0:
            raise ImportFailed("empty raw image")
        return size
    try:
        meta = await info(path, fmt)
    except QemuImgError as exc:
        raise ImportFailed(f"not a valid {fmt} image: {exc.stderr}") from None
    if meta.get("backing-filename") or meta.get("full-backing-filename"):
        raise ImportFailed("images with a backing file cannot be imported")
    specific = (meta.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file") or specific.get("data-file-raw"):
        raise ImportFailed("images with an external data file cannot be imported")
    if fmt == "qcow2" and await check_code(path, fmt) not in (0, 3):
        raise ImportFailed("qcow2 image is corrupt or truncated (qemu-img check failed)")
    try:
        for ext in await extents(path, fmt):
            offset = ext.get("offset")
            if ext.get("data") and offset is not None and offset + ext["length"] > size:
                raise ImportFailed(f"{fmt} image is truncated: data at {offset} past its end ({size})")
    except QemuImgError as exc:
        raise ImportFailed(f"unreadable {fmt} image: {exc.stderr}") from None
    virtual = int(meta.get("virtual-size", 0))
    if virtual <= 0:
        raise ImportFailed(f"{fmt} image has no virtual size")
    return virtual


# ------------------------------------------------------------------------------------- qcow2 header


QCOW2_MAGIC = b"QFI\xfb"
_EXT_BACKING_FORMAT = 0xE2792ACA
_EXT_DATA_FILE = 0x44415441
_INCOMPAT_DATA_FILE = 1 << 2


@dataclass(frozen=True, slots=True)
class Qcow2Header:
    virtual_size: int
    backing_file: str | None
    backing_format: str | None
    external_data_file: bool


def read_qcow2_header(path: str) -> Qcow2Header | None:
    """Parse just enough of a qcow2 header to follow chains without a subprocess; None if not qcow2."""
    try:
        with open(path, "rb", buffering=0) as f:
            head = f.read(104)
            if len(head) < 72 or head[:4] != QCOW2_MAGIC:
                return None
            version, backing_off, backing_len = struct.unpack(">IQI", head[4:20])
            (size,) = struct.unpack(">Q", head[24:32])
            incompat = 0
            header_len = 72
            if version >= 3 and len(head) >= 104:
                (incompat,) = struct.unpack(">Q", head[72:80])
                (header_len,) = struct.unpack(">I", head[100:104])
            backing = None
            if backing_off and 0 < backing_len <= 1023:
                f.seek(backing_off)
                backing = f.read(backing_len).decode("utf-8", errors="replace")
            backing_fmt, data_file = _read_extensions(f, header_len)
    except OSError:
        return None
    return Qcow2Header(
        virtual_size=size,
        backing_file=backing,
        backing_format=backing_fmt,
        external_data_file=bool(incompat & _INCOMPAT_DATA_FILE) or data_file,
    )


def _read_extensions(f: Any, offset: int) -> tuple[str | None, bool]:
    backing_fmt: str | None = None
    data_file = False
    f.seek(offset)
    for _ in range(64):  # a bounded walk: a hostile header must not make us loop
        raw = f.read(8)
        if len(raw) < 8:
            break
        kind, length = struct.unpack(">II", raw)
        if kind == 0 or length > 65536:
            break
        data = f.read((length + 7) & ~7)
        if kind == _EXT_BACKING_FORMAT:
            backing_fmt = data[:length].decode("ascii", errors="replace")
        elif kind == _EXT_DATA_FILE:
            data_file = True
    return backing_fmt, data_file


def allocated_bytes(path: str) -> int:
    """Bytes the file really occupies (sparse files count what is allocated, not their length)."""
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0
