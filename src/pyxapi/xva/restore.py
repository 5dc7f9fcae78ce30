"""The objects an import creates from ova.xml, in xapi's order and by xapi's rules, with undo.

Order: hosts and SRs (looked up, never created), VDIs (new, empty, on the target SR; ISOs found by
location in ISO SRs), VMs, networks (matched by name, then bridge; created when neither matches),
VBDs, VIFs. A full import gives every object a new uuid; a restore keeps the VM's, VBDs' and VIFs'
(replacing a halted VM with the same uuid, unless it is not older) and their MACs. Every object made
is pushed on an undo stack, which `rollback()` unwinds when anything later fails, so a failed import
leaves nothing behind (xapi's `force` keeps what was made, as xapi does).
"""

from __future__ import annotations

import logging
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pyxapi.api.dispatch import Call
from pyxapi.context import Context
from pyxapi.db.store import NULL_REF, new_ref, new_uuid
from pyxapi.engine.operations import refresh_vm_allowed
from pyxapi.model.errors import ApiError
from pyxapi.ops import vbd as vbd_ops
from pyxapi.ops import vif as vif_ops
from pyxapi.ops.storage_runtime import RESET_BASE, storage_errors, uuid_taken
from pyxapi.wire.marshal import now_datetime
from pyxapi.xva import disks
from pyxapi.xva.errors import AttachedDisksNotFound, ObjectNotFound
from pyxapi.xva.ovaxml import ExportObject

log = logging.getLogger(__name__)

IMPORT_TASK_KEY = "import_task"
MAC_SEED_KEY = "mac_seed"

# VM fields an import never takes from the archive: identity, relations, runtime state.
_VM_SKIPPED = frozenset(
    {
        "uuid",
        "power_state",
        "suspend_VDI",
        "resident_on",
        "scheduled_to_be_resident_on",
        "affinity",
        "domid",
        "VBDs",
        "VIFs",
        "VTPMs",
        "VUSBs",
        "VGPUs",
        "crash_dumps",
        "consoles",
        "attached_PCIs",
        "metrics",
        "guest_metrics",
        "allowed_operations",
        "current_operations",
        "snapshots",
        "children",
        "blobs",
        "is_control_domain",
        "appliance",
        "protection_policy",
        "snapshot_schedule",
        "groups",
        "pending_guidances",
        "pending_guidances_recommended",
        "pending_guidances_full",
        "parent",
        "snapshot_of",
    }
)
_VDI_FIELDS = (
    "name_label",
    "name_description",
    "type",
    "sharable",
    "read_only",
    "other_config",
    "xenstore_data",
    "sm_config",
    "tags",
    "is_a_snapshot",
    "snapshot_time",
    "allow_caching",
)
_VBD_FIELDS = (
    "userdevice",
    "bootable",
    "mode",
    "type",
    "unpluggable",
    "other_config",
    "qos_algorithm_type",
    "qos_algorithm_params",
)
_VIF_FIELDS = (
    "device",
    "MTU",
    "other_config",
    "qos_algorithm_type",
    "qos_algorithm_params",
    "locking_mode",
    "ipv4_allowed",
    "ipv6_allowed",
)
_NETWORK_FIELDS = ("name_label", "name_description", "MTU", "other_config", "tags", "purpose")
# VM importers order their classes: a reference always points to something handled before it.
CLASS_ORDER = ("host", "SR", "VDI", "VM", "network", "VBD", "VIF")


@dataclass(slots=True)
class ImportConfig:
    sr: str | None  # target SR of a full import; None: metadata only (disks must exist already)
    full_restore: bool = False
    force: bool = False
    dry_run: bool = False


