"""The NFS SR's directory layout, read and changed through libnfs (blocking: call from a worker thread).

The layout is the file SR's (see filechain.py: marker, <uuid>.qcow2 leaves, hidden *.base.qcow2 bases,
.tmp-* work files) inside `<serverpath>/<sr-uuid>` on the export, as XenServer's NFS SR places it. One
difference: QEMU 7.2's nfs driver resolves a *relative* backing name against the image's own path as if
it were a directory (nfs_dirname), so overlays here record their backing as the absolute URL
`nfs://<server><serverpath>/<sr-uuid>/<base>`. Loading an image turns such a URL back into the bare
name when it points into this SR, so filechain's chain rules (visible, referenced, to_info) apply
unchanged; any other backing (a foreign URL, a host path) stays as written and makes chain_problem
refuse the image.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from .filechain import (
    BASE_SUFFIX,
    BRANCH_PREFIX,
    MARKER,
    TMP_PREFIX,
    Image,
    chain_problem_of,
    format_of,
    referenced,
)
from .libnfs import NfsClient
from .paths import SAFE_NAME

QCOW2_MAGIC = b"QFI\xfb"
_EXT_BACKING_FORMAT = 0xE2792ACA
_EXT_DATA_FILE = 0x44415441
_INCOMPAT_DATA_FILE = 1 << 2
_HEADER_READ = 64 * 1024  # header, backing name and extensions all live in the first cluster in practice


@dataclass(frozen=True, slots=True)
class SrDir:
    """Where one SR lives: its directory relative to the mounted serverpath, and its URL for QEMU."""

    client: NfsClient
    path: str  # "/<sr-uuid>"
    url: str  # "nfs://<server><serverpath>/<sr-uuid>"

    def file(self, name: str) -> str:
        return f"{self.path}/{name}"

    def file_url(self, name: str) -> str:
        return f"{self.url}/{name}"

    def backing_name(self, backing: str | None) -> str | None:
        """A recorded backing reference as this SR's bare name when it points into the SR."""
        if backing is not None and backing.startswith(self.url + "/"):
            name = backing[len(self.url) + 1 :]
            if SAFE_NAME.match(name):
                return name
        return backing


@dataclass(frozen=True, slots=True)
class _Header:
    virtual_size: int
    backing_file: str | None
    backing_format: str | None
    external_data_file: bool


def parse_qcow2_header(head: bytes) -> _Header | None:
    """Enough of a qcow2 header to follow chains (same rules as qemuimg.read_qcow2_header, on bytes)."""
    if len(head) < 72 or head[:4] != QCOW2_MAGIC:
        return None
    version, backing_off, backing_len = struct.unpack(">IQI", head[4:20])
    (size,) = struct.unpack(">Q", head[24:32])
    incompat, header_len = 0, 72
    if version >= 3 and len(head) >= 104:
        (incompat,) = struct.unpack(">Q", head[72:80])
        (header_len,) = struct.unpack(">I", head[100:104])
    backing = None
    if backing_off and 0 < backing_len <= 1023:
        backing = head[backing_off : backing_off + backing_len].decode("utf-8", errors="replace")
    backing_fmt, data_file, offset = None, False, header_len
    for _ in range(64):  # bounded: a hostile header must not make us loop
        if offset + 8 > len(head):
            break
        kind, length = struct.unpack(">II", head[offset : offset + 8])
        if kind == 0 or length > 65536:
            break
        data = head[offset + 8 : offset + 8 + length]
        if kind == _EXT_BACKING_FORMAT:
            backing_fmt = data.decode("ascii", errors="replace")
        elif kind == _EXT_DATA_FILE:
            data_file = True
        offset += 8 + ((length + 7) & ~7)
    return _Header(size, backing, backing_fmt, bool(incompat & _INCOMPAT_DATA_FILE) or data_file)


