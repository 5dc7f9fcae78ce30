"""current_operations / allowed_operations upkeep around a running operation.

Every VM operation runs inside `running(...)`: the lifecycle table is checked, the operation is
recorded in current_operations under the task's ref (or a fresh id for a synchronous call), and
allowed_operations is recomputed on the way in and out, so clients watching events see both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pyxapi.db.store import Store, new_ref
from pyxapi.engine.vm_lifecycle import VMView, allowed_operations, check


def refresh_vm_allowed(store: Store, vm: str) -> None:
    rec = store.get("VM", vm)
    allowed = allowed_operations(VMView.of(vm, rec))
    if allowed != rec["allowed_operations"]:
        store.set_field("VM", vm, "allowed_operations", allowed)


@contextmanager
def running(store: Store, vm: str, op: str, task_ref: str | None = None) -> Iterator[str]:
    """Check that `op` may start on `vm`, mark it, and unmark it however the block ends."""
    op_id = task_ref or new_ref()
    rec = store.get("VM", vm)
    check(VMView.of(vm, rec), op)
    with store.transaction():
        store.set_field("VM", vm, "current_operations", {**rec["current_operations"], op_id: op})
        refresh_vm_allowed(store, vm)
    try:
        yield op_id
    finally:
        if store.exists("VM", vm):
            current = store.get("VM", vm)["current_operations"]
            with store.transaction():
                store.set_field("VM", vm, "current_operations", {k: v for k, v in current.items() if k != op_id})
                refresh_vm_allowed(store, vm)
