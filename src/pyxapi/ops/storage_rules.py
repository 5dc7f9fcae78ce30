"""Which SR / VDI / VBD operation is allowed when, and the operation marks, from the records alone.

xapi's rules (xapi_sr.ml, xapi_vdi.ml, xapi_vbd_helpers.ml) as small functions: each returns the
error the operation would fail with now, or None. `allowed_operations` is every operation whose
check passes; handlers raise the same error, so the field and the behaviour cannot disagree.
SM capabilities come from the SM records (one per driver type), so no driver is consulted here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from pyxapi.db.store import NULL_REF, Store, new_ref
from pyxapi.model.errors import OPERATION_NOT_ALLOWED, ApiError

# VDI operation -> the SM capability it needs (xapi's sm_cap_table and check_operation_error).
VDI_CAPABILITY = {
    "destroy": "VDI_DELETE",
    "resize": "VDI_RESIZE",
    "resize_online": "VDI_RESIZE_ONLINE",
    "update": "VDI_UPDATE",
    "clone": "VDI_CLONE",
    "snapshot": "VDI_SNAPSHOT",
}
# What may run while the VDI is attached to a running VM (xapi: operation_can_be_performed_live).
VDI_LIVE = frozenset({"snapshot", "clone", "resize_online"})
VDI_OPERATIONS = ("snapshot", "copy", "clone", "destroy", "resize", "update", "resize_online", "forget")

SR_CAPABILITY = {
    "vdi_create": "VDI_CREATE",
    "vdi_destroy": "VDI_DELETE",
    "vdi_resize": "VDI_RESIZE",
    "vdi_introduce": "VDI_INTRODUCE",
    "vdi_snapshot": "VDI_SNAPSHOT",
    "vdi_clone": "VDI_CLONE",
    "update": "SR_UPDATE",
    "scan": "SR_SCAN",
}
SR_OPERATIONS = (
    "scan",
    "destroy",
    "forget",
    "plug",
    "unplug",
    "update",
    "vdi_create",
    "vdi_introduce",
    "vdi_destroy",
    "vdi_resize",
    "vdi_clone",
    "vdi_snapshot",
    "vdi_copy",
    "pbd_create",
    "pbd_destroy",
)
# SR operations that need a plugged PBD on this host.
SR_NEEDS_PBD = frozenset(SR_OPERATIONS) - {"destroy", "forget", "plug", "pbd_create", "pbd_destroy"}

VBD_OPERATIONS = ("attach", "eject", "insert", "plug", "unplug", "unplug_force")
# VM operations during which the VM's disks must not change (xapi_vbd_helpers).
_CD_HOTPLUG = "HVM CDROMs cannot be hotplugged/unplugged, only inserted or ejected"
_VM_BUSY = frozenset({"clean_shutdown", "hard_shutdown", "suspend", "pause"})


def sm_capabilities(store: Store, sr_type: str) -> frozenset[str]:
    for _, rec in store.items("SM"):
        if rec["type"] == sr_type:
            return frozenset(rec["capabilities"])
    return frozenset()


def attached_pbd(store: Store, sr: str) -> str | None:
    for pbd in store.get("SR", sr)["PBDs"]:
        rec = store.find("PBD", pbd)
        if rec is not None and rec["currently_attached"]:
            return str(pbd)
    return None


def _first_op(current: dict[str, str]) -> tuple[str, str]:
    task, op = next(iter(current.items()))
    return task, op


# --------------------------------------------------------------------------------------------------- SR


def sr_error(store: Store, sr: str, op: str) -> ApiError | None:
    rec = store.get("SR", sr)
    if rec["current_operations"]:
        task, running = _first_op(rec["current_operations"])
        return ApiError("OTHER_OPERATION_IN_PROGRESS", "SR", sr, running, task)
    cap = SR_CAPABILITY.get(op)
    if cap is not None and cap not in sm_capabilities(store, rec["type"]):
        return ApiError("SR_OPERATION_NOT_SUPPORTED", sr)
    plugged = attached_pbd(store, sr)
    if op in ("destroy", "forget") and plugged is not None:
        return ApiError("SR_HAS_PBD", sr)
    if op == "destroy":
        if not rec["PBDs"]:
            return ApiError("SR_HAS_NO_PBDS", sr)
        if rec["other_config"].get("indestructible") == "true":
            return ApiError("SR_INDESTRUCTIBLE", sr)
        if any(_managed(store, vdi) for vdi in rec["VDIs"]):
            return ApiError("SR_NOT_EMPTY")
    if op in SR_NEEDS_PBD and plugged is None:
        return ApiError("SR_HAS_NO_PBDS", sr)
    return None


def _managed(store: Store, vdi: str) -> bool:
    rec = store.find("VDI", vdi)
    return rec is not None and bool(rec["managed"])



def _refresh_allowed(
    store: Store, cls: str, ref: str, operations: Iterable[str], error: Callable[[Store, str, str], ApiError | None]
) -> None:
    """allowed_operations: exactly the operations whose check would pass now."""
    if not store.exists(cls, ref):
        return
    allowed = [op for op in operations if error(store, ref, op) is None]
    if allowed != store.get(cls, ref)["allowed_operations"]:
        store.set_field(cls, ref, "allowed_operations", allowed)

def refresh_sr(store: Store, sr: str) -> None:
    _refresh_allowed(store, "SR", sr, SR_OPERATIONS, sr_error)


# -------------------------------------------------------------------------------------------------- VDI


def active_vbds(store: Store, vdi: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for vbd in store.get("VDI", vdi)["VBDs"]:
        rec = store.find("VBD", vbd)
        if rec is not None and rec["currently_attached"]:
            out.append((str(vbd), rec))
    return out


def vdi_error(store: Store, vdi: str, op: str) -> ApiError | None:
    rec = store.get("VDI", vdi)
    if rec["current_operations"]:
        task, running = _first_op(rec["current_operations"])
        return ApiError("OTHER_OPERATION_IN_PROGRESS", "VDI", vdi, running, task)
    if op == "forget":
        return ApiError("VDI_IN_USE", vdi, op) if active_vbds(store, vdi) else None
    sr = rec["SR"]
    if not store.exists("SR", sr):
        return ApiError("HANDLE_INVALID", "SR", sr)
    if op != "copy" and attached_pbd(store, sr) is None:
        return ApiError("SR_HAS_NO_PBDS", sr)
    active = active_vbds(store, vdi)
    if active and op not in VDI_LIVE:
        return ApiError("VDI_IN_USE", vdi, op)
    # An HTTP import writes the disk through a control-domain VBD (api/handlers/transfer_jobs.py):
    # nothing branches or grows it until the new contents are in place.
    if op in VDI_LIVE and any(b["mode"] == "RW" and _is_control_domain(store, b["VM"]) for _, b in active):
        return ApiError("VDI_IN_USE", vdi, op)
    for vbd in rec["VBDs"]:
        vbd_rec = store.find("VBD", vbd)
        if vbd_rec is not None and vbd_rec["current_operations"]:
            task, running = _first_op(vbd_rec["current_operations"])
            return ApiError("OTHER_OPERATION_IN_PROGRESS", "VBD", vbd, running, task)
    cap = VDI_CAPABILITY.get(op)
    if cap is not None and cap not in sm_capabilities(store, store.get("SR", sr)["type"]):
        return ApiError("SR_OPERATION_NOT_SUPPORTED", sr)
    if op == "snapshot" and rec["sharable"]:
        return ApiError("VDI_IS_SHARABLE")
    if op == "snapshot" and rec["on_boot"] == "reset":
        return ApiError("VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION")
    if op in ("destroy", "resize", "resize_online", "clone", "snapshot") and not rec["managed"]:
        return ApiError("VDI_NOT_MANAGED", vdi)
    return None


def _is_control_domain(store: Store, vm: str) -> bool:
    rec = store.find("VM", vm)
    return rec is not None and bool(rec["is_control_domain"])


def refresh_vdi(store: Store, vdi: str) -> None:
    _refresh_allowed(store, "VDI", vdi, VDI_OPERATIONS, vdi_error)


def check_vdi(store: Store, vdi: str, op: str) -> None:
    error = vdi_error(store, vdi, op)
    if error is not None:
        raise error


# -------------------------------------------------------------------------------------------------- VBD


def sharing_error(store: Store, vbd: str, rec: dict[str, Any]) -> ApiError | None:
    """xapi's sharing check: a VDI written by one running VM is not attached anywhere else."""
    vdi = rec["VDI"]
    vdi_rec = store.find("VDI", vdi)
    if vdi_rec is None or rec["empty"]:
        return None
    busy = {op for op in vdi_rec["current_operations"].values() if op != "copy"}
    if busy:
        task = next(t for t, op in vdi_rec["current_operations"].items() if op in busy)
        return ApiError("OTHER_OPERATION_IN_PROGRESS", "VDI", vdi, next(iter(busy)), task)
    others = [
        b
        for other in vdi_rec["VBDs"]
        if other != vbd
        and (b := store.find("VBD", other)) is not None
        and (b["currently_attached"] or b["current_operations"])
        and _power_state(store, b["VM"]) != "Suspended"
    ]
    need_write = rec["mode"] == "RW" and rec["type"] != "CD"
    someone_writes = any(b["mode"] == "RW" and b["type"] != "CD" for b in others)
    if not vdi_rec["sharable"] and (someone_writes or (need_write and others)):
        return ApiError("VDI_IN_USE", vdi, "attach")
    if need_write and vdi_rec["read_only"]:
        return ApiError("VDI_READONLY", vdi)
    if vdi_rec["missing"]:
        return ApiError("VDI_MISSING", vdi_rec["SR"], vdi)
    return None


