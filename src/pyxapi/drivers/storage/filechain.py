"""The file SR's on-disk layout, read without subprocesses (blocking: call through asyncio.to_thread).

    <sr dir>/.pyxapi-sr            marker: {"uuid": ..., "type": "file"}; lets probe find the SR and
                                   stops two SRs sharing one directory
    <sr dir>/<uuid>.qcow2|.raw     visible VDIs (leaves); location = file name
    <sr dir>/<uuid>.base.qcow2     hidden read-only bases made by clone/snapshot
    <sr dir>/.tmp-*                work files; never visible, removed on attach
    <sr dir>/.tmp-branch-<name>    an overlay made by clone/snapshot, renamed to <name> when complete;
                                   attach finishes an interrupted clone with them (see recover())

Backing references are stored as bare file names (resolved by qemu relative to the overlay's own
directory), so an SR directory can be moved or mounted elsewhere. Any image that another image in the
SR uses as its backing file is hidden too, so a chain copied in by hand is safe to scan.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .base import VdiFormat, VDIInfo
from .paths import SAFE_NAME, uuid_of
from .qemuimg import read_qcow2_header

log = logging.getLogger(__name__)

MARKER = ".pyxapi-sr"
TMP_PREFIX = ".tmp-"
BRANCH_PREFIX = ".tmp-branch-"
BASE_SUFFIX = ".base.qcow2"
SUFFIXES: dict[str, VdiFormat] = {".qcow2": "qcow2", ".raw": "raw"}
MAX_CHAIN = 256


@dataclass(frozen=True, slots=True)
class Image:
    name: str
    format: VdiFormat
    virtual_size: int
    allocated: int
    backing: str | None
    backing_format: str | None
    data_file: bool
    writable: bool

    @property
    def is_base(self) -> bool:
        return self.name.endswith(BASE_SUFFIX)


def format_of(name: str) -> VdiFormat | None:
    for suffix, fmt in SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    return None


def load(root: str, name: str) -> Image | None:
    """The image called name, or None if it is missing, not a regular file, or not an image of ours."""
    fmt = format_of(name)
    if fmt is None:
        return None
    path = os.path.join(root, name)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    writable = bool(st.st_mode & 0o222)
    if fmt == "raw":
        return Image(name, fmt, st.st_size, st.st_blocks * 512, None, None, False, writable)
    header = read_qcow2_header(path)
    if header is None:
        log.warning("file SR %s: %s is not a qcow2 image; ignored", root, name)
        return None
    return Image(
        name,
        fmt,
        header.virtual_size,
        st.st_blocks * 512,
        header.backing_file,
        header.backing_format,
        header.external_data_file,
        writable,
    )


def list_images(root: str) -> dict[str, Image]:
    """Every image file in the SR directory, bases included; dotfiles and symlinks are skipped."""
    found: dict[str, Image] = {}
    with os.scandir(root) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(".") or not SAFE_NAME.match(name) or format_of(name) is None:
                continue
            if entry.is_symlink():
                log.warning("file SR %s: symbolic link %s ignored", root, name)
                continue
            image = load(root, name)
            if image is not None:
                found[name] = image
    return found


def referenced(images: Iterable[Image]) -> set[str]:
    return {img.backing for img in images if img.backing}


def visible(images: dict[str, Image]) -> list[Image]:
    used = referenced(images.values())
    return [img for img in images.values() if not img.is_base and img.name not in used]


def chain_problem(root: str, name: str) -> str | None:
    """Why the backing chain under name in the directory root is unsafe (chain_problem_of), or None."""
    return chain_problem_of(lambda current: load(root, current), name)


def chain_problem_of(load_image: Callable[[str], Image | None], name: str) -> str | None:
    """Why the backing chain under name is unsafe to hand to qemu, or None if it is fine; `load_image`
    reads one image of the SR by name (None: missing or not an image).

    Each backing file must be a plain name of an existing regular image in this directory with an
    explicit format, and no image may use an external data file: otherwise the guest could read host
    files through its disk.
    """
    seen: set[str] = set()
    current: str | None = name
    while current is not None:
        if current in seen or len(seen) > MAX_CHAIN:
            return "backing chain loops or is too long"
        seen.add(current)
        image = load_image(current) if SAFE_NAME.match(current) else None
        if image is None:
            if "/" in current or not SAFE_NAME.match(current):
                return f"backing file {current!r} is outside the SR"
            return f"image {current!r} is missing or not a regular image file"
        if image.data_file:
            return f"{current} uses an external data file"
        if image.backing is None:
            return None
        if "/" in image.backing or not SAFE_NAME.match(image.backing) or format_of(image.backing) is None:
            return f"backing file {image.backing!r} of {current} is outside the SR"
        if image.backing_format not in ("qcow2", "raw") or image.backing_format != format_of(image.backing):
            return f"backing file of {current} has no explicit, matching format"
        current = image.backing
    return None


def to_info(image: Image, **extra: object) -> VDIInfo:
    fields: dict[str, object] = {
        "location": image.name,
        "virtual_size": image.virtual_size,
        "physical_utilisation": image.allocated,
        "format": image.format,
        "read_only": not image.writable,
        "parent": image.backing,
        "uuid": uuid_of(image.name),
        "sm_config": {"image-format": image.format},
    }
    fields.update(extra)
    return VDIInfo(**fields)  # type: ignore[arg-type]


def collect_bases(root: str, start: str | None) -> list[str]:
    """Delete hidden bases from start upwards while nothing references them; returns what was removed.

    Only our own *.base.qcow2 files are ever deleted: a foreign backing file that loses its last child
    simply becomes a visible VDI again at the next scan.
    """
    removed: list[str] = []
    current = start
    while current is not None and current.endswith(BASE_SUFFIX) and SAFE_NAME.match(current):
        images = list_images(root)
        base = images.get(current)
        if base is None or current in referenced(images.values()):
            break
        os.unlink(os.path.join(root, current))
        removed.append(current)
        current = base.backing
    return removed


def read_marker(root: str) -> dict[str, str] | None:
    try:
        with open(os.path.join(root, MARKER), encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_marker(root: str, sr_uuid: str, sr_type: str) -> None:
    tmp = os.path.join(root, f"{TMP_PREFIX}marker")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"uuid": sr_uuid, "type": sr_type}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(root, MARKER))


def recover(root: str) -> list[str]:
    """Finish a clone/snapshot cut short by a crash, then drop all other work files.

    A clone renames the source to its base and then its two prepared overlays into place. If the
    daemon died in between, an overlay whose final name is free and whose base exists is exactly
    what was about to be renamed: completing the rename restores the source (and yields the clone).
    Overlays whose base does not exist yet were made before anything was renamed: just drop them.
    Returns the names restored.
    """
    restored: list[str] = []
    with os.scandir(root) as entries:
        branches = [e.name for e in entries if e.name.startswith(BRANCH_PREFIX)]
    for tmp in branches:
        final = tmp[len(BRANCH_PREFIX) :]
        tmp_path, final_path = os.path.join(root, tmp), os.path.join(root, final)
        header = read_qcow2_header(tmp_path)
        if (
            SAFE_NAME.match(final)
            and not os.path.lexists(final_path)
            and header is not None
            and header.backing_file
            and os.path.isfile(os.path.join(root, header.backing_file))
        ):
            os.rename(tmp_path, final_path)
            restored.append(final)
    remove_temporaries(root)
    return restored


def remove_temporaries(root: str) -> None:
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.name.startswith(TMP_PREFIX) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
