"""Disks a running guest is writing: their snapshots and clones, and growing them online.

The file SR snapshots a disk by renaming its image to a hidden read-only base and putting fresh
overlays in its place (drivers/storage/file.py). A running QEMU still has the old image open, so it
goes on writing what is now the base until the hypervisor switches the disk onto the new overlay
(switch_disks, one QMP transaction for all the disks of a domain). That switch, not the rename, is the
snapshot's instant: whatever the guest wrote before it is in the base, which the snapshot and the disk
both read; whatever it writes afterwards is in the disk's own overlay. So nothing has to pause the
guest for qcow2 disks. Raw images cannot carry an overlay and are copied in full: the guest's vCPUs are
paused meanwhile, so the copy is of one instant too.

If the switch fails, the new image would share a base the guest is still writing: it is destroyed
again. The disk itself stays consistent (its empty overlay over the base the guest writes), and the
next snapshot simply switches from the node the guest really has open.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from pyxapi.context import Context
from pyxapi.drivers.hypervisor.base import Capability, DiskSpec, DomainState, live_disk_driver
from pyxapi.model.errors import INTERNAL_ERROR, ApiError
from pyxapi.ops import storage_rules as rules
from pyxapi.ops import vm_state
from pyxapi.ops.sr import runtime
from pyxapi.ops.storage_runtime import device_number, storage_errors
from pyxapi.ops.vm import driver_errors
from pyxapi.ops.vm_state import hypervisor

log = logging.getLogger(__name__)

LIVE_STATES = ("Running", "Paused")


@dataclass(frozen=True, slots=True)
class LiveDisk:
    """A VDI a domain has open for writing, and how that domain opened it."""

    vm: str
    domain: str  # the VM's uuid, which names its domain
    disk: DiskSpec


@dataclass(frozen=True, slots=True)
class Switch:
    """A snapshot or clone of a live disk, made on the storage, not yet taken over by the domain."""

    live: LiveDisk
    new_vdi: str


def live_disk(ctx: Context, vdi: str) -> LiveDisk | None:
    """The running (or paused) domain writing this VDI, if any."""
    store = ctx.store
    for _, vbd in rules.active_vbds(store, vdi):
        if vbd["mode"] != "RW" or vbd["type"] == "CD":
            continue
        vm = store.find("VM", vbd["VM"])
        # The control domain's VBDs are the toolstack's own (HTTP transfers), not a guest's disk.
        if vm is None or vm["power_state"] not in LIVE_STATES or vm["is_control_domain"]:
            continue
        device = device_number(vbd)
        spec = vm_state.load_spec(ctx, vm["uuid"])
        disk = next((d for d in spec.disks if d.device == device), None) if spec else None
        if disk is None:
            raise ApiError(INTERNAL_ERROR, f"VM {vm['uuid']} has no record of how its disk {device} is open")
        return LiveDisk(str(vbd["VM"]), str(vm["uuid"]), disk)
    return None


@contextlib.asynccontextmanager
async def paused(ctx: Context, vm: str, domain: str) -> AsyncIterator[None]:
    """The domain's vCPUs stopped for the block (a domain already paused is left paused)."""
    driver = hypervisor(ctx)
    async with driver_errors(vm):
        was_running = await driver.state(domain) is DomainState.RUNNING
        if was_running:
            await driver.pause(domain)
    try:
        yield
    finally:
        if was_running:
            async with driver_errors(vm):
                await driver.unpause(domain)


@contextlib.asynccontextmanager
async def quiet_if_copied(ctx: Context, live: LiveDisk | None) -> AsyncIterator[None]:
    """Around a snapshot or clone: a live raw disk is copied in full, with the guest paused."""
    if live is None or live.disk.format != "raw":
        yield
        return
    async with paused(ctx, live.vm, live.domain):
        yield


async def switch(ctx: Context, switches: Sequence[Switch]) -> None:
    """Move each domain's disks onto their new overlays, one atomic switch per domain. On failure
    every new VDI not yet taken over is destroyed (it would share a base the guest still writes)."""
    by_domain: dict[str, list[Switch]] = {}
    for s in switches:
        by_domain.setdefault(s.live.domain, []).append(s)
    pending = list(switches)
    for domain, group in by_domain.items():
        vm = group[0].live.vm
        try:
            async with driver_errors(vm):
                driver = live_disk_driver(hypervisor(ctx), Capability.LIVE_DISK_SNAPSHOT)
                await driver.switch_disks(domain, [s.live.disk for s in group])
        except BaseException:
            for s in pending:
                await _discard(ctx, s.new_vdi)
            raise
        pending = [s for s in pending if s not in group]


async def grow(ctx: Context, live: LiveDisk, size: int) -> None:
    """VDI.resize_online of a disk a domain is using: only the hypervisor may grow an open image."""
    async with driver_errors(live.vm):
        driver = live_disk_driver(hypervisor(ctx), Capability.DISK_RESIZE_ONLINE)
        await driver.resize_disk(live.domain, live.disk.device, size)


async def _discard(ctx: Context, vdi: str) -> None:
    store = ctx.store
    rec = store.find("VDI", vdi)
    if rec is None:
        return
    try:
        driver, handle = await runtime(ctx).sr(rec["SR"])
        with storage_errors(store, rec["SR"], vdi):
            await driver.destroy_vdi(handle, rec["location"])
    except ApiError as e:
        log.warning("could not remove VDI %s after a failed live switch: %s", rec["uuid"], e.description)
        return
    with store.transaction():
        store.destroy("VDI", vdi)
        rules.refresh_sr(store, rec["SR"])