def _power_state(store: Store, vm: str) -> str:
    rec = store.find("VM", vm)
    return str(rec["power_state"]) if rec is not None else "Halted"


def vbd_error(store: Store, vbd: str, op: str) -> ApiError | None:
    rec = store.get("VBD", vbd)
    if rec["current_operations"]:
        task, running = _first_op(rec["current_operations"])
        return ApiError("OTHER_OPERATION_IN_PROGRESS", "VBD", vbd, running, task)
    vm = rec["VM"]
    power = _power_state(store, vm)
    is_cd = rec["type"] == "CD"
    if op in ("unplug", "unplug_force") and not rec["unpluggable"]:
        return ApiError("VBD_NOT_UNPLUGGABLE", vbd)
    if op in ("insert", "eject"):
        if not is_cd:
            return ApiError("VBD_NOT_REMOVABLE_MEDIA", vbd)
        if op == "eject" and rec["empty"]:
            return ApiError("VBD_IS_EMPTY", vbd)
        if op == "insert" and not rec["empty"]:
            return ApiError("VBD_NOT_EMPTY", vbd)
        if power == "Suspended":
            return ApiError("VM_BAD_POWER_STATE", vm, "halted, running", "suspended")
    if op in ("plug", "unplug", "unplug_force"):
        if power != "Running":
            return ApiError("VM_BAD_POWER_STATE", vm, "running", power.lower())
        if op == "plug" and rec["currently_attached"]:
            return ApiError("DEVICE_ALREADY_ATTACHED", vbd)
        if op != "plug" and not rec["currently_attached"]:
            return ApiError("DEVICE_ALREADY_DETACHED", vbd)
        vm_ops = store.get("VM", vm)["current_operations"].values() if store.exists("VM", vm) else ()
        for vm_op in vm_ops:
            if vm_op in _VM_BUSY:
                return ApiError(OPERATION_NOT_ALLOWED, f"Current operation on VM:{vm} is {vm_op}")
        if is_cd:
            return ApiError(OPERATION_NOT_ALLOWED, _CD_HOTPLUG)
    if op in ("attach", "plug", "insert") and not rec["empty"] and not rec["currently_attached"]:
        vdi = store.find("VDI", rec["VDI"])
        if vdi is not None and not vdi["managed"]:
            return ApiError("VDI_NOT_MANAGED", vbd)
        return sharing_error(store, vbd, rec)
    return None


