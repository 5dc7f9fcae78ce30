"""File operations on an NFS export without a kernel mount: libnfs (the library QEMU's nfs:// driver uses)
through ctypes.

Every call blocks (libnfs's synchronous API): run them in a worker thread. One NfsClient is one mount
of one export path and is not thread-safe; the storage driver opens one per operation, so a dead
server costs one operation its timeout instead of poisoning a shared connection. Paths are relative to
the mounted path ("/<sr-uuid>/<file>").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

LIBRARY_NAMES = ("libnfs.so.13", "libnfs.so")
RPC_TIMEOUT_MS = 30_000  # whole seconds only (libnfs); a hung server fails the call instead of the daemon


class NfsError(OSError):
    """A libnfs call failed: errno (positive) plus libnfs's own message."""

    def __init__(self, err: int, op: str, path: str, message: str) -> None:
        super().__init__(err, f"{op} {path}: {message}")
        self.op = op
        self.path = path
        self.message = message


class LibnfsMissing(RuntimeError):
    pass


class _Stat64(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in [
            "dev",
            "ino",
            "mode",
            "nlink",
            "uid",
            "gid",
            "rdev",
            "size",
            "blksize",
            "blocks",
            "atime",
            "mtime",
            "ctime",
            "atime_nsec",
            "mtime_nsec",
            "ctime_nsec",
            "used",
        ]
    ]


class _StatVfs64(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in [
            "bsize",
            "frsize",
            "blocks",
            "bfree",
            "bavail",
            "files",
            "ffree",
            "favail",
            "fsid",
            "flag",
            "namemax",
        ]
    ]


class _Timeval(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("usec", ctypes.c_long)]


class _Dirent(ctypes.Structure):
    pass


_Dirent._fields_ = [
    ("next", ctypes.POINTER(_Dirent)),
    ("name", ctypes.c_char_p),
    ("inode", ctypes.c_uint64),
    ("type", ctypes.c_uint32),
    ("mode", ctypes.c_uint32),
    ("size", ctypes.c_uint64),
    ("atime", _Timeval),
    ("mtime", _Timeval),
    ("ctime", _Timeval),
    ("uid", ctypes.c_uint32),
    ("gid", ctypes.c_uint32),
    ("nlink", ctypes.c_uint32),
    ("dev", ctypes.c_uint64),
    ("rdev", ctypes.c_uint64),
    ("blksize", ctypes.c_uint64),
    ("blocks", ctypes.c_uint64),
    ("used", ctypes.c_uint64),
    ("atime_nsec", ctypes.c_uint32),
    ("mtime_nsec", ctypes.c_uint32),
    ("ctime_nsec", ctypes.c_uint32),
]


class _GroupNode(ctypes.Structure):
    pass


_GroupNode._fields_ = [("name", ctypes.c_char_p), ("next", ctypes.POINTER(_GroupNode))]


class _ExportNode(ctypes.Structure):
    pass


_ExportNode._fields_ = [
    ("dir", ctypes.c_char_p),
    ("groups", ctypes.POINTER(_GroupNode)),
    ("next", ctypes.POINTER(_ExportNode)),
]

_NF3DIR = 2  # nfsdirent.type values (libnfs-raw-nfs.h ftype3)
_NF3REG = 1


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    is_file: bool
    is_dir: bool
    mode: int
    size: int
    used: int  # bytes the server says the file occupies (sparse files count what is allocated)


@dataclass(frozen=True, slots=True)
class Export:
    path: str
    groups: tuple[str, ...]


_lib: Any = None


