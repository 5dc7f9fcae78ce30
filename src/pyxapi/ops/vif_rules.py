"""Which VIF operation is allowed when, from the records alone (xapi's xapi_vif_helpers rules).

`vif_error` returns the error an operation would fail with now, or None; `allowed_operations` is
every operation whose check passes, and the handlers raise the same error, so the field and the
behaviour cannot disagree. The first rule that matches wins, in xapi's order: another operation
in progress, hot-plug on the control domain, the VM's power state and whether the VIF is plugged,
then VM operations during which devices must not change.
"""

from __future__ import annotations

from typing import Any

from pyxapi.db.store import Store
from pyxapi.model.errors import OPERATION_NOT_ALLOWED, ApiError

VIF_OPERATIONS = ("attach", "plug", "unplug")
# VM operations during which a VIF must not be plugged or unplugged (xapi_vif_helpers).
_VM_BUSY = frozenset({"clean_shutdown", "hard_shutdown", "suspend", "pause"})


def _vm(store: Store, vm: str) -> dict[str, Any] | None:
    return store.find("VM", vm)


def vif_error(store: Store, vif: str, op: str) -> ApiError | None:
    rec = store.get("VIF", vif)
    if rec["current_operations"]:
        task, running = next(iter(rec["current_operations"].items()))
        return ApiError("OTHER_OPERATION_IN_PROGRESS", "VIF", vif, running, task)
    if op not in ("plug", "unplug"):
        return None
    vm = rec["VM"]
    vm_rec = _vm(store, vm)
    if op == "plug" and vm_rec is not None and vm_rec["is_control_domain"]:
        return ApiError(OPERATION_NOT_ALLOWED, "Control domain does not support hotplug")
    power = str(vm_rec["power_state"]) if vm_rec is not None else "Halted"
    plugged = bool(rec["currently_attached"] or rec["reserved"])
    if power != "Running":
        return ApiError("VM_BAD_POWER_STATE", vm, "running", power.lower())
    if op == "plug" and plugged:
        return ApiError("DEVICE_ALREADY_ATTACHED", vif)
    if op == "unplug" and not plugged:
        return ApiError("DEVICE_ALREADY_DETACHED", vif)
    for vm_op in (vm_rec or {}).get("current_operations", {}).values():
        if vm_op in _VM_BUSY:
            return ApiError(OPERATION_NOT_ALLOWED, f"Current operation on VM:{vm} is {vm_op}")
    return None


def check(store: Store, vif: str, op: str) -> None:
    error = vif_error(store, vif, op)
    if error is not None:
        raise error


def refresh_vif(store: Store, vif: str) -> None:
    """allowed_operations: exactly the operations whose check would pass now."""
    if not store.exists("VIF", vif):
        return
    allowed = [op for op in VIF_OPERATIONS if vif_error(store, vif, op) is None]
    if allowed != store.get("VIF", vif)["allowed_operations"]:
        store.set_field("VIF", vif, "allowed_operations", allowed)


def refresh_vm_vifs(store: Store, vm: str) -> None:
    """After a VM's power state changed: its VIFs' allowed operations."""
    if not store.exists("VM", vm):
        return
    with store.transaction():
        for vif in store.get("VM", vm)["VIFs"]:
            refresh_vif(store, vif)
