"""Whether a file's data is still only in the page cache: its dirty (or under write-back) pages.

The kernel's own view, read the way tools like page-types do: the file's data ranges are mapped
shared and touched, /proc/self/pagemap gives each page's frame number, /proc/kpageflags that frame's
flags. A page written but not yet on disk has KPF_DIRTY (or KPF_WRITEBACK while being written); after
an fsync or fdatasync of the file none has. Needs root (the tests run as root; CI too), which the
probe checks loudly rather than answering "0 dirty pages" for want of permission.

Nothing here depends on who wrote the file: a qemu-img child, qemu-nbd, nfs-ganesha or tgtd writing
their backing files all share the one page cache, so this checks what a power loss would lose.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct

KPF_DIRTY = 4
KPF_WRITEBACK = 8
_PRESENT = 1 << 63
_PFN_MASK = (1 << 55) - 1
_PAGE = mmap.PAGESIZE

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


def data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of the ranges of a sparse file holding data (SEEK_DATA/SEEK_HOLE)."""
    out, pos = [], 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: nothing but a hole from pos on
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        out.append((start, end - start))
        pos = end
    return out


def dirty_pages(path: str | os.PathLike[str]) -> int:
    """How many pages of the file's data are dirty or under write-back right now."""
    if os.geteuid() != 0:
        raise PermissionError("reading page flags (/proc/kpageflags) needs root")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr is None or addr == _MAP_FAILED:
            raise OSError(ctypes.get_errno(), f"mmap {path}")
        try:
            return _count_dirty(addr, data_ranges(fd, size))
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def _count_dirty(addr: int, ranges: list[tuple[int, int]]) -> int:
    dirty = framed = 0
    with open("/proc/self/pagemap", "rb") as pagemap, open("/proc/kpageflags", "rb") as kpageflags:
        for offset, length in ranges:
            first, last = offset // _PAGE, (offset + length - 1) // _PAGE
            for page in range(first, last + 1):
                ctypes.string_at(addr + page * _PAGE, 1)  # fault the page in: only mapped pages have a frame
            pagemap.seek((addr // _PAGE + first) * 8)
            entries = pagemap.read(8 * (last - first + 1))
            for (entry,) in struct.iter_unpack("<Q", entries):
                if not entry & _PRESENT or not entry & _PFN_MASK:
                    continue
                framed += 1
                kpageflags.seek((entry & _PFN_MASK) * 8)
                (flags,) = struct.unpack("<Q", kpageflags.read(8))
                if flags & ((1 << KPF_DIRTY) | (1 << KPF_WRITEBACK)):
                    dirty += 1
    if ranges and not framed:  # the kernel hides frame numbers from the unprivileged: never say "clean"
        raise PermissionError("/proc/self/pagemap shows no page frame numbers")
    return dirty