def load(sr: SrDir, name: str) -> Image | None:
    fmt = format_of(name)
    if fmt is None:
        return None
    entry = sr.client.stat(sr.file(name))
    if entry is None or not entry.is_file:
        return None
    writable = bool(entry.mode & 0o222)
    if fmt == "raw":
        return Image(name, fmt, entry.size, entry.used, None, None, False, writable)
    header = parse_qcow2_header(sr.client.read(sr.file(name), 0, _HEADER_READ))
    if header is None:
        return None
    return Image(
        name,
        fmt,
        header.virtual_size,
        entry.used,
        sr.backing_name(header.backing_file),
        header.backing_format,
        header.external_data_file,
        writable,
    )


def list_images(sr: SrDir) -> dict[str, Image]:
    found: dict[str, Image] = {}
    for entry in list(sr.client.listdir(sr.path)):
        name = entry.name
        if name.startswith(".") or not SAFE_NAME.match(name) or format_of(name) is None or not entry.is_file:
            continue  # symlinks and directories are never images
        image = load(sr, name)
        if image is not None:
            found[name] = image
    return found


def chain_problem(sr: SrDir, name: str) -> str | None:
    """Why the chain under name is unsafe to hand to QEMU (see filechain.chain_problem_of), or None."""
    return chain_problem_of(lambda current: load(sr, current), name)


def collect_bases(sr: SrDir, start: str | None) -> list[str]:
    """Delete our own hidden bases from start upwards while nothing references them."""
    removed: list[str] = []
    current = start
    while current is not None and current.endswith(BASE_SUFFIX) and SAFE_NAME.match(current):
        images = list_images(sr)
        base = images.get(current)
        if base is None or current in referenced(images.values()):
            break
        sr.client.unlink(sr.file(current))
        removed.append(current)
        current = base.backing
    return removed


def read_marker(client: NfsClient, path: str) -> dict[str, str] | None:
    entry = client.stat(f"{path}/{MARKER}")
    if entry is None:
        return None
    try:
        data = json.loads(client.read(f"{path}/{MARKER}", 0, 4096))
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def write_marker(client: NfsClient, path: str, sr_uuid: str, sr_type: str) -> None:
    tmp = f"{path}/{TMP_PREFIX}marker-{sr_uuid}"
    if client.stat(tmp) is not None:
        client.unlink(tmp)
    client.write_new(tmp, json.dumps({"uuid": sr_uuid, "type": sr_type}).encode())
    client.rename(tmp, f"{path}/{MARKER}")


def recover(sr: SrDir) -> list[str]:
    """Finish a clone/snapshot cut short by a crash, then drop other work files (filechain.recover)."""
    restored: list[str] = []
    names = [e.name for e in sr.client.listdir(sr.path) if e.name.startswith(BRANCH_PREFIX)]
    for tmp in names:
        final = tmp[len(BRANCH_PREFIX) :]
        header = parse_qcow2_header(sr.client.read(sr.file(tmp), 0, _HEADER_READ))
        backing = sr.backing_name(header.backing_file) if header else None
        if (
            SAFE_NAME.match(final)
            and sr.client.stat(sr.file(final)) is None
            and backing is not None
            and SAFE_NAME.match(backing)
            and sr.client.stat(sr.file(backing)) is not None
        ):
            sr.client.rename(sr.file(tmp), sr.file(final))
            restored.append(final)
    remove_temporaries(sr)
    return restored


def remove_temporaries(sr: SrDir) -> None:
    for entry in list(sr.client.listdir(sr.path)):
        if entry.name.startswith(TMP_PREFIX) and entry.is_file:
            sr.client.unlink(sr.file(entry.name))


def remove_sr_files(sr: SrDir, images: dict[str, Image]) -> None:
    """Only what the SR itself made: orphaned bases, work files, the marker, then the directory if empty."""
    for name in images:
        if name.endswith(BASE_SUFFIX):
            sr.client.unlink(sr.file(name))
    remove_temporaries(sr)
    if sr.client.stat(sr.file(MARKER)) is not None:
        sr.client.unlink(sr.file(MARKER))
    if not list(sr.client.listdir(sr.path)):
        sr.client.rmdir(sr.path)
