"""Live changes to qcow2 disks served by libxl's qdisk backend: new overlays (snapshots) and growing.

A qcow2 disk of a Xen guest is opened by the domain's QEMU in dom0 (the xen-block device it builds
from xenstore), whose format node QEMU names ``<vdev>-qcow2``. The same moves as the QEMU driver's
(qemu_blockdev) work there over the domain's statistics QMP socket (qdisk.stats_socket; libxl keeps
its own): each live snapshot stacks a layer ``<vdev>-s<k>`` over ``<vdev>-s<k>-file``, added with
``backing: null`` (its backing image is what QEMU already has open) and made the active layer by
blockdev-snapshot, all disks in one transaction. Growing is block_resize on the active layer; QEMU
then tells the guest's blkfront the new size through xenstore.

QEMU's xen-block only deletes the node it made when the disk is unplugged, and that fails while a
layer sits on it: release() deletes every layer and the original node after an unplug, so the same
vdev can be plugged again.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from typing import Any

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError
from qemu.qmp.qmp_client import ExecuteError

from pyxapi.drivers.hypervisor.base import DeviceError, InvalidArgument
from pyxapi.drivers.hypervisor.xen.qdisk import monitor

QMP_TIMEOUT = 30.0


async def _execute(client: QMPClient, command: str, arguments: dict[str, Any] | None = None) -> Any:
    try:
        async with asyncio.timeout(QMP_TIMEOUT):
            return await client.execute(command, arguments)
    except ExecuteError as e:
        raise DeviceError(f"{command}: {e.error_class}: {e}") from None
    except (QMPError, OSError, EOFError, TimeoutError) as e:
        raise DeviceError(f"{command}: the device model did not answer ({e})") from None


def layer_name(vdev: str, generation: int) -> str:
    return f"{vdev}-qcow2" if generation == 0 else f"{vdev}-s{generation}"


async def layers(client: QMPClient, vdev: str) -> list[int]:
    """Generations of the disk's format nodes QEMU holds, newest first (0: the plugged image)."""
    pattern = re.compile(rf"^{re.escape(vdev)}-(?:qcow2|s(\d+))$")
    found = set()
    for node in await _execute(client, "query-named-block-nodes", {"flat": True}):
        m = pattern.match(str(node.get("node-name", "")))
        if m:
            found.add(int(m.group(1) or 0))
    return sorted(found, reverse=True)


async def switch(domid: int, overlays: Sequence[tuple[str, str]]) -> None:
    """[(vdev, overlay path)]: every disk onto its new overlay at one instant; nothing on failure."""
    async with monitor(domid) as client:
        added: list[str] = []
        actions = []
        try:
            for vdev, path in overlays:
                have = await layers(client, vdev)
                if not have:
                    raise DeviceError(f"{vdev} is not a qcow2 disk of the running domain")
                name = layer_name(vdev, have[0] + 1)
                await _execute(
                    client, "blockdev-add", {"node-name": f"{name}-file", "driver": "file", "filename": path}
                )
                added.append(f"{name}-file")
                await _execute(
                    client,
                    "blockdev-add",
                    {"node-name": name, "driver": "qcow2", "file": f"{name}-file", "backing": None},
                )
                added.append(name)
                actions.append(
                    {"type": "blockdev-snapshot", "data": {"node": layer_name(vdev, have[0]), "overlay": name}}
                )
            await _execute(client, "transaction", {"actions": actions})
        except DeviceError:
            for name in reversed(added):  # best effort: the switch already failed, which is what counts
                with contextlib.suppress(DeviceError):
                    await _execute(client, "blockdev-del", {"node-name": name})
            raise


async def resize(domid: int, vdev: str, size: int) -> None:
    async with monitor(domid) as client:
        have = await layers(client, vdev)
        if not have:
            raise DeviceError(f"{vdev} is not a qcow2 disk of the running domain")
        top = layer_name(vdev, have[0])
        current = 0
        for block in await _execute(client, "query-block"):
            inserted = block.get("inserted") or {}
            if inserted.get("node-name") == top:
                current = int(inserted.get("image", {}).get("virtual-size", 0))
        if size < current:
            raise InvalidArgument(f"{vdev}: {size} bytes is smaller than its {current} bytes")
        if size > current:
            await _execute(client, "block_resize", {"node-name": top, "size": size})


async def release(domid: int, vdev: str) -> None:
    """After an unplug: delete what is left of the disk's layers, newest first."""
    with contextlib.suppress(DeviceError):
        async with monitor(domid) as client:
            for generation in await layers(client, vdev):
                for name in (layer_name(vdev, generation), f"{layer_name(vdev, generation)}-file"):
                    with contextlib.suppress(DeviceError):
                        await _execute(client, "blockdev-del", {"node-name": name})
