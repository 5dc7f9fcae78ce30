"""VM.revert: the VM a snapshot or checkpoint was taken of goes back to it, as xapi does.

The VM is halted first (hard, whatever it was doing). Its disks are replaced by O(1) clones of the
snapshot's disks, and its VBDs and VIFs by copies of the snapshot's (MACs kept); the disks it had that
the snapshot has a counterpart of are destroyed, the others stay as unattached VDIs. The snapshot
VDIs of a replaced disk now hang off its replacement (snapshot_of), so the VDI lineage survives any
number of reverts. The VM's configuration comes back from the snapshot, its parent becomes the
snapshot. Reverting to a checkpoint leaves the VM Suspended, with a clone of the checkpoint's memory
image as its suspend_VDI and the domain spec the image was written with: VM.resume continues the guest
exactly where it was checkpointed. The snapshot's own disks are never touched, so one can revert to
it again and again. If the VM is gone, it is made again from the snapshot, with its old uuid.

Clones are made before anything of the VM is removed: a revert that fails part-way leaves the VM's
disks in place (and the VM Halted, as xapi does).
"""

from __future__ import annotations

import html
import json
import logging
import re
from dataclasses import replace
from typing import Any

from pyxapi.api.dispatch import Call, Handler
from pyxapi.context import Context
from pyxapi.db.store import NULL_REF, Store, new_uuid
from pyxapi.drivers.hypervisor.base import DomainSpec
from pyxapi.engine.operations import refresh_vm_allowed, running
from pyxapi.model.errors import ApiError
from pyxapi.ops import vdi as vdi_ops
from pyxapi.ops import vm as vm_ops
from pyxapi.ops import vm_clone, vm_state, vm_suspend
from pyxapi.ops.storage_runtime import uuid_taken
from pyxapi.ops.vm_snapshot import checkpoint_spec_path

log = logging.getLogger(__name__)

# VM fields a revert never takes from the snapshot (identity, lineage, runtime state, devices).
_KEEP = frozenset(
    {
        "uuid",
        "name_label",
        "is_a_template",
        "is_default_template",
        "is_a_snapshot",
        "snapshot_of",
        "snapshot_time",
        "snapshot_info",
        "snapshot_metadata",
        "transportable_snapshot_id",
        "is_vmss_snapshot",
        "suspend_VDI",
        "affinity",
        "tags",
        "protection_policy",
        "snapshot_schedule",
        "appliance",
        "metrics",
        "guest_metrics",
    }
)
# Errors a failed revert passes on as they are; any other becomes VM_REVERT_FAILED (xapi's list).
_PASSED_ON = frozenset({"SR_FULL", "SR_BACKEND_FAILURE_44", "SR_BACKEND_FAILURE_109", "VDI_INCOMPATIBLE_TYPE"})
_METADATA_UUID = re.compile(r"<member><name>uuid</name><value>([0-9a-fA-F-]{36})</value></member>")
_METADATA_NAME = re.compile(r"<member><name>name_label</name><value>([^<]*)</value></member>")


async def revert(call: Call, snapshot: str) -> None:
    ctx = call.ctx
    store = ctx.store
    snap = store.get("VM", snapshot)
    if not snap["is_a_snapshot"]:
        raise ApiError("REVERT_ONLY_ALLOWED_ON_SNAPSHOT")
    with running(store, snapshot, "revert", call.task_ref):
        vm = snap["snapshot_of"]
        if vm == NULL_REF or not store.exists("VM", vm):
            vm = _recreate(ctx, snapshot)
        with running(store, vm, "reverting"):
            inner = replace(call, task_ref=None)  # its own marks: the outer ones stay until the end
            try:
                if store.get("VM", vm)["power_state"] != "Halted":
                    await vm_ops.hard_shutdown(inner, vm)
                await _swap_devices(inner, snapshot, vm)
                _revert_fields(ctx, snapshot, vm)
            except ApiError as e:
                if store.get("VM", vm)["power_state"] == "Halted":
                    await vm_suspend.discard(ctx, vm)  # no half-restored memory image stays attached
                if e.code in _PASSED_ON:
                    raise
                log.warning("revert of VM %s to %s failed: %s", vm, snapshot, e.description)
                raise ApiError("VM_REVERT_FAILED", vm, snapshot) from None
        _set_progress(call, 1.0)


def _set_progress(call: Call, value: float) -> None:
    if call.task_ref is not None:
        call.ctx.tasks.set_progress(call.task_ref, value)


