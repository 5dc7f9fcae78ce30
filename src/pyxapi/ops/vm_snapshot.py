"""VM.snapshot and VM.checkpoint (VM.revert is in vm_snapshot_revert.py), as xapi makes them.

A snapshot is a new VM record, a template that is also marked is_a_snapshot, with snapshot_of,
snapshot_time, snapshot_info (the power state it was taken in, "crash_consistent") and
snapshot_metadata (the VM's own record then, as an XML-RPC value, like xapi). Its VBDs hold VDI
snapshots of the VM's disks (CD drives keep their ISO), its VIFs keep the VM's MACs. The tree of
snapshots is kept in `parent`: a new snapshot takes the VM's parent and becomes the VM's parent, so
VM.children / VM.parent walk from the oldest snapshot to the VM.

Disks are snapshotted crash-consistently whatever the power state: for a running guest, every disk
switches onto its new overlay in one hypervisor transaction (vm_snapshot_disks.py), so all of them
show the same instant. A checkpoint also keeps the memory: the guest is paused, its disks are
snapshotted, its memory and device state are written to a new suspend VDI (QEMU's migration stream),
and it continues; the checkpoint is Suspended with that VDI as its suspend_VDI, and the domain spec
it ran with is kept beside it for a later revert and resume.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pyxapi.api.dispatch import Call, Handler
from pyxapi.context import Context
from pyxapi.db.store import NULL_REF, Store
from pyxapi.drivers.hypervisor.base import Capability, DomainState, HypervisorError, live_disk_driver
from pyxapi.engine.operations import refresh_vm_allowed, running
from pyxapi.model.errors import ApiError
from pyxapi.model.types import Record
from pyxapi.ops import vdi as vdi_ops
from pyxapi.ops import vm_clone, vm_state, vm_suspend
from pyxapi.ops import vm_snapshot_disks as live
from pyxapi.ops.vm import driver_errors
from pyxapi.ops.vm_state import hypervisor
from pyxapi.wire.marshal import now_datetime
from pyxapi.wire.xmlwrite import value_xml

log = logging.getLogger(__name__)

POWER_STATE_AT_SNAPSHOT = "power-state-at-snapshot"
DISK_SNAPSHOT_TYPE = "disk-snapshot-type"
CRASH_CONSISTENT = "crash_consistent"


def snapshot_vbds(store: Store, rec: dict[str, Any], ignore: set[str]) -> list[str]:
    """The VBDs whose disks a snapshot takes: every disk but those in `ignore` (CDs keep their ISO)."""
    out = []
    for vbd in rec["VBDs"]:
        b = store.get("VBD", vbd)
        if b["type"] != "CD" and not b["empty"] and b["VDI"] != NULL_REF and b["VDI"] not in ignore:
            out.append(str(vbd))
    return out


async def snapshot_disks(call: Call, vbds: list[str]) -> dict[str, str]:
    """VBD -> snapshot VDI for each VBD; a running domain switches all its disks at one instant.
    All or nothing: on failure the snapshots made so far are destroyed."""
    store = call.ctx.store
    made: dict[str, str] = {}
    pending: list[live.Switch] = []
    try:
        for vbd in vbds:
            made[vbd] = await vdi_ops.branch(call, store.get("VBD", vbd)["VDI"], "snapshot", pending)
        await live.switch(call.ctx, pending)
    except BaseException:
        await vm_clone.discard_vdis(call, [v for v in made.values() if store.exists("VDI", v)])
        raise
    return made


def metadata(ctx: Context, rec: dict[str, Any]) -> str:
    """snapshot_metadata: the VM's record as an XML-RPC value, as xapi serialises it."""
    return value_xml(ctx.marshal.encode(rec, Record("VM"), "xml"))


