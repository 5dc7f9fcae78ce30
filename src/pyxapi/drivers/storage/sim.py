"""In-memory storage simulator ("sim") with the file driver's semantics, for fast ops-level tests.

Images are sparse maps of 64 KiB chunks; clones and snapshots build the same chains of hidden bases as
the file driver (see base.py), sizes are accounted the same way (thin provisioning; utilisation = chunks
really stored; SR_FULL when a write would exceed device_config "size"), and locations follow the same
naming and safety rules, so one contract suite covers both. Data moves in and out through import/export
(raw natively; qcow2 and vhd through qemu-img and a temporary file), or through the `write`/`read`
helpers that stand in for a guest.

device_config: size (bytes, default 1 TiB); any other keys are kept and matched by probe().
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid as uuidlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import qemuimg
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
    VDIExists,
    VdiFormat,
    VDIInfo,
    VDIInUse,
    VDIMissing,
    VDIReadOnly,
    VDITooLarge,
    VDITooSmall,
    check_image_format,
    check_size,
)
from .file import MAX_VIRTUAL_SIZE
from .filechain import BASE_SUFFIX, SUFFIXES
from .filegc import subtree
from .paths import check_file_name, check_uuid, uuid_of
from .transfer import local_file

CHUNK = 64 * 1024
DEFAULT_SIZE = 1024**4
_ZERO = bytes(CHUNK)


@dataclass(slots=True)
class _Node:
    name: str
    format: VdiFormat
    virtual_size: int
    backing: str | None = None
    writable: bool = True
    chunks: dict[int, bytes] = field(default_factory=dict)

    @property
    def allocated(self) -> int:
        return len(self.chunks) * CHUNK


@dataclass(slots=True)
class _SR:
    uuid: str
    device_config: dict[str, str]
    physical_size: int
    nodes: dict[str, _Node] = field(default_factory=dict)
    attached: bool = False
    uses: dict[str, list[bool]] = field(default_factory=dict)  # location -> one entry per attach (read_only)

    def used(self) -> int:
        return sum(n.allocated for n in self.nodes.values())


class SimStorageDriver:
    sr_type = "sim"
    capabilities: frozenset[str] = IMAGE_SR  # the semantics of the file SR
    configuration: Mapping[str, str] = {"size": "Simulated physical size in bytes (default 1 TiB)"}
    required_device_config: frozenset[str] = frozenset()
    sm_info = SMInfo(
        sr_type="sim",
        name="Simulated SR",
        description="In-memory storage with the semantics of the file SR, for tests",
        capabilities=capabilities,
        configuration=configuration,
        required_device_config=required_device_config,
        supported_image_formats=frozenset({"raw", "qcow2"}),
    )

    def __init__(self, default_format: VdiFormat = "qcow2") -> None:
        self.default_format: VdiFormat = default_format
        self._srs: dict[str, _SR] = {}

    # ------------------------------------------------------------------------------------------ SRs

    async def probe(self, device_config: Mapping[str, str]) -> list[ProbeResult]:
        wanted = dict(device_config)
        return [
            ProbeResult(s.uuid, dict(s.device_config), self._info(s))
            for s in self._srs.values()
            if all(s.device_config.get(k) == v for k, v in wanted.items())
        ]

    async def create_sr(self, device_config: Mapping[str, str], sr_uuid: str, size: int = 0) -> SRInfo:
        check_uuid(sr_uuid, "SR")
        if sr_uuid in self._srs:
            raise SRExists(f"SR {sr_uuid} already exists")
        try:
            physical = int(device_config.get("size") or size or DEFAULT_SIZE)
        except ValueError:
            raise BackendFailure(SMError.INVALID_ARG, "device_config:size must be an integer") from None
        sr = _SR(sr_uuid, dict(device_config), physical)
        self._srs[sr_uuid] = sr
        return self._info(sr)

    async def attach_sr(self, sr: SRHandle) -> SRInfo:
        state = self._srs.get(sr.uuid)
        if state is None:
            raise BackendFailure(SMError.SR_UNAVAILABLE, f"no simulated SR {sr.uuid}")
        state.attached = True
        return self._info(state)

    async def detach_sr(self, sr: SRHandle) -> None:
        state = self._srs.get(sr.uuid)
        if state is None:
            return
        if state.uses:
            raise SRInUse("VDIs of this SR are still attached")
        state.attached = False

    async def destroy_sr(self, sr: SRHandle) -> None:
        state = self._srs.get(sr.uuid)
        if state is None:
            return
        if state.uses:
            raise SRInUse("VDIs of this SR are still attached")
        if self._visible(state):
            raise SRNotEmpty()
        del self._srs[sr.uuid]

    async def stat_sr(self, sr: SRHandle) -> SRInfo:
        return self._info(self._sr(sr))

    async def scan(self, sr: SRHandle) -> list[VDIInfo]:
        state = self._sr(sr)
        return sorted((self._vdi_info(n) for n in self._visible(state)), key=lambda v: v.location)

    # ----------------------------------------------------------------------------------------- VDIs

    async def stat_vdi(self, sr: SRHandle, location: str) -> VDIInfo:
        return self._vdi_info(self._leaf(self._sr(sr), location))

    async def create_vdi(
        self, sr: SRHandle, vdi_uuid: str, virtual_size: int, format: VdiFormat | None = None
    ) -> VDIInfo:
        state = self._sr(sr)
        check_uuid(vdi_uuid)
        fmt = self._format(format)
        size = check_size(vdi_uuid, virtual_size, MAX_VIRTUAL_SIZE)
        node = self._add(state, _Node(f"{vdi_uuid}.{fmt}", fmt, size))
        return self._vdi_info(node)

    async def destroy_vdi(self, sr: SRHandle, location: str) -> None:
        state = self._sr(sr)
        node = self._leaf(state, location)
        self._assert_unused(state, location, "destroy")
        del state.nodes[location]
        self._collect(state, node.backing)

    async def clone_vdi(self, sr: SRHandle, location: str, new_uuid: str) -> CloneResult:
        return self._branch(self._sr(sr), location, new_uuid, snapshot=False)

    async def snapshot_vdi(self, sr: SRHandle, location: str, new_uuid: str) -> CloneResult:
        return self._branch(self._sr(sr), location, new_uuid, snapshot=True)

    async def resize_vdi(self, sr: SRHandle, location: str, new_size: int, online: bool = False) -> VDIInfo:
        state = self._sr(sr)
        node = self._leaf(state, location)
        size = check_size(location, new_size, MAX_VIRTUAL_SIZE)
        if size < node.virtual_size:
            raise VDITooSmall(location, node.virtual_size)
        if not node.writable:
            raise VDIReadOnly(location)
        if location in state.uses and not online:
            raise VDIInUse(location, "resize")
        # Online, the simulated hypervisor's block_resize takes effect at once.
        node.virtual_size = size
        return self._vdi_info(node)

    async def attach_vdi(self, sr: SRHandle, location: str, read_only: bool = False) -> AttachInfo:
        state = self._sr(sr)
        node = self._leaf(state, location)
        if not read_only and not node.writable:
            raise VDIReadOnly(location)
        uses = state.uses.get(location, [])
        if (not read_only and uses) or any(not ro for ro in uses):
            raise VDIInUse(location, "attach")
        state.uses[location] = [*uses, read_only]
        return AttachInfo(f"sim://{state.uuid}/{location}", node.format, read_only)

    async def detach_vdi(self, sr: SRHandle, location: str) -> None:
        state = self._srs.get(sr.uuid)
        if state is None or location not in state.uses:
            return
        state.uses[location].pop()
        if not state.uses[location]:
            del state.uses[location]

    async def coalesce(self, sr: SRHandle) -> list[str]:
        state = self._sr(sr)
        merged: list[str] = []
        while True:
            children: dict[str, list[str]] = {}
            for n in state.nodes.values():
                if n.backing:
                    children.setdefault(n.backing, []).append(n.name)
            candidate = next(
                (
                    (base, kids[0])
                    for base, kids in children.items()
                    if base.endswith(BASE_SUFFIX)
                    and len(kids) == 1
                    and not (subtree(children, kids[0]) & set(state.uses))
                ),
                None,
            )
            if candidate is None:
                return merged
            base, child = state.nodes.pop(candidate[0]), state.nodes[candidate[1]]
            child.chunks = {**base.chunks, **child.chunks}
            child.backing = base.backing
            merged.append(base.name)

    # --------------------------------------------------------------------------------- data transfer

    async def import_data(
        self,
        sr: SRHandle,
        location: str,
        source: DataSource,
        format: ImageFormat,
        progress: ProgressFn | None = None,
    ) -> VDIInfo:
        state = self._sr(sr)
        fmt = check_image_format(format)
        node = self._leaf(state, location)
        self._assert_unused(state, location, "import")
        if not node.writable:
            raise VDIReadOnly(location)
        chunks, virtual = await self._read_image(source, fmt, progress)
        if virtual > node.virtual_size:
            raise VDITooSmall(location, virtual)
        self._reserve(state, len(chunks) * CHUNK, freeable=node.allocated)
        node.chunks, old_backing, node.backing = chunks, node.backing, None
        self._collect(state, old_backing)
        return self._vdi_info(node)

    async def import_new_vdi(
        self,
        sr: SRHandle,
        vdi_uuid: str,
        source: DataSource,
        format: ImageFormat,
        vdi_format: VdiFormat | None = None,
        progress: ProgressFn | None = None,
    ) -> VDIInfo:
        state = self._sr(sr)
        check_uuid(vdi_uuid)
        fmt = check_image_format(format)
        target = self._format(vdi_format)
        name = f"{vdi_uuid}.{target}"
        if name in state.nodes:
            raise VDIExists(name)
        chunks, virtual = await self._read_image(source, fmt, progress)
        size = check_size(vdi_uuid, virtual, MAX_VIRTUAL_SIZE)
        self._reserve(state, len(chunks) * CHUNK)
        node = self._add(state, _Node(name, target, size, chunks=chunks))
        return self._vdi_info(node)

    async def export_data(
        self,
        sr: SRHandle,
        location: str,
        format: ImageFormat,
        dest: Path,
        progress: ProgressFn | None = None,
    ) -> int:
        state = self._sr(sr)
        fmt = check_image_format(format)
        node = self._leaf(state, location)
        if any(not ro for ro in state.uses.get(location, [])):
            raise VDIInUse(location, "export")
        if fmt == "vhd" and node.virtual_size > qemuimg.VHD_MAX_SIZE:
            raise VDITooLarge(location, qemuimg.VHD_MAX_SIZE)
        flat = dict(self._flatten(state, node))
        if fmt == "raw":
            await asyncio.to_thread(_write_raw, str(dest), flat, node.virtual_size)
        else:
            with tempfile.TemporaryDirectory(prefix="pyxapi-sim-") as tmp:
                raw = os.path.join(tmp, "disk.raw")
                await asyncio.to_thread(_write_raw, raw, flat, node.virtual_size)
                await qemuimg.convert(raw, "raw", str(dest), fmt, progress)
        if progress is not None:
            progress(1.0)
        return os.path.getsize(dest)

    async def copy_vdi(
        self,
        sr: SRHandle,
        location: str,
        dest_sr: SRHandle,
        new_uuid: str,
        progress: ProgressFn | None = None,
    ) -> VDIInfo:
        state, dest = self._sr(sr), self._sr(dest_sr)
        check_uuid(new_uuid)
        node = self._leaf(state, location)
        name = f"{new_uuid}.{node.format}"
        if name in dest.nodes:
            raise VDIExists(name)
        flat = dict(self._flatten(state, node))
        self._reserve(dest, len(flat) * CHUNK)
        copy = self._add(dest, _Node(name, node.format, node.virtual_size, chunks=flat))
        if progress is not None:
            progress(1.0)
        return self._vdi_info(copy)

    # ------------------------------------------------------------------------- guest-side test hooks

    def write(self, sr_uuid: str, location: str, offset: int, data: bytes) -> None:
        """Write into a VDI as a guest would (copy-on-write into the leaf)."""
        state = self._srs[sr_uuid]
        node = self._leaf(state, location)
        if offset < 0 or offset + len(data) > node.virtual_size:
            raise BackendFailure(SMError.EIO, "write beyond the end of the disk")
        pos = offset
        while pos < offset + len(data):
            index, within = divmod(pos, CHUNK)
            take = min(CHUNK - within, offset + len(data) - pos)
            if index not in node.chunks:
                self._reserve(state, CHUNK)
            chunk = bytearray(self._chunk(state, node, index))
            chunk[within : within + take] = data[pos - offset : pos - offset + take]
            node.chunks[index] = bytes(chunk)
            pos += take

    def read(self, sr_uuid: str, location: str, offset: int, length: int) -> bytes:
        state = self._srs[sr_uuid]
        node = self._leaf(state, location)
        out = bytearray()
        pos = offset
        while pos < offset + length:
            index, within = divmod(pos, CHUNK)
            take = min(CHUNK - within, offset + length - pos)
            out += self._chunk(state, node, index)[within : within + take]
            pos += take
        return bytes(out)

    def add_foreign_image(self, sr_uuid: str, location: str, virtual_size: int) -> None:
        """An image that appeared behind the toolstack's back (what a copied-in file is for the file SR)."""
        check_file_name(location, tuple(SUFFIXES))
        state = self._srs[sr_uuid]
        fmt: VdiFormat = "raw" if location.endswith(".raw") else "qcow2"
        self._add(state, _Node(location, fmt, check_size(location, virtual_size, MAX_VIRTUAL_SIZE)))

    # ------------------------------------------------------------------------------------- internals

    def _branch(self, state: _SR, location: str, new_uuid: str, snapshot: bool) -> CloneResult:
        check_uuid(new_uuid)
        node = self._leaf(state, location)
        new_name = f"{new_uuid}.{node.format}"
        if new_name in state.nodes:
            raise VDIExists(new_name)
        extra = {"is_a_snapshot": True, "snapshot_of": location} if snapshot else {}
        if node.format == "raw":  # as in the file SR: raw has no backing files, so copy in full
            flat = dict(self._flatten(state, node))
            self._reserve(state, len(flat) * CHUNK)
            new = self._add(state, _Node(new_name, "raw", node.virtual_size, chunks=flat))
            return CloneResult(self._vdi_info(new, **extra), self._vdi_info(node), None, False)
        base_name = f"{uuidlib.uuid4()}{BASE_SUFFIX}"
        base = _Node(base_name, "qcow2", node.virtual_size, node.backing, False, node.chunks)
        state.nodes[base_name] = base
        node.chunks, node.backing = {}, base_name
        new = self._add(state, _Node(new_name, "qcow2", node.virtual_size, base_name, node.writable))
        return CloneResult(self._vdi_info(new, **extra), self._vdi_info(node), base_name, True)

    def _sr(self, sr: SRHandle) -> _SR:
        state = self._srs.get(sr.uuid)
        if state is None or not state.attached:
            raise SRNotAttached(sr.uuid)
        return state

    def _leaf(self, state: _SR, location: str) -> _Node:
        check_file_name(location, tuple(SUFFIXES))
        node = state.nodes.get(location)
        if node is None or location.endswith(BASE_SUFFIX) or location in self._referenced(state):
            raise VDIMissing(state.uuid, location)
        return node

    def _add(self, state: _SR, node: _Node) -> _Node:
        if node.name in state.nodes:
            raise VDIExists(node.name)
        state.nodes[node.name] = node
        return node

    def _format(self, requested: str | None) -> VdiFormat:
        fmt = requested or self.default_format
        if fmt not in ("qcow2", "raw"):
            raise BackendFailure(SMError.VDI_TYPE, f"unsupported VDI format {fmt!r} (qcow2 or raw)")
        return fmt  # type: ignore[return-value]

    def _assert_unused(self, state: _SR, location: str, operation: str) -> None:
        if location in state.uses:
            raise VDIInUse(location, operation)

    def _reserve(self, state: _SR, needed: int, freeable: int = 0) -> None:
        free = state.physical_size - state.used() + max(freeable, 0)
        if needed > free:
            raise SRFull(needed, free)

    def _referenced(self, state: _SR) -> set[str]:
        return {n.backing for n in state.nodes.values() if n.backing}

    def _visible(self, state: _SR) -> list[_Node]:
        used = self._referenced(state)
        return [n for n in state.nodes.values() if not n.name.endswith(BASE_SUFFIX) and n.name not in used]

    def _chain(self, state: _SR, node: _Node) -> Iterator[_Node]:
        current: _Node | None = node
        while current is not None:
            yield current
            current = state.nodes.get(current.backing) if current.backing else None

    def _chunk(self, state: _SR, node: _Node, index: int) -> bytes:
        for layer in self._chain(state, node):
            if index in layer.chunks:
                return layer.chunks[index]
        return _ZERO

    def _flatten(self, state: _SR, node: _Node) -> Iterator[tuple[int, bytes]]:
        seen: set[int] = set()
        limit = (node.virtual_size + CHUNK - 1) // CHUNK
        for layer in self._chain(state, node):
            for index, data in layer.chunks.items():
                if index not in seen and index < limit:
                    seen.add(index)
                    yield index, data

    def _collect(self, state: _SR, start: str | None) -> None:
        current = start
        while current and current.endswith(BASE_SUFFIX) and current not in self._referenced(state):
            base = state.nodes.pop(current, None)
            current = base.backing if base else None

    async def _read_image(
        self, source: DataSource, fmt: ImageFormat, progress: ProgressFn | None
    ) -> tuple[dict[int, bytes], int]:
        with tempfile.TemporaryDirectory(prefix="pyxapi-sim-") as tmp:
            async with local_file(source, tmp, ".upload-") as path:
                virtual = await qemuimg.inspect_import(path, fmt)
                raw = path
                if fmt != "raw":
                    raw = os.path.join(tmp, "disk.raw")
                    await qemuimg.convert(path, fmt, raw, "raw", progress)
                chunks = await asyncio.to_thread(_read_raw, raw)
        return chunks, check_size("import", virtual, MAX_VIRTUAL_SIZE)

    def _info(self, state: _SR) -> SRInfo:
        return SRInfo(
            physical_size=state.physical_size,
            physical_utilisation=state.used(),
            virtual_allocation=sum(n.virtual_size for n in self._visible(state)),
            content_type="user",
        )

    def _vdi_info(self, node: _Node, **extra: object) -> VDIInfo:
        fields: dict[str, object] = {
            "location": node.name,
            "virtual_size": node.virtual_size,
            "physical_utilisation": node.allocated,
            "format": node.format,
            "read_only": not node.writable,
            "parent": node.backing,
            "uuid": uuid_of(node.name),
            "sm_config": {"image-format": node.format},
        }
        fields.update(extra)
        return VDIInfo(**fields)  # type: ignore[arg-type]


def _read_raw(path: str) -> dict[int, bytes]:
    chunks: dict[int, bytes] = {}
    with open(path, "rb") as f:
        index = 0
        while data := f.read(CHUNK):
            if data.count(0) != len(data):  # all-zero chunks are holes, as in a sparse image
                chunks[index] = data.ljust(CHUNK, b"\0")
            index += 1
    return chunks


def _write_raw(path: str, chunks: dict[int, bytes], size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for index in sorted(chunks):
            f.seek(index * CHUNK)
            f.write(chunks[index][: max(0, min(CHUNK, size - index * CHUNK))])
