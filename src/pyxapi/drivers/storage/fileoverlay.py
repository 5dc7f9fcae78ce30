"""Empty qcow2 overlays for the file SR's clones and snapshots, made without a subprocess.

Every clone or snapshot needs two empty overlays on a new base (file.py), and `qemu-img create` costs
tens of milliseconds each on a busy host: most of an O(1) clone. An empty overlay depends only on its
virtual size and its backing file's name, and the file SR's base names all have the same length
(`<uuid4>.base.qcow2`). So qemu-img makes one overlay per virtual size, on a placeholder name of that
length; later overlays of that size are its bytes with the name written in. qemu-img stays the
authority on the format (nothing of the layout is computed here), and holes stay holes, so an overlay
occupies what qemu-img's own would.
"""

from __future__ import annotations

import os
import struct
import uuid as uuidlib
from collections import OrderedDict
from dataclasses import dataclass

from . import qemuimg
from .filechain import BASE_SUFFIX

_PLACEHOLDER = f"{uuidlib.UUID(int=0)}{BASE_SUFFIX}"  # the length every base name has
_RUN = 4096  # granularity at which runs of zeros are left as holes
_KEPT = 16  # virtual sizes remembered


@dataclass(frozen=True, slots=True)
class _Template:
    length: int  # the file's length
    runs: tuple[tuple[int, bytes], ...]  # (offset, data): everything that is not zeros
    name_at: int  # where the backing file's name is written


class OverlayMaker:
    def __init__(self) -> None:
        self._templates: OrderedDict[int, _Template] = OrderedDict()

    async def create(self, path: str, virtual_size: int, base: str, work_dir: str) -> None:
        """An empty qcow2 overlay at path on `base` (a name in the same directory, qcow2). Not synced:
        the caller syncs its overlays together before renaming them into place (durable.py)."""
        if len(base) != len(_PLACEHOLDER):
            await qemuimg.create(path, "qcow2", virtual_size, base, "qcow2")
            return
        template = self._templates.get(virtual_size)
        if template is None:
            template = await self._learn(virtual_size, work_dir)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, template.length)
            for offset, data in template.runs:
                os.pwrite(fd, data, offset)
            os.pwrite(fd, base.encode(), template.name_at)
        finally:
            os.close(fd)

    async def _learn(self, virtual_size: int, work_dir: str) -> _Template:
        sample = os.path.join(work_dir, f".tmp-overlay-{uuidlib.uuid4().hex}.qcow2")
        try:
            await qemuimg.create(sample, "qcow2", virtual_size, _PLACEHOLDER, "qcow2")
            with open(sample, "rb") as f:
                raw = f.read()
        finally:
            if os.path.exists(sample):
                os.unlink(sample)
        name_at, name_len = struct.unpack(">QI", raw[8:20])
        if raw[name_at : name_at + name_len] != _PLACEHOLDER.encode():
            raise qemuimg.QemuImgError(["create"], 1, "unexpected qcow2 layout for an overlay")
        runs = tuple(
            (offset, raw[offset : offset + _RUN])
            for offset in range(0, len(raw), _RUN)
            if raw[offset : offset + _RUN].strip(b"\0")
        )
        template = _Template(len(raw), runs, name_at)
        self._templates[virtual_size] = template
        while len(self._templates) > _KEPT:
            self._templates.popitem(last=False)
        return template