def record_snapshot(
    ctx: Context, vm: str, new_name: str, disks: dict[str, str], power_state: str, suspend_vdi: str
) -> str:
    """The snapshot VM record, its VBDs and VIFs; it becomes the VM's parent."""
    store = ctx.store
    rec = store.get("VM", vm)
    extra = {
        "is_a_template": True,
        "is_a_snapshot": True,
        "snapshot_of": vm,
        "snapshot_time": now_datetime(),
        "snapshot_info": {POWER_STATE_AT_SNAPSHOT: rec["power_state"], DISK_SNAPSHOT_TYPE: CRASH_CONSISTENT},
        "snapshot_metadata": metadata(ctx, rec),
        "parent": rec["parent"],
        "power_state": power_state,
        "suspend_VDI": suspend_vdi,
    }
    with store.transaction():
        snap = vm_clone.copy_vm(store, vm, new_name, disks, extra, preserve_macs=True)
        for vbd in store.get("VM", snap)["VBDs"]:
            b = store.get("VBD", vbd)
            if b["type"] == "Disk" and "owner" not in b["other_config"]:
                # xapi: a snapshot owns its disks, whoever owned the originals (CA-58405).
                store.set_field("VBD", vbd, "other_config", {**b["other_config"], "owner": ""})
        guest = rec["guest_metrics"]
        if guest != NULL_REF and store.exists("VM_guest_metrics", guest):
            fields = {k: v for k, v in store.get("VM_guest_metrics", guest).items() if k != "uuid"}
            store.set_field("VM", snap, "guest_metrics", store.create("VM_guest_metrics", fields))
        store.set_field("VM", vm, "parent", snap)
        refresh_vm_allowed(store, snap)
    return snap


async def snapshot(call: Call, vm: str, new_name: str, ignore_vdis: list[str]) -> str:
    store = call.ctx.store
    with running(store, vm, "snapshot", call.task_ref):
        rec = store.get("VM", vm)
        disks = await snapshot_disks(call, snapshot_vbds(store, rec, set(ignore_vdis)))
        try:
            return record_snapshot(call.ctx, vm, new_name, disks, "Halted", NULL_REF)
        except BaseException:
            await vm_clone.discard_vdis(call, list(disks.values()))
            raise


def checkpoint_spec_path(ctx: Context, snapshot_uuid: str) -> Path:
    """Where a checkpoint keeps the domain spec its memory image needs (VM.destroy removes it)."""
    return vm_state.spec_path(ctx, snapshot_uuid)


async def _memory_image(call: Call, vm: str, domain: str) -> str:
    """A new suspend VDI holding the paused domain's memory; VM_CHECKPOINT_SUSPEND_FAILED if the
    hypervisor cannot write it."""
    ctx = call.ctx
    image, path = await vm_suspend.new_image(ctx, vm)
    try:
        async with driver_errors(vm):
            driver = live_disk_driver(hypervisor(ctx), Capability.CHECKPOINT)
            await driver.save_memory(domain, path)
    except BaseException as e:
        await vm_suspend.release_image(ctx, image)
        await vm_clone.discard_vdis(call, [image])
        if isinstance(e, ApiError) and e.code == "OPERATION_NOT_ALLOWED":
            raise
        if isinstance(e, ApiError | HypervisorError):
            log.warning("checkpoint of VM %s: saving its memory failed: %s", vm, e)
            raise ApiError("VM_CHECKPOINT_SUSPEND_FAILED", vm) from None
        raise
    await vm_suspend.release_image(ctx, image)
    return image


async def _checkpoint_running(call: Call, vm: str, vbds: list[str]) -> tuple[dict[str, str], str]:
    """Pause, snapshot the disks, save the memory, continue: disks and memory of one instant.

    The first failure is the one the client gets, as with xapi (which only resumes a checkpoint it
    did suspend): when saving the memory fails because the domain is gone, continuing it fails too,
    but the error is VM_CHECKPOINT_SUSPEND_FAILED, not VM_CHECKPOINT_RESUME_FAILED. Whatever was
    made is discarded exactly once; a domain that is gone is settled by the monitor (Halted, per
    actions_after_crash) once the checkpoint is over (engine.vm_exits)."""
    ctx = call.ctx
    domain = ctx.store.get("VM", vm)["uuid"]
    driver = hypervisor(ctx)
    async with driver_errors(vm):
        was_running = await driver.state(domain) is DomainState.RUNNING
        if was_running:
            await driver.pause(domain)
    disks: dict[str, str] = {}
    try:
        disks = await snapshot_disks(call, vbds)  # discards its own partial work on failure
        image = await _memory_image(call, vm, domain)  # likewise
    except BaseException:
        try:
            if was_running:
                await _continue_after_failure(call, vm, domain)
        finally:
            await vm_clone.discard_vdis(call, list(disks.values()))
        raise
    if was_running:
        try:
            async with driver_errors(vm):
                await driver.unpause(domain)
        except ApiError as e:
            log.warning("checkpoint of VM %s: the guest could not be continued: %s", vm, e.description)
            await vm_clone.discard_vdis(call, [*disks.values(), image])
            raise ApiError("VM_CHECKPOINT_RESUME_FAILED", vm) from None
    return disks, image