def library() -> Any:
    """The loaded libnfs, with argument types declared once (mistyped pointers would crash, not raise)."""
    global _lib  # a loaded C library is process-wide by nature
    if _lib is not None:
        return _lib
    found = next((n for n in LIBRARY_NAMES if _loadable(n)), None) or ctypes.util.find_library("nfs")
    if found is None:
        raise LibnfsMissing("libnfs not found: install the Debian package qemu-block-extra (libnfs13)")
    lib = ctypes.CDLL(found, use_errno=True)
    vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    sigs: dict[str, tuple[Any, list[Any]]] = {
        "nfs_init_context": (vp, []),
        "nfs_destroy_context": (None, [vp]),
        "nfs_get_error": (cp, [vp]),
        "nfs_set_timeout": (None, [vp, i]),
        "nfs_set_version": (i, [vp, i]),
        "nfs_set_dircache": (None, [vp, i]),
        "nfs_mount": (i, [vp, cp, cp]),
        "nfs_umount": (i, [vp]),
        "nfs_stat64": (i, [vp, cp, ctypes.POINTER(_Stat64)]),
        "nfs_lstat64": (i, [vp, cp, ctypes.POINTER(_Stat64)]),
        "nfs_statvfs64": (i, [vp, cp, ctypes.POINTER(_StatVfs64)]),
        "nfs_mkdir2": (i, [vp, cp, i]),
        "nfs_rmdir": (i, [vp, cp]),
        "nfs_unlink": (i, [vp, cp]),
        "nfs_rename": (i, [vp, cp, cp]),
        "nfs_link": (i, [vp, cp, cp]),
        "nfs_chmod": (i, [vp, cp, i]),
        "nfs_opendir": (i, [vp, cp, ctypes.POINTER(vp)]),
        "nfs_readdir": (ctypes.POINTER(_Dirent), [vp, vp]),
        "nfs_closedir": (None, [vp, vp]),
        "nfs_open": (i, [vp, cp, i, ctypes.POINTER(vp)]),
        "nfs_create": (i, [vp, cp, i, i, ctypes.POINTER(vp)]),
        "nfs_close": (i, [vp, vp]),
        "nfs_pread": (i, [vp, vp, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_void_p]),
        "nfs_pwrite": (i, [vp, vp, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_void_p]),
        "nfs_fsync": (i, [vp, vp]),
        "mount_getexports": (ctypes.POINTER(_ExportNode), [cp]),
        "mount_free_export_list": (None, [ctypes.POINTER(_ExportNode)]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    _lib = lib
    return lib


def _loadable(name: str) -> bool:
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


def exports(server: str) -> list[Export]:
    """The server's export list (the MOUNT protocol's EXPORT call, what showmount -e prints)."""
    lib = library()
    head = lib.mount_getexports(server.encode())
    if not head:
        raise NfsError(errno.EHOSTUNREACH, "getexports", server, "the server did not answer the MOUNT protocol")
    found: list[Export] = []
    try:
        node = head
        while node:
            groups: list[str] = []
            group = node.contents.groups
            while group:
                groups.append((group.contents.name or b"").decode(errors="replace"))
                group = group.contents.next
            found.append(Export((node.contents.dir or b"").decode(errors="replace"), tuple(groups)))
            node = node.contents.next
    finally:
        lib.mount_free_export_list(head)
    return found


class NfsClient:
    """One mount of server:export through libnfs. Use as a context manager."""

    def __init__(self, server: str, export: str, version: int = 3, timeout_ms: int = RPC_TIMEOUT_MS) -> None:
        self.server = server
        self.export = export
        self._lib = library()
        self._ctx = self._lib.nfs_init_context()
        if not self._ctx:
            raise NfsError(errno.ENOMEM, "init", export, "could not create an NFS context")
        self._lib.nfs_set_timeout(self._ctx, timeout_ms)
        self._lib.nfs_set_dircache(self._ctx, 0)  # other clients (QEMU, qemu-img) change directories too
        if version != 3 and self._lib.nfs_set_version(self._ctx, version) != 0:
            self.close()
            raise NfsError(errno.EINVAL, "version", export, f"NFS version {version} is not supported by libnfs")
        self._check(self._lib.nfs_mount(self._ctx, server.encode(), export.encode()), "mount", export)

    def __enter__(self) -> NfsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._ctx:
            self._lib.nfs_destroy_context(self._ctx)
            self._ctx = None

    def _check(self, rc: int, op: str, path: str) -> int:
        if rc < 0:
            message = (self._lib.nfs_get_error(self._ctx) or b"").decode(errors="replace")
            raise NfsError(-rc, op, path, message or os.strerror(-rc))
        return rc

    # ------------------------------------------------------------------------------------ metadata

    def stat(self, path: str) -> Entry | None:
        """The entry at path (not following a final symlink), or None if nothing is there."""
        st = _Stat64()
        rc = self._lib.nfs_lstat64(self._ctx, path.encode(), ctypes.byref(st))
        if rc == -errno.ENOENT:
            return None
        self._check(rc, "stat", path)
        mode = int(st.mode)
        name = path.rsplit("/", 1)[-1]
        return Entry(name, stat.S_ISREG(mode), stat.S_ISDIR(mode), mode, int(st.size), int(st.used))

    def listdir(self, path: str) -> Iterator[Entry]:
        handle = ctypes.c_void_p()
        self._check(self._lib.nfs_opendir(self._ctx, path.encode(), ctypes.byref(handle)), "opendir", path)
        try:
            while ent := self._lib.nfs_readdir(self._ctx, handle):
                e = ent.contents
                name = (e.name or b"").decode(errors="surrogateescape")
                if name in (".", ".."):
                    continue
                yield Entry(name, e.type == _NF3REG, e.type == _NF3DIR, int(e.mode), int(e.size), int(e.used))
        finally:
            self._lib.nfs_closedir(self._ctx, handle)

    def statvfs(self, path: str) -> tuple[int, int]:
        """(size, free-for-us) in bytes."""
        st = _StatVfs64()
        self._check(self._lib.nfs_statvfs64(self._ctx, path.encode(), ctypes.byref(st)), "statvfs", path)
        unit = int(st.frsize or st.bsize)
        return int(st.blocks) * unit, int(st.bavail) * unit

    # ---------------------------------------------------------------------------------- namespace

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        self._check(self._lib.nfs_mkdir2(self._ctx, path.encode(), mode), "mkdir", path)

    def rmdir(self, path: str) -> None:
        self._check(self._lib.nfs_rmdir(self._ctx, path.encode()), "rmdir", path)

    def unlink(self, path: str) -> None:
        self._check(self._lib.nfs_unlink(self._ctx, path.encode()), "unlink", path)

    def rename(self, old: str, new: str) -> None:
        self._check(self._lib.nfs_rename(self._ctx, old.encode(), new.encode()), "rename", old)

    def link(self, old: str, new: str) -> None:
        """A hard link; EEXIST if new exists (how work files are published without replacing anything)."""
        self._check(self._lib.nfs_link(self._ctx, old.encode(), new.encode()), "link", new)

    def chmod(self, path: str, mode: int) -> None:
        self._check(self._lib.nfs_chmod(self._ctx, path.encode(), mode), "chmod", path)

    # --------------------------------------------------------------------------------------- data

    def read(self, path: str, offset: int, length: int) -> bytes:
        fh = ctypes.c_void_p()
        self._check(self._lib.nfs_open(self._ctx, path.encode(), os.O_RDONLY, ctypes.byref(fh)), "open", path)
        try:
            buf = ctypes.create_string_buffer(length)
            n = self._check(self._lib.nfs_pread(self._ctx, fh, offset, length, buf), "read", path)
            return buf.raw[:n]
        finally:
            self._lib.nfs_close(self._ctx, fh)

    def write_new(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Create path (it must not exist) holding data, flushed to the server's disk."""
        fh = ctypes.c_void_p()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        self._check(self._lib.nfs_create(self._ctx, path.encode(), flags, mode, ctypes.byref(fh)), "create", path)
        try:
            done = 0
            while done < len(data):
                chunk = data[done : done + (1 << 20)]
                done += self._check(self._lib.nfs_pwrite(self._ctx, fh, done, len(chunk), chunk), "write", path)
            self._check(self._lib.nfs_fsync(self._ctx, fh), "fsync", path)
        finally:
            self._lib.nfs_close(self._ctx, fh)
