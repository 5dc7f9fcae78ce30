"""Live changes to a running QEMU's disk images: switching to new overlays (snapshots), growing,
and removing every layer on unplug.

Layers. A disk starts as a protocol node `disk<n>-file` under a format node `disk<n>`
(qemu_cmdline.blockdev_nodes). Each live snapshot stacks one more layer, `disk<n>-s<k>` over
`disk<n>-s<k>-file`, added with blockdev-add and `backing: null` (its backing image is the node QEMU
already has open, possibly under a file name that has since been renamed to a hidden base), then made
the disk's active layer by blockdev-snapshot, which also flushes the old layer and drops its write
permission. All disks switch inside one QMP transaction, so a VM's disks are snapshotted at the same
instant. Layers are found again from QEMU's own node list, so nothing has to be remembered for a
daemon restart (adopt).

Why blockdev-snapshot and not blockdev-snapshot-sync or blockdev-reopen: -sync would create the
overlay itself with the old node's (now stale) file name as backing; reopen cannot put a node under
another. Here the file SR prepares the overlay with the right backing name and QEMU only opens it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pyxapi.drivers.hypervisor import qemu_cmdline as cmd
from pyxapi.drivers.hypervisor.base import DeviceError, DiskSpec, InvalidArgument
from pyxapi.drivers.hypervisor.qmp import Monitor, QmpCommandError

if TYPE_CHECKING:
    from pyxapi.drivers.hypervisor.qemu_domain import QemuDomain


def layer_node(device: int, generation: int) -> str:
    """Format node name of a disk's layer: generation 0 is the image it was plugged with."""
    base = cmd.disk_node(device)
    return base if generation == 0 else f"{base}-s{generation}"


async def layers(mon: Monitor, device: int) -> list[int]:
    """Generations of the disk's format nodes QEMU holds, newest first."""
    pattern = re.compile(rf"^{re.escape(cmd.disk_node(device))}(?:-s(\d+))?$")
    found = []
    for node in await mon.execute("query-named-block-nodes", {"flat": True}):
        m = pattern.match(str(node.get("node-name", "")))
        if m:
            found.append(int(m.group(1) or 0))
    return sorted(set(found), reverse=True)


async def removal_order(mon: Monitor, device: int) -> list[str]:
    """Every node of the disk in the order blockdev-del accepts them: each layer's format node
    before its protocol node, the newest layer first (an overlay holds a reference on its backing)."""
    names = []
    for generation in await layers(mon, device):
        names += [layer_node(device, generation), f"{layer_node(device, generation)}-file"]
    return names


async def _active(mon: Monitor, device: int) -> tuple[str, int]:
    """(node name, virtual size) of the layer the guest's device writes to."""
    suffix = f"/{cmd.disk_id(device)}/virtio-backend"
    for block in await mon.execute("query-block"):
        inserted = block.get("inserted")
        if str(block.get("qdev", "")).endswith(suffix) and inserted:
            return str(inserted["node-name"]), int(inserted.get("image", {}).get("virtual-size", 0))
    raise DeviceError(f"disk {device} has no image in the running domain")


def _check(d: QemuDomain, disks: Sequence[DiskSpec]) -> None:
    current = {x.device: x for x in d.spec.disks}
    if len({x.device for x in disks}) != len(disks):
        raise InvalidArgument("a disk may be switched only once per call")
    for disk in disks:
        have = current.get(disk.device)
        if have is None or have.is_cdrom or disk.is_cdrom:
            raise DeviceError(f"no disk device {disk.device} to switch")
        if disk.format != "qcow2" or disk.path is None:
            raise DeviceError(f"disk {disk.device}: only a qcow2 overlay can take over a running disk")


def _overlay_nodes(disk: DiskSpec, name: str) -> list[dict[str, Any]]:
    assert disk.path is not None
    return [
        cmd.protocol_node(disk.path, f"{name}-file", False),
        {"node-name": name, "driver": "qcow2", "file": f"{name}-file", "read-only": False, "backing": None},
    ]


async def switch_disks(d: QemuDomain, disks: Sequence[DiskSpec]) -> None:
    """See LiveDiskDriver.switch_disks. All or nothing: on failure the added nodes are deleted."""
    _check(d, disks)
    mon = d.mon
    added: list[str] = []
    actions = []
    try:
        for disk in disks:
            top, _ = await _active(mon, disk.device)
            name = layer_node(disk.device, max(await layers(mon, disk.device), default=0) + 1)
            for node in _overlay_nodes(disk, name):
                await mon.execute("blockdev-add", node)
                added.append(node["node-name"])
            actions.append({"type": "blockdev-snapshot", "data": {"node": top, "overlay": name}})
        await mon.execute("transaction", {"actions": actions})
    except QmpCommandError as e:
        for name in reversed(added):
            # Best effort: the switch already failed, and that is what the caller hears about.
            with contextlib.suppress(QmpCommandError):
                await mon.execute("blockdev-del", {"node-name": name})
        raise DeviceError(f"live disk switch: {e.desc}") from e
    by_device = {x.device: x for x in disks}
    d.spec = replace(
        d.spec,
        disks=tuple(replace(x, path=by_device[x.device].path) if x.device in by_device else x for x in d.spec.disks),
    )
    d.save()


async def resize_disk(d: QemuDomain, device: int, size: int) -> None:
    disk = next((x for x in d.spec.disks if x.device == device and not x.is_cdrom), None)
    if disk is None:
        raise DeviceError(f"no disk device {device}")
    if disk.read_only:
        raise DeviceError(f"disk {device} is read-only")
    top, current = await _active(d.mon, device)
    if size < current:
        raise InvalidArgument(f"disk {device}: {size} bytes is smaller than its {current} bytes")
    if size == current:
        return
    try:
        await d.mon.execute("block_resize", {"node-name": top, "size": size})
    except QmpCommandError as e:
        raise DeviceError(f"disk {device} resize: {e.desc}") from e
