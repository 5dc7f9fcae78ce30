"""Recording what the hypervisor did: power state, domid, residence and VM_metrics.

The handlers in ops/vm.py and the monitor in ops/vm_monitor.py both end up here, so a VM that
halts because a client asked and one that halts because its guest powered off look the same.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from pyxapi.context import Context
from pyxapi.db.store import NULL_REF
from pyxapi.drivers.hypervisor.base import DomainInfo, DomainSpec, DomainState, HypervisorDriver
from pyxapi.engine.operations import refresh_vm_allowed
from pyxapi.model.errors import ApiError
from pyxapi.ops import console, vif_rules
from pyxapi.wire.marshal import now_datetime


def hypervisor(ctx: Context) -> HypervisorDriver:
    driver = ctx.services.get("hypervisor")
    if driver is None:
        raise ApiError("INTERNAL_ERROR", "no hypervisor driver is configured on this host")
    return driver  # type: ignore[no-any-return]


def spec_path(ctx: Context, vm_uuid: str) -> Path:
    """Where the spec a domain was started with is kept (resume needs the same devices)."""
    return ctx.config.data_dir / "domains" / f"{vm_uuid}.json"


def save_spec(ctx: Context, spec: DomainSpec) -> None:
    import json

    path = spec_path(ctx, spec.uuid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec.to_dict()))


def load_spec(ctx: Context, vm_uuid: str) -> DomainSpec | None:
    import json

    path = spec_path(ctx, vm_uuid)
    if not path.exists():
        return None
    return DomainSpec.from_dict(json.loads(path.read_text()))


def _metrics(ctx: Context, vm: str) -> str:
    store = ctx.store
    ref = store.get("VM", vm)["metrics"]
    if ref == NULL_REF or not store.exists("VM_metrics", ref):
        ref = store.create("VM_metrics", {"last_updated": now_datetime()})
        store.set_field("VM", vm, "metrics", ref)
    return str(ref)


def record_running(ctx: Context, vm: str, info: DomainInfo) -> None:
    store = ctx.store
    rec = store.get("VM", vm)
    with store.transaction():
        store.update(
            "VM",
            vm,
            {
                "power_state": "Paused" if info.state == DomainState.PAUSED else "Running",
                "domid": info.domid,
                "resident_on": ctx.host_ref,
                "scheduled_to_be_resident_on": NULL_REF,
                "memory_target": info.memory_target,
            },
        )
        changes: dict[str, Any] = {
            "memory_actual": info.memory_target,
            "VCPUs_number": info.vcpus,
            "last_updated": now_datetime(),
        }
        if rec["power_state"] in ("Halted", "Suspended"):
            changes["start_time"] = now_datetime()
        store.update("VM_metrics", _metrics(ctx, vm), changes)
        console.ensure_consoles(ctx, vm)  # idempotent: re-adoption after a restart calls this again
        refresh_vm_allowed(store, vm)


def record_paused(ctx: Context, vm: str, paused: bool) -> None:
    store = ctx.store
    with store.transaction():
        store.set_field("VM", vm, "power_state", "Paused" if paused else "Running")
        refresh_vm_allowed(store, vm)
        vif_rules.refresh_vm_vifs(store, vm)  # no VIF hot-plug while paused


def record_halted(ctx: Context, vm: str, keep_suspend: bool = False) -> None:
    store = ctx.store
    if not store.exists("VM", vm):
        return
    with store.transaction():
        store.update(
            "VM",
            vm,
            {"power_state": "Suspended" if keep_suspend else "Halted", "domid": -1, "resident_on": NULL_REF},
        )
        metrics = _metrics(ctx, vm)
        store.update("VM_metrics", metrics, {"memory_actual": 0, "VCPUs_number": 0, "last_updated": now_datetime()})
        guest = store.get("VM", vm)["guest_metrics"]
        if guest != NULL_REF and store.exists("VM_guest_metrics", guest):
            store.update("VM_guest_metrics", guest, {"live": False, "last_updated": now_datetime()})
        console.destroy_consoles(ctx, vm)  # halted and suspended VMs have no consoles, as in xapi
        refresh_vm_allowed(store, vm)
    if not keep_suspend:
        with contextlib.suppress(FileNotFoundError):
            spec_path(ctx, store.get("VM", vm)["uuid"]).unlink()


def record_guest_info(ctx: Context, vm: str, changes: dict[str, Any]) -> None:
    """Create or update the VM's VM_guest_metrics from what the guest agent reported."""
    store = ctx.store
    ref = store.get("VM", vm)["guest_metrics"]
    changes = {**changes, "live": True, "last_updated": now_datetime()}
    with store.transaction():
        if ref == NULL_REF or not store.exists("VM_guest_metrics", ref):
            ref = store.create("VM_guest_metrics", changes)
            store.set_field("VM", vm, "guest_metrics", ref)
        else:
            current = store.get("VM_guest_metrics", ref)
            delta = {k: v for k, v in changes.items() if current.get(k) != v and k != "last_updated"}
            if delta:
                store.update("VM_guest_metrics", ref, {**delta, "last_updated": changes["last_updated"]})