async def _swap_devices(call: Call, snapshot: str, vm: str) -> None:
    ctx = call.ctx
    store = ctx.store
    snap = store.get("VM", snapshot)
    snap_disks = [
        vbd
        for vbd in snap["VBDs"]
        if (b := store.get("VBD", vbd))["type"] == "Disk" and not b["empty"] and store.exists("VDI", b["VDI"])
    ]
    clones: dict[str, str] = {}
    suspend = NULL_REF
    try:
        for vbd in snap_disks:
            clones[vbd] = await vdi_ops.clone(call, store.get("VBD", vbd)["VDI"], {})
        if snap["suspend_VDI"] != NULL_REF and store.exists("VDI", snap["suspend_VDI"]):
            suspend = await vdi_ops.clone(call, snap["suspend_VDI"], {})
    except BaseException:
        await vm_clone.discard_vdis(call, [*clones.values(), *([suspend] if suspend != NULL_REF else [])])
        raise
    _set_progress(call, 0.5)
    rec = store.get("VM", vm)
    replaced = []  # the VM's disks the snapshot has a counterpart of
    with store.transaction():
        for vbd, clone in clones.items():
            replaced += _adopt_lineage(store, store.get("VBD", vbd)["VDI"], clone)
        for vbd in rec["VBDs"]:
            metrics = store.get("VBD", vbd)["metrics"]
            store.destroy("VBD", vbd)
            if metrics != NULL_REF and store.exists("VBD_metrics", metrics):
                store.destroy("VBD_metrics", metrics)
        for vif in rec["VIFs"]:
            store.destroy("VIF", vif)
        for vbd in snap["VBDs"]:
            b = store.get("VBD", vbd)
            if vbd in clones or b["type"] == "CD" or b["empty"]:
                vm_clone.copy_vbd(store, vbd, vm, clones.get(vbd, b["VDI"] if b["type"] == "CD" else NULL_REF))
        for vif in snap["VIFs"]:
            vm_clone.copy_vif(store, vif, vm, preserve_mac=True)
        store.set_field("VM", vm, "suspend_VDI", suspend)
    old_suspend = rec["suspend_VDI"]
    gone = [v for v in {*replaced, old_suspend} if v != NULL_REF and store.exists("VDI", v)]
    await vm_clone.discard_vdis(call, gone)
    if snap["power_state"] == "Suspended":
        _restore_spec(ctx, snapshot, vm)


def _adopt_lineage(store: Store, snap_disk: str, clone: str) -> list[str]:
    """The snapshot VDIs of the disk the VM had become snapshots of its replacement `clone`; returns
    that disk (to be destroyed) when the VM still has it."""
    old = store.get("VDI", snap_disk)["snapshot_of"]
    if old == NULL_REF or not store.exists("VDI", old):
        store.set_field("VDI", snap_disk, "snapshot_of", clone)
        return []
    for sibling in list(store.get("VDI", old)["snapshots"]):
        store.set_field("VDI", sibling, "snapshot_of", clone)
    return [str(old)]


def _restore_spec(ctx: Context, snapshot: str, vm: str) -> None:
    """The domain spec the checkpoint's memory image was written with becomes the VM's (resume
    replaces the disk paths with the new clones as it attaches them)."""
    path = checkpoint_spec_path(ctx, ctx.store.get("VM", snapshot)["uuid"])
    try:
        spec = DomainSpec.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise ApiError("VM_REVERT_FAILED", vm, snapshot) from e
    rec = ctx.store.get("VM", vm)
    vm_state.save_spec(ctx, replace(spec, uuid=rec["uuid"], name=rec["name_label"]))


def _revert_fields(ctx: Context, snapshot: str, vm: str) -> None:
    store = ctx.store
    snap = store.get("VM", snapshot)
    fields = ctx.model.classes["VM"].fields
    changes: dict[str, Any] = {
        k: v for k, v in snap.items() if k in fields and fields[k].qualifier in ("RW", "StaticRO") and k not in _KEEP
    }
    changes.update({"parent": snapshot, "ha_always_run": False, "power_state": snap["power_state"]})
    with store.transaction():
        store.update("VM", vm, changes)
        old = store.get("VM", vm)["guest_metrics"]
        if old != NULL_REF and store.exists("VM_guest_metrics", old):
            store.destroy("VM_guest_metrics", old)
        copied = NULL_REF
        if snap["guest_metrics"] != NULL_REF and store.exists("VM_guest_metrics", snap["guest_metrics"]):
            fields_gm = {k: v for k, v in store.get("VM_guest_metrics", snap["guest_metrics"]).items() if k != "uuid"}
            copied = store.create("VM_guest_metrics", {**fields_gm, "live": False})
        store.set_field("VM", vm, "guest_metrics", copied)
        refresh_vm_allowed(store, vm)
        refresh_vm_allowed(store, snapshot)


def _recreate(ctx: Context, snapshot: str) -> str:
    """The VM a snapshot was taken of, made again after it was destroyed (xapi's
    create_vm_from_snapshot): its old uuid from the snapshot metadata; every snapshot of it is
    attached to it again."""
    store = ctx.store
    snap = store.get("VM", snapshot)
    m = _METADATA_UUID.search(snap["snapshot_metadata"])
    old_uuid = m.group(1).lower() if m else ""
    uuid = old_uuid if old_uuid and not uuid_taken(store, "VM", old_uuid) else new_uuid()
    named = _METADATA_NAME.search(snap["snapshot_metadata"])
    name = html.unescape(named.group(1)) if named else snap["name_label"]
    extra = {"uuid": uuid, "is_a_template": False, "is_a_snapshot": False}
    with store.transaction():
        vm = vm_clone.copy_vm(store, snapshot, name, {}, extra)
        for other, rec in store.items("VM"):
            if not rec["is_a_snapshot"] or store.exists("VM", rec["snapshot_of"]):
                continue
            found = _METADATA_UUID.search(rec["snapshot_metadata"])
            if rec["snapshot_of"] == snap["snapshot_of"] != NULL_REF or (
                found and old_uuid and found.group(1).lower() == old_uuid
            ):
                store.set_field("VM", other, "snapshot_of", vm)
        store.set_field("VM", snapshot, "snapshot_of", vm)
    return vm


MESSAGES: dict[str, Handler] = {"revert": revert}
