"""What an export carries: the VM and the objects around it, as ova.xml objects, and its disks.

Follows xapi's export: every object reached from the VM gets an export-local id (`Ref:N`); each
record is written as get_record gives it, with refs rewritten to those ids (refs to anything not
exported become OpaqueRef:NULL, so no dangling pointer leaves the host), runtime state cleared
(operations, consoles, metrics, attachment flags unless the power state is preserved) and, outside
metadata exports, the snapshot lineage dropped. Disks are sent in the lexicographic order of their
ids, as xapi sends and expects them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pyxapi
from pyxapi.context import Context
from pyxapi.db.store import NULL_REF
from pyxapi.model.types import Map, Record, Ref, Set
from pyxapi.xva.ovaxml import EXPORT_VSN, EXPORT_XAPI_VERSION, ExportObject, Version

# xapi's make_host: what a host record keeps when it travels (it only anchors resident_on/affinity).
_HOST_BLANKED = {
    "PIFs": [],
    "PBDs": [],
    "PGPUs": [],
    "PCIs": [],
    "host_CPUs": [],
    "license_params": {},
    "blobs": {},
    "external_auth_type": "",
    "external_auth_service_name": "",
    "external_auth_configuration": {},
    "patches": [],
    "crashdumps": [],
    "logging": {},
    "supported_bootloaders": [],
    "cpu_configuration": {},
    "other_config": {},
    "capabilities": [],
    "software_version": {},
    "sched_policy": "",
    "ha_statefiles": [],
    "ha_network_peers": [],
    "tags": [],
}
# Classes whose records this exporter writes, in xapi's order of the objects array.
CLASS_ORDER = ("host", "VM", "VM_guest_metrics", "VBD", "VIF", "network", "VDI", "SR")


@dataclass(slots=True)
class ExportPlan:
    objects: list[ExportObject]
    disks: list[tuple[str, str, int]]  # (export id, VDI ref, bytes), in the order they are sent
    vms: list[str]


@dataclass(slots=True)
class _Table:
    ids: dict[str, str] = field(default_factory=dict)
    classes: dict[str, str] = field(default_factory=dict)

    def add(self, cls: str, ref: str) -> None:
        if ref and ref != NULL_REF and ref not in self.ids:
            self.ids[ref] = f"Ref:{len(self.ids)}"
            self.classes[ref] = cls


def version(ctx: Context) -> Version:
    host = ctx.store.get("host", ctx.host_ref) if ctx.host_ref else {}
    return Version(
        hostname=str(host.get("hostname", "")),
        date=time.strftime("%Y-%m-%d", time.gmtime()),
        product_version=pyxapi.__version__,
        product_brand="pyxapi",
        build_number="",
        xapi_major=EXPORT_XAPI_VERSION[0],
        xapi_minor=EXPORT_XAPI_VERSION[1],
        export_vsn=EXPORT_VSN,
    )


def plan(
    ctx: Context,
    vms: list[str],
    *,
    preserve_power_state: bool = False,
    with_snapshot_metadata: bool = False,
    include_vhd_parents: bool = False,
) -> ExportPlan:
    store = ctx.store
    table = _Table()
    for vm in vms:
        _walk_vm(ctx, table, vm, with_snapshot_metadata, preserve_power_state)
    objects = [
        ExportObject(cls, table.ids[ref], _snapshot(ctx, table, cls, ref, preserve_power_state, with_snapshot_metadata))
        for cls in CLASS_ORDER
        for ref, c in table.classes.items()
        if c == cls
    ]
    disks: list[tuple[str, str, int]] = []
    for vm in vms:
        for vdi in streamed_vdis(ctx, vm, preserve_power_state):
            if vdi in table.ids and all(d[1] != vdi for d in disks):
                disks.append((table.ids[vdi], vdi, int(store.get("VDI", vdi)["virtual_size"])))
    disks.sort(key=lambda d: d[0])  # string order, as xapi's for_each_vdi
    return ExportPlan(objects, disks, vms)


def streamed_vdis(ctx: Context, vm: str, preserve_power_state: bool) -> list[str]:
    """The disks whose data an export sends: non-CD, not on an ISO SR, plus a kept suspend image."""
    store = ctx.store
    rec = store.get("VM", vm)
    out = []
    if preserve_power_state and rec["power_state"] == "Suspended" and store.exists("VDI", rec["suspend_VDI"]):
        out.append(rec["suspend_VDI"])
    for vbd in rec["VBDs"]:
        b = store.find("VBD", vbd)
        if b is None or b["type"] == "CD" or b["empty"] or not store.exists("VDI", b["VDI"]):
            continue
        sr = store.find("SR", store.get("VDI", b["VDI"])["SR"])
        if sr is not None and sr["content_type"] != "iso":
            out.append(b["VDI"])
    return out


def _walk_vm(ctx: Context, table: _Table, vm: str, include_snapshots: bool, preserve: bool) -> None:
    store = ctx.store
    if not store.exists("VM", vm) or vm in table.ids:
        return
    table.add("VM", vm)
    rec = store.get("VM", vm)
    for vif in rec["VIFs"]:
        if store.exists("VIF", vif):
            table.add("VIF", vif)
            net = store.get("VIF", vif)["network"]
            if store.exists("network", net):
                table.add("network", net)
    for vbd in rec["VBDs"]:
        b = store.find("VBD", vbd)
        if b is None:
            continue
        table.add("VBD", vbd)
        if not b["empty"] and store.exists("VDI", b["VDI"]):
            _add_vdi(ctx, table, b["VDI"])
    if include_snapshots:
        for snap in rec["snapshots"]:
            _walk_vm(ctx, table, snap, False, preserve)
    if preserve and rec["power_state"] == "Suspended" and store.exists("VDI", rec["suspend_VDI"]):
        _add_vdi(ctx, table, rec["suspend_VDI"])
    if store.exists("VM_guest_metrics", rec["guest_metrics"]):
        table.add("VM_guest_metrics", rec["guest_metrics"])
    for host_field in ("resident_on", "affinity"):
        if store.exists("host", rec[host_field]):
            table.add("host", rec[host_field])
    if include_snapshots and store.exists("VM", rec["parent"]):
        _walk_vm(ctx, table, rec["parent"], False, preserve)


def _add_vdi(ctx: Context, table: _Table, vdi: str) -> None:
    table.add("VDI", vdi)
    sr = ctx.store.get("VDI", vdi)["SR"]
    if ctx.store.exists("SR", sr):
        table.add("SR", sr)


def _snapshot(
    ctx: Context, table: _Table, cls: str, ref: str, preserve: bool, with_snapshot_metadata: bool
) -> dict[str, Any]:
    cdef = ctx.model.classes[cls]
    rec = dict(ctx.store.get(cls, ref))
    if cls == "host":
        rec.update(_HOST_BLANKED)
    elif cls == "VM":
        _vm_overrides(rec, preserve, with_snapshot_metadata)
    elif cls in ("VBD", "VIF") and not preserve:
        rec["currently_attached"] = False
    elif cls == "network":
        rec["PIFs"] = []
    elif cls == "SR":
        rec["PBDs"] = []
    for name in ("current_operations", "allowed_operations"):
        if name in rec:
            rec[name] = {} if name == "current_operations" else []
    for name in ("metrics", "crash_dumps", "consoles", "blobs"):
        if name in cdef.fields and cls != "VM_guest_metrics":
            rec[name] = NULL_REF if name == "metrics" else ([] if name != "blobs" else {})
    wire: dict[str, Any] = ctx.marshal.encode(rec, Record(cls), "xml")
    for f in cdef.record_fields:
        wire[f.name] = _rewrite(wire[f.name], f.type, table)
    return wire


def _vm_overrides(rec: dict[str, Any], preserve: bool, with_snapshot_metadata: bool) -> None:
    if not preserve:
        rec["power_state"] = "Halted"
        rec["suspend_VDI"] = NULL_REF
    if not with_snapshot_metadata:
        rec.update(
            {
                "is_a_snapshot": False,
                "snapshot_of": NULL_REF,
                "snapshots": [],
                "snapshot_time": "",
                "transportable_snapshot_id": "",
                "parent": NULL_REF,
            }
        )
    rec["protection_policy"] = NULL_REF
    rec["is_control_domain"] = False


def _rewrite(value: Any, t: Any, table: _Table) -> Any:
    """Refs become export-local ids (or NULL); sets of refs keep only the exported ones."""
    match t:
        case Ref():
            return table.ids.get(value, NULL_REF)
        case Set(Ref()):
            return [table.ids[v] for v in value if v in table.ids]
        case Map(Ref(), _) | Map(_, Ref()):
            key_is_ref, value_is_ref = isinstance(t.key, Ref), isinstance(t.value, Ref)
            out = {}
            for k, v in value.items():
                k2 = table.ids.get(k, NULL_REF) if key_is_ref else k
                out[k2] = table.ids.get(v, NULL_REF) if value_is_ref else v
            return out
    return value