def refresh_vbd(store: Store, vbd: str) -> None:
    _refresh_allowed(store, "VBD", vbd, VBD_OPERATIONS, vbd_error)


def refresh_vm_disks(store: Store, vm: str) -> None:
    """After a VM's power state or its disks changed: its VBDs' and their VDIs' allowed operations."""
    if not store.exists("VM", vm):
        return
    with store.transaction():
        for vbd in store.get("VM", vm)["VBDs"]:
            refresh_vbd(store, vbd)
            vdi = store.get("VBD", vbd)["VDI"] if store.exists("VBD", vbd) else NULL_REF
            if vdi != NULL_REF:
                refresh_vdi(store, vdi)


# ------------------------------------------------------------------------------------------------ marks


@contextmanager
def marking(
    store: Store, cls: str, ref: str, op: str, task_ref: str | None, refresh: Callable[[Store, str], None]
) -> Iterator[str]:
    """Record `op` in the object's current_operations for the duration of the block (xapi's marks,
    which clients watch and which make concurrent operations on the same object fail cleanly)."""
    op_id = task_ref or new_ref()
    current = store.get(cls, ref)["current_operations"]
    if current:
        task, running = _first_op(current)
        raise ApiError("OTHER_OPERATION_IN_PROGRESS", cls, ref, running, task)
    with store.transaction():
        store.set_field(cls, ref, "current_operations", {op_id: op})
        refresh(store, ref)
    try:
        yield op_id
    finally:
        if store.exists(cls, ref):
            left = {k: v for k, v in store.get(cls, ref)["current_operations"].items() if k != op_id}
            with store.transaction():
                store.set_field(cls, ref, "current_operations", left)
                refresh(store, ref)