@dataclass(slots=True)
class Importer:
    call: Call
    config: ImportConfig
    objects: list[ExportObject]
    table: dict[str, str] = field(default_factory=dict)  # export id -> ref here (NULL: not imported)
    created_vms: list[str] = field(default_factory=list)
    _undo: list[tuple[str, Callable[[], Awaitable[None]]]] = field(default_factory=list)
    _records: dict[str, dict[str, Any]] = field(default_factory=dict)
    _op_id: str = field(default_factory=new_ref)  # marks current_operations when no task runs this

    @property
    def ctx(self) -> Context:
        return self.call.ctx

    @property
    def task(self) -> str:
        return self.call.task_ref or self._op_id

    # ---------------------------------------------------------------------------- entry points
    async def create_objects(self) -> None:
        by_id = {}
        for obj in self.objects:
            by_id[obj.id] = obj
            self._records[obj.id] = self._decode(obj)
        handlers: dict[str, Callable[[ExportObject], Awaitable[None]]] = {
            "host": self._host,
            "SR": self._sr,
            "VDI": self._vdi,
            "VM": self._vm,
            "network": self._network,
            "VBD": self._vbd,
            "VIF": self._vif,
        }
        skipped = {o.cls for o in self.objects if o.cls not in handlers and o.cls != "VM_guest_metrics"}
        if skipped:
            log.info("import: ignoring objects of classes %s", ", ".join(sorted(skipped)))
        for cls in CLASS_ORDER:
            for obj in self.objects:
                if obj.cls == cls:
                    await handlers[cls](obj)
        if not self.config.dry_run:
            self._link_snapshots()

    def disks_to_stream(self) -> list[tuple[str, str, int]]:
        """(export id, new VDI, size) for the disks whose data follows, in the order they come."""
        wanted: set[str] = set()
        for obj in self.objects:
            rec = self._records[obj.id]
            if obj.cls == "VBD" and rec.get("type") != "CD":
                wanted.add(str(obj.snapshot.get("VDI", "")))
            if obj.cls == "VDI" and rec.get("type") == "suspend":
                wanted.add(obj.id)
        out = []
        for obj in self.objects:
            if obj.cls != "VDI" or obj.id not in wanted or self.table.get(obj.id, NULL_REF) == NULL_REF:
                continue
            if self._sr_content(obj) == "iso":
                continue
            out.append((obj.id, self.table[obj.id], int(self._records[obj.id].get("virtual_size", 0))))
        out.sort(key=lambda d: d[0])
        return out

    def complete(self) -> list[str]:
        """Take the `import` mark off the new VMs; the result is the VMs that are not snapshots."""
        store = self.ctx.store
        for vm in self.created_vms:
            if store.exists("VM", vm):
                ops = {k: v for k, v in store.get("VM", vm)["current_operations"].items() if k != self.task}
                with store.transaction():
                    store.set_field("VM", vm, "current_operations", ops)
                    refresh_vm_allowed(store, vm)
        return [vm for vm in dict.fromkeys(self.created_vms) if not store.get("VM", vm)["is_a_snapshot"]]

    async def rollback(self) -> None:
        while self._undo:
            what, undo = self._undo.pop()
            try:
                await undo()
            except Exception as e:  # keep unwinding: one stuck object must not keep the others
                log.warning("import clean-up: could not remove %s: %s", what, getattr(e, "description", e))

    # ------------------------------------------------------------------------------- helpers
    def _decode(self, obj: ExportObject) -> dict[str, Any]:
        """The snapshot as internal values; fields this model lacks or cannot read are dropped
        (an archive from a newer xapi may carry enum values or fields we do not know)."""
        cdef = self.ctx.model.classes.get(obj.cls)
        if cdef is None:
            return {}
        out: dict[str, Any] = {}
        for key, value in obj.snapshot.items():
            f = cdef.fields.get(key)
            if f is None or f.internal_only:
                continue
            try:
                out[key] = self.ctx.marshal.decode(value, f.type, key)
            except ApiError:
                log.debug("import: %s.%s has an unreadable value; default used", obj.cls, key)
        return out

    def lookup(self, ident: Any) -> str:
        if not isinstance(ident, str) or ident not in self.table:
            raise ObjectNotFound(str(ident))
        return self.table[ident]

    def _find(self, ident: Any) -> ExportObject | None:
        return next((o for o in self.objects if o.id == ident), None)

    def _sr_content(self, vdi_obj: ExportObject) -> str:
        sr = self._find(vdi_obj.snapshot.get("SR"))
        return str(self._records[sr.id].get("content_type", "")) if sr is not None else ""

    def _push(self, what: str, undo: Callable[[], Awaitable[None]]) -> None:
        self._undo.append((what, undo))

    # ------------------------------------------------------------------------------ handlers
    async def _host(self, obj: ExportObject) -> None:
        try:
            self.table[obj.id] = self.ctx.store.by_uuid("host", str(self._records[obj.id].get("uuid", "")))
        except ApiError:
            self.table[obj.id] = NULL_REF

    async def _sr(self, obj: ExportObject) -> None:
        rec = self._records[obj.id]
        if self.config.sr is None:
            try:
                self.table[obj.id] = self.ctx.store.by_uuid("SR", str(rec.get("uuid", "")))
            except ApiError:
                log.warning("import: no SR with uuid %s here", rec.get("uuid"))
        elif rec.get("content_type") != "iso":
            self.table[obj.id] = self.config.sr

    async def _vdi(self, obj: ExportObject) -> None:
        store = self.ctx.store
        rec = self._records[obj.id]
        location = str(rec.get("location", ""))
        if self._sr_content(obj) == "iso":
            for ref, vdi in store.items("VDI"):
                sr = store.find("SR", vdi["SR"])
                if vdi["location"] == location and sr is not None and sr["content_type"] == "iso":
                    self.table[obj.id] = ref
                    return
            log.info("import: no ISO named %s here; its drive will be empty", location)
            return
        sr_id = obj.snapshot.get("SR")
        if self.config.sr is None:
            sr_here = self.table.get(sr_id) if isinstance(sr_id, str) else None
            found = next((r for r, v in store.items("VDI") if v["SR"] == sr_here and v["location"] == location), None)
            if found is not None:
                self.table[obj.id] = found
            elif not self.config.force:
                if sr_here is not None:
                    raise ApiError("VDI_LOCATION_MISSING", sr_here, location)
                raise ApiError("VDI_CONTENT_ID_MISSING")
            return
        if self.config.dry_run:
            self.table[obj.id] = NULL_REF
            return
        self.table[obj.id] = await self._new_vdi(self.lookup(sr_id), rec)

    async def _new_vdi(self, sr: str, rec: dict[str, Any]) -> str:
        storage = disks.storage(self.ctx)
        driver, handle = await storage.sr(sr)
        vdi_uuid = str(rec.get("uuid", "")) if self.config.full_restore else ""
        if not _is_uuid(vdi_uuid) or uuid_taken(self.ctx.store, "VDI", vdi_uuid):
            vdi_uuid = new_uuid()
        with storage_errors(self.ctx.store, sr):
            info = await driver.create_vdi(handle, vdi_uuid, int(rec.get("virtual_size", 0)))
        fields: dict[str, Any] = {k: rec[k] for k in _VDI_FIELDS if k in rec}
        fields["sm_config"] = {
            k: v for k, v in fields.get("sm_config", {}).items() if k not in (RESET_BASE, "vhd-parent", IMPORT_TASK_KEY)
        }
        fields["type"] = fields.get("type") or "user"
        fields["is_a_snapshot"] = bool(fields.get("is_a_snapshot", False)) and self.config.sr is None
        ref = storage.new_vdi_record(sr, info, {**fields, "uuid": vdi_uuid})

        async def undo() -> None:
            store = self.ctx.store
            if store.exists("VDI", ref):
                location = store.get("VDI", ref)["location"]
                with storage_errors(store, sr, ref):
                    await driver.destroy_vdi(handle, location)
                with store.transaction():
                    store.destroy("VDI", ref)
                await storage.refresh_sizes(sr)

        self._push(f"VDI {vdi_uuid}", undo)
        return ref

    async def _vm(self, obj: ExportObject) -> None:
        store = self.ctx.store
        rec = self._records[obj.id]
        other = dict(rec.get("other_config", {}))
        if rec.get("is_a_template") and other.get("default_template") == "true":
            matches = [
                v
                for v in store.by_name_label("VM", str(rec.get("name_label", "")))
                if store.get("VM", v)["is_a_template"]
            ]
            self.table[obj.id] = matches[0] if matches else NULL_REF
            return
        keep_uuid = ""
        if self.config.full_restore and _is_uuid(str(rec.get("uuid", ""))):
            keep_uuid = str(rec["uuid"])
            if uuid_taken(store, "VM", keep_uuid) and not await self._replace_vm(
                obj, store.by_uuid("VM", keep_uuid), rec
            ):
                return
        if self.config.dry_run:
            self.table[obj.id] = NULL_REF
            return
        fields = {k: v for k, v in rec.items() if k not in _VM_SKIPPED}
        if not self.config.full_restore:
            other[MAC_SEED_KEY] = str(uuidlib.uuid4())
        other[IMPORT_TASK_KEY] = self.task
        fields["other_config"] = other
        fields["version"] = int(rec.get("version", 0)) + 1 if self.config.full_restore else 0
        fields["power_state"] = "Halted"
        if keep_uuid:
            fields["uuid"] = keep_uuid
        if self.config.sr is None:  # a metadata import keeps the snapshot lineage; links are fixed later
            fields["parent"] = NULL_REF
        else:
            fields.update({"is_a_snapshot": False, "snapshot_of": NULL_REF})
        with store.transaction():
            vm = store.create("VM", fields)
            store.set_field("VM", vm, "metrics", store.create("VM_metrics", {"last_updated": now_datetime()}))
            if not self.config.force:
                # Nobody may start or change it until its disks are in (xapi marks `import` too).
                store.set_field("VM", vm, "current_operations", {self.task: "import"})
            refresh_vm_allowed(store, vm)
        self._push(f"VM {store.get('VM', vm)['uuid']}", lambda: self._destroy_vm(vm))
        suspend = obj.snapshot.get("suspend_VDI")
        if rec.get("power_state") == "Suspended" and isinstance(suspend, str) and suspend in self.table:
            store.update("VM", vm, {"power_state": "Suspended", "suspend_VDI": self.table[suspend]})
        self.table[obj.id] = vm
        self.created_vms.append(vm)

    async def _replace_vm(self, obj: ExportObject, existing: str, rec: dict[str, Any]) -> bool:
        """A restore over a VM with the same uuid: only a halted, older one is replaced."""
        store = self.ctx.store
        current = store.get("VM", existing)
        if current["power_state"] != "Halted":
            if self.config.force:
                self.table[obj.id] = NULL_REF
                return False
            raise ApiError("VM_BAD_POWER_STATE", existing, "halted", current["power_state"].lower())
        if int(current["version"]) >= int(rec.get("version", 0)) and not self.config.force:
            raise ApiError("VM_TO_IMPORT_IS_NOT_NEWER_VERSION", existing, current["version"], rec.get("version", 0))
        if not self.config.dry_run:
            await self._destroy_vm(existing)
        return True

    async def _destroy_vm(self, vm: str) -> None:
        store = self.ctx.store
        rec = store.find("VM", vm)
        if rec is None:
            return
        with store.transaction():
            for cls, name in (("VBD", "VBDs"), ("VIF", "VIFs"), ("console", "consoles")):
                for ref in rec[name]:
                    if store.exists(cls, ref):
                        metrics = store.get(cls, ref).get("metrics", NULL_REF)
                        store.destroy(cls, ref)
                        if cls == "VBD" and store.exists("VBD_metrics", metrics):
                            store.destroy("VBD_metrics", metrics)
            for cls, name in (("VM_metrics", "metrics"), ("VM_guest_metrics", "guest_metrics")):
                if store.exists(cls, rec[name]):
                    store.destroy(cls, rec[name])
            store.destroy("VM", vm)

    async def _network(self, obj: ExportObject) -> None:
        store = self.ctx.store
        rec = self._records[obj.id]
        by_name = store.by_name_label("network", str(rec.get("name_label", "")))
        if by_name:
            self.table[obj.id] = by_name[0]
            return
        bridge = str(rec.get("bridge", ""))
        by_bridge = [r for r, n in store.items("network") if bridge and n["bridge"] == bridge]
        if by_bridge:
            self.table[obj.id] = by_bridge[0]
            return
        if self.config.dry_run:
            self.table[obj.id] = NULL_REF
            return
        fields = {k: rec[k] for k in _NETWORK_FIELDS if k in rec}
        fields["other_config"] = {**fields.get("other_config", {}), IMPORT_TASK_KEY: self.task}
        fields["bridge"] = _free_bridge(store)
        fields["managed"] = True
        net = store.create("network", fields)

        async def undo() -> None:
            if store.exists("network", net) and not store.get("network", net)["VIFs"]:
                store.destroy("network", net)

        self._push(f"network {fields['bridge']}", undo)
        self.table[obj.id] = net

    async def _vbd(self, obj: ExportObject) -> None:
        rec = self._records[obj.id]
        raw_vdi = obj.snapshot.get("VDI")
        vm = self.lookup(obj.snapshot.get("VM"))
        have_vdi = isinstance(raw_vdi, str) and self.table.get(raw_vdi, NULL_REF) != NULL_REF
        if rec.get("currently_attached") and not have_vdi and rec.get("type") != "CD":
            raise AttachedDisksNotFound()
        if vm == NULL_REF or self.config.dry_run:
            return
        record: dict[str, Any] = {k: rec[k] for k in _VBD_FIELDS if k in rec}
        record["VM"] = vm
        if have_vdi:
            record.update({"VDI": self.table[str(raw_vdi)], "empty": False})
        elif rec.get("type") == "CD":
            record.update({"VDI": NULL_REF, "empty": True})  # the ISO is not here: eject
        else:
            log.warning("import: a disk VBD of %s has no disk in the archive; left out", vm)
            return
        vbd = vbd_ops.create(self.call, record)
        self._push(f"VBD {vbd}", lambda: self._destroy("VBD", vbd))
        self.table[obj.id] = vbd

    async def _vif(self, obj: ExportObject) -> None:
        rec = self._records[obj.id]
        vm = self.lookup(obj.snapshot.get("VM"))
        net = self.lookup(obj.snapshot.get("network"))
        if vm == NULL_REF or net == NULL_REF or self.config.dry_run:
            return
        record: dict[str, Any] = {k: rec[k] for k in _VIF_FIELDS if k in rec}
        record.update({"VM": vm, "network": net, "MAC": rec.get("MAC", "") if self.config.full_restore else ""})
        vif = vif_ops.create(self.call, record)
        self._push(f"VIF {vif}", lambda: self._destroy("VIF", vif))
        self.table[obj.id] = vif

    async def _destroy(self, cls: str, ref: str) -> None:
        store = self.ctx.store
        if store.exists(cls, ref):
            metrics = store.get(cls, ref).get("metrics", NULL_REF)
            with store.transaction():
                store.destroy(cls, ref)
                if cls == "VBD" and store.exists("VBD_metrics", metrics):
                    store.destroy("VBD_metrics", metrics)

    def _link_snapshots(self) -> None:
        """snapshot_of and parent point at export ids until every VM exists; then at refs here."""
        store = self.ctx.store
        for obj in self.objects:
            vm = self.table.get(obj.id, NULL_REF)
            if obj.cls != "VM" or vm not in self.created_vms:
                continue
            changes = {}
            for name in ("snapshot_of", "parent"):
                target = obj.snapshot.get(name)
                if self.config.sr is None and isinstance(target, str) and target in self.table:
                    changes[name] = self.table[target]
            if changes:
                store.update("VM", vm, changes)


def _is_uuid(text: str) -> bool:
    try:
        uuidlib.UUID(text)
    except ValueError:
        return False
    return True


def _free_bridge(store: Any) -> str:
    used = {rec["bridge"] for _, rec in store.items("network")}
    n = 1
    while f"xapi{n}" in used:
        n += 1
    return f"xapi{n}"