async def _continue_after_failure(call: Call, vm: str, domain: str) -> None:
    """After a failed checkpoint, let the guest run on if it still can; a domain that cannot be
    continued (it is gone) does not replace the failure already being reported."""
    try:
        async with driver_errors(vm):
            await hypervisor(call.ctx).unpause(domain)
    except ApiError as e:
        log.warning("checkpoint of VM %s failed, and the guest could not be continued: %s", vm, e.description)


async def checkpoint(call: Call, vm: str, new_name: str) -> str:
    ctx = call.ctx
    store = ctx.store
    with running(store, vm, "checkpoint", call.task_ref):
        rec = store.get("VM", vm)
        spec = vm_state.load_spec(ctx, rec["uuid"])
        if spec is None:
            raise ApiError("VM_CHECKPOINT_SUSPEND_FAILED", vm)
        vbds = snapshot_vbds(store, rec, set())
        if rec["power_state"] == "Suspended":
            disks = await snapshot_disks(call, vbds)
            try:
                image = await vdi_ops.clone(call, vm_suspend_vdi(call, vm), {})
            except BaseException:
                await vm_clone.discard_vdis(call, list(disks.values()))
                raise
        else:
            disks, image = await _checkpoint_running(call, vm, vbds)
        try:
            snap = record_snapshot(ctx, vm, new_name, disks, "Suspended", image)
            store.set_field("VDI", image, "name_label", f"Suspend image for {new_name}")
            path = checkpoint_spec_path(ctx, store.get("VM", snap)["uuid"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(spec.to_dict()))
        except BaseException:
            await vm_clone.discard_vdis(call, [*disks.values(), image])
            raise
        return snap


def vm_suspend_vdi(call: Call, vm: str) -> str:
    vdi = call.ctx.store.get("VM", vm)["suspend_VDI"]
    if vdi == NULL_REF or not call.ctx.store.exists("VDI", vdi):
        raise ApiError("VM_HAS_NO_SUSPEND_VDI", vm)
    return str(vdi)


def set_is_a_template(call: Call, self: str, value: bool) -> None:
    """true: the VM becomes a template (it must be halted: make_into_template); false: a VM again,
    its install time recorded, as xapi does."""
    store = call.ctx.store
    if value:
        with running(store, self, "make_into_template", call.task_ref):
            store.set_field("VM", self, "is_a_template", True)
        refresh_vm_allowed(store, self)
        return
    with store.transaction():
        store.set_field("VM", self, "is_a_template", False)
        metrics = store.get("VM", self)["metrics"]
        if metrics != NULL_REF and store.exists("VM_metrics", metrics):
            store.set_field("VM_metrics", metrics, "install_time", now_datetime())
        refresh_vm_allowed(store, self)


def update_snapshot_metadata(
    call: Call, vm: str, snapshot_of: str, snapshot_time: str, transportable_snapshot_id: str
) -> None:
    store = call.ctx.store
    with store.transaction():
        store.update(
            "VM",
            vm,
            {
                "snapshot_of": snapshot_of,
                "snapshot_time": snapshot_time,
                "transportable_snapshot_id": transportable_snapshot_id,
            },
        )


MESSAGES: dict[str, Handler] = {
    "snapshot": snapshot,
    "checkpoint": checkpoint,
    "set_is_a_template": set_is_a_template,
    "update_snapshot_metadata": update_snapshot_metadata,
}
