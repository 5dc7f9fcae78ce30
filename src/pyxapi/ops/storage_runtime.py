"""Storage made real on this host: SRs attached through their drivers, VDI records kept in step with
what the drivers report, and the disks of VMs attached while they run.

Drivers know SRs by uuid + device_config and VDIs by location; this module is where refs meet them.
It writes the DB (drivers never do) and turns the drivers' identifiers in errors back into refs.
What it attached is remembered per VBD, so a disk is detached exactly once however a VM stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyxapi.context import Context
from pyxapi.db.store import NULL_REF, Store, new_uuid
from pyxapi.drivers.hypervisor.base import DiskSpec
from pyxapi.drivers.storage import SR_TYPES, make_driver
from pyxapi.drivers.storage.base import BackendFailure, SMError, SRHandle, StorageDriver, VDIInfo
from pyxapi.drivers.storage.paths import uuid_of
from pyxapi.model.errors import ApiError
from pyxapi.ops import storage_rules as rules
from pyxapi.wire.marshal import now_datetime

log = logging.getLogger(__name__)

RESET_BASE = "pyxapi-reset-base"  # VDI.sm_config: the hidden snapshot an on_boot=reset VDI returns to

# Error codes whose first parameter a driver fills with an SR uuid / a VDI location.
_SR_FIRST = frozenset({"SR_NOT_ATTACHED", "SR_OPERATION_NOT_SUPPORTED"})
_VDI_FIRST = frozenset({"VDI_IN_USE", "VDI_READONLY", "VDI_TOO_SMALL", "VDI_TOO_LARGE", "VDI_IS_A_PHYSICAL_DEVICE"})


# ----------------------------------------------------------------------------------------- errors


def vdi_by_location(store: Store, sr: str, location: str) -> str | None:
    if not store.exists("SR", sr):
        return None
    for vdi in store.get("SR", sr)["VDIs"]:
        rec = store.find("VDI", vdi)
        if rec is not None and rec["location"] == location:
            return str(vdi)
    return None


@contextlib.contextmanager
def storage_errors(store: Store, sr: str, vdi: str | None = None) -> Iterator[None]:
    """Driver errors name SRs by uuid and VDIs by location; clients get refs, as from xapi."""
    try:
        yield
    except ApiError as e:
        raise _with_refs(store, sr, vdi, e) from None
    except OSError as e:
        raise BackendFailure(SMError.EIO, e.strerror or str(e)) from None


def _with_refs(store: Store, sr: str, vdi: str | None, e: ApiError) -> ApiError:
    params = list(e.params)
    if e.code in _SR_FIRST and params:
        params[0] = sr
    elif e.code in _VDI_FIRST and params:
        params[0] = vdi or vdi_by_location(store, sr, params[0]) or params[0]
    elif e.code == "VDI_MISSING" and len(params) == 2:
        params = [sr, vdi or vdi_by_location(store, sr, params[1]) or params[1]]
    elif e.code == "VDI_LOCATION_MISSING" and len(params) == 2:
        params[0] = sr
    else:
        return e
    return ApiError(e.code, *params)


# ---------------------------------------------------------------------------------------- runtime


@dataclass(frozen=True, slots=True)
class _Held:
    vm: str
    sr: str
    location: str


class StorageRuntime:
    def __init__(self, ctx: Context, drivers: dict[str, StorageDriver] | None = None) -> None:
        self.ctx = ctx
        self.drivers = drivers if drivers is not None else {t: make_driver(t) for t in SR_TYPES}
        self._attached: set[str] = set()  # SR refs attached through their driver in this process
        self._locks: dict[str, asyncio.Lock] = {}
        self._held: dict[str, _Held] = {}  # VBD ref -> the VDI attachment it owns
        self._background: set[asyncio.Task[None]] = set()

    @property
    def store(self) -> Store:
        return self.ctx.store

    def driver_for(self, sr_type: str) -> StorageDriver:
        driver = self.drivers.get(sr_type)
        if driver is None:
            raise ApiError("SR_UNKNOWN_DRIVER", sr_type)
        return driver

    def local_pbd(self, sr: str) -> str | None:
        for pbd in self.store.get("SR", sr)["PBDs"]:
            rec = self.store.find("PBD", pbd)
            if rec is not None and rec["host"] == self.ctx.host_ref:
                return str(pbd)
        return None

    def handle(self, sr: str, pbd: str) -> SRHandle:
        return SRHandle(self.store.get("SR", sr)["uuid"], dict(self.store.get("PBD", pbd)["device_config"]))

    # ----------------------------------------------------------------------------- SR attachment

    async def start(self) -> None:
        """Before the first request: plug this host's PBDs, scan (files added behind our back appear),
        and take the VDI locks of disks that running guests still hold across the restart."""
        for pbd, rec in self.store.items("PBD"):
            if rec["host"] != self.ctx.host_ref or not self.store.exists("SR", rec["SR"]):
                continue
            try:
                await self.plug_pbd(pbd)
                await self.scan(rec["SR"])
            except ApiError as e:
                log.warning("SR %s: could not attach: %s", self.store.get("SR", rec["SR"])["uuid"], e.description)
                with self.store.transaction():
                    self.store.set_field("PBD", pbd, "currently_attached", False)
                    rules.refresh_sr(self.store, rec["SR"])
        await self._readopt()

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def plug_pbd(self, pbd: str) -> None:
        store = self.store
        rec = store.get("PBD", pbd)
        sr = rec["SR"]
        if rec["host"] != self.ctx.host_ref:
            raise ApiError("HOST_OFFLINE", rec["host"])
        driver = self.driver_for(store.get("SR", sr)["type"])
        async with self._locks.setdefault(sr, asyncio.Lock()):
            if sr in self._attached and store.get("PBD", pbd)["currently_attached"]:
                return
            with storage_errors(store, sr):
                info = await driver.attach_sr(self.handle(sr, pbd))
            self._attached.add(sr)
            with store.transaction():
                store.set_field("PBD", pbd, "currently_attached", True)
                _apply_sizes(store, sr, info.physical_size, info.physical_utilisation, info.virtual_allocation)
                rules.refresh_sr(store, sr)

    async def unplug_pbd(self, pbd: str) -> None:
        store = self.store
        rec = store.get("PBD", pbd)
        sr = rec["SR"]
        if not rec["currently_attached"]:
            return
        in_use = [
            b["VDI"]
            for _, b in store.items("VBD")
            if b["currently_attached"] and not b["empty"] and store.find("VDI", b["VDI"]) is not None
            and store.get("VDI", b["VDI"])["SR"] == sr
        ]
        if in_use:
            raise ApiError("VDI_IN_USE", in_use[0], "unplug")
        driver = self.driver_for(store.get("SR", sr)["type"])
        if sr in self._attached:
            with storage_errors(store, sr):
                await driver.detach_sr(self.handle(sr, pbd))
        self._attached.discard(sr)
        with store.transaction():
            store.set_field("PBD", pbd, "currently_attached", False)
            rules.refresh_sr(store, sr)
            for vdi in store.get("SR", sr)["VDIs"]:
                rules.refresh_vdi(store, vdi)

    async def sr(self, sr: str) -> tuple[StorageDriver, SRHandle]:
        """The driver and handle of an SR plugged on this host (attached lazily if need be)."""
        pbd = rules.attached_pbd(self.store, sr)
        if pbd is None or self.store.get("PBD", pbd)["host"] != self.ctx.host_ref:
            raise ApiError("SR_HAS_NO_PBDS", sr)
        if sr not in self._attached:
            await self.plug_pbd(pbd)
        return self.driver_for(self.store.get("SR", sr)["type"]), self.handle(sr, pbd)

    def forget_attachment(self, sr: str) -> None:
        self._attached.discard(sr)

    async def refresh_sizes(self, sr: str) -> None:
        """SR.physical_size / physical_utilisation / virtual_allocation as the driver measures them."""
        driver, handle = await self.sr(sr)
        with storage_errors(self.store, sr):
            info = await driver.stat_sr(handle)
        _apply_sizes(self.store, sr, info.physical_size, info.physical_utilisation, info.virtual_allocation)

    async def scan(self, sr: str) -> None:
        driver, handle = await self.sr(sr)
        with storage_errors(self.store, sr):
            infos = await driver.scan(handle)
            stat = await driver.stat_sr(handle)
        with self.store.transaction():
            self.sync_vdis(sr, infos)
            _apply_sizes(self.store, sr, stat.physical_size, stat.physical_utilisation, stat.virtual_allocation)
            rules.refresh_sr(self.store, sr)

    # ------------------------------------------------------------------------------- VDI records

    def sync_vdis(self, sr: str, infos: list[VDIInfo]) -> None:
        """xapi's update_vdis: new images become VDIs, vanished ones go (or are marked missing while a
        VBD still names them), known ones get fresh sizes. Reset-on-boot bases stay hidden."""
        store = self.store
        records = [(v, store.get("VDI", v)) for v in store.get("SR", sr)["VDIs"] if store.exists("VDI", v)]
        hidden = {rec["sm_config"][RESET_BASE] for _, rec in records if rec["sm_config"].get(RESET_BASE)}
        by_location = {rec["location"]: ref for ref, rec in records}
        seen = set()
        for info in infos:
            if info.location in hidden:
                continue
            seen.add(info.location)
            ref = by_location.get(info.location)
            if ref is None:
                self.new_vdi_record(sr, info, {"name_label": info.location}, refresh_sr=False)
            else:
                self.apply_vdi_info(ref, info)
        for location, ref in by_location.items():
            rec = store.get("VDI", ref)
            if location in seen or not rec["managed"]:
                continue
            if rec["VBDs"]:
                if not rec["missing"]:
                    store.set_field("VDI", ref, "missing", True)
            else:
                store.destroy("VDI", ref)

    def new_vdi_record(self, sr: str, info: VDIInfo, fields: dict[str, Any], refresh_sr: bool = True) -> str:
        store = self.store
        uuid = fields.pop("uuid", None) or info.uuid or uuid_of(info.location)
        if not uuid or uuid_taken(store, "VDI", uuid):
            uuid = new_uuid()
        record = {
            "uuid": uuid,
            "name_label": "",
            "name_description": "",
            "SR": sr,
            "virtual_size": info.virtual_size,
            "physical_utilisation": info.physical_utilisation,
            "type": "user",
            "sharable": info.sharable,
            "read_only": info.read_only,
            "location": info.location,
            "managed": True,
            "missing": False,
            "on_boot": "persist",
            "storage_lock": False,
            **fields,
        }
        record["sm_config"] = {**record.get("sm_config", {}), **info.sm_config}
        # A scan running while the driver made this image may have recorded it already: that record
        # becomes this one, so one image never has two VDIs.
        found = vdi_by_location(store, sr, info.location)
        with store.transaction():
            if found is not None:
                ref = found
                store.update("VDI", ref, {k: v for k, v in record.items() if k != "uuid"})
            else:
                ref = store.create("VDI", record)
            rules.refresh_vdi(store, ref)
            if refresh_sr:
                rules.refresh_sr(store, sr)
        return ref

    def apply_vdi_info(self, vdi: str, info: VDIInfo) -> None:
        rec = self.store.get("VDI", vdi)
        changes: dict[str, Any] = {
            "virtual_size": info.virtual_size,
            "physical_utilisation": info.physical_utilisation,
            "missing": False,
            "location": info.location,
            "sm_config": {**rec["sm_config"], **info.sm_config},
        }
        if info.read_only:
            changes["read_only"] = True  # an ISO is read-only whatever the record says
        changes = {k: v for k, v in changes.items() if rec.get(k) != v}
        if not changes:
            return
        with self.store.transaction():
            if "location" in changes:  # re-pointed (reset on boot): drop what a racing scan recorded for it
                other = vdi_by_location(self.store, rec["SR"], info.location)
                if other is not None and other != vdi and not self.store.get("VDI", other)["VBDs"]:
                    self.store.destroy("VDI", other)
            self.store.update("VDI", vdi, changes)

    def spawn(self, coro: Any, what: str) -> None:
        """Background work (chain coalescing) whose failure is logged, never lost or raised."""

        async def run() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("%s failed: %s", what, getattr(e, "description", e))

        task = asyncio.get_running_loop().create_task(run(), name=what)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def coalesce(self, sr: str) -> None:
        """Merge the chain layers nothing needs any more (xapi's SR garbage collector), under a task
        clients can watch: "SR.coalesce", its description naming the SR."""
        tasks = self.ctx.tasks
        task = tasks.create("SR.coalesce", f"SR {self.store.get('SR', sr)['uuid']}: merging unused snapshot layers")
        try:
            driver, handle = await self.sr(sr)
            with storage_errors(self.store, sr):
                merged = await driver.coalesce(handle)
            if self.store.exists("SR", sr):
                await self.refresh_sizes(sr)
        except BaseException as e:
            error = e.description if isinstance(e, ApiError) else ["INTERNAL_ERROR", f"{type(e).__name__}: {e}"]
            tasks.finish(task, "failure", error=error)
            raise
        tasks.finish(task, "success", result=f"<value>{len(merged)}</value>")

    @contextlib.asynccontextmanager
    async def spool(
        self, sr: str, driver: StorageDriver, handle: SRHandle, location: str, progress: Callable[[float], None] | None
    ) -> AsyncIterator[Path]:
        """A VDI's contents as a standalone qcow2 file under the data dir, removed afterwards: how
        data moves between SRs of different types."""
        work = self.ctx.config.data_dir / "tmp"
        work.mkdir(parents=True, exist_ok=True)
        path = work / f"copy-{uuidlib.uuid4().hex}.qcow2"
        try:
            with storage_errors(self.store, sr):
                await driver.export_data(handle, location, "qcow2", path, progress)
            yield path
        finally:
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------ reset on boot

    async def reset_vdi(self, vdi: str) -> None:
        """on_boot=reset: throw the disk's changes away by replacing it with a fresh clone of the
        snapshot taken when reset was chosen (xapi's SM does the same below the API)."""
        store = self.store
        rec = store.get("VDI", vdi)
        base = rec["sm_config"].get(RESET_BASE)
        if not base:
            return
        sr = rec["SR"]
        driver, handle = await self.sr(sr)
        with storage_errors(store, sr, vdi):
            fresh = await driver.clone_vdi(handle, base, new_uuid())
            await driver.destroy_vdi(handle, rec["location"])
        self.apply_vdi_info(vdi, fresh.vdi)

    # ------------------------------------------------------------------------------ disks of VMs

    async def attach_vbd(self, vbd: str, *, check: bool = True, reset: bool = True) -> DiskSpec | None:
        """Attach the VBD's VDI through its driver (taking the driver's lock on it) and say how the
        hypervisor opens it. Empty CD drives are a drive with no medium."""
        store = self.store
        rec = store.get("VBD", vbd)
        device = device_number(rec)
        is_cd = rec["type"] == "CD"
        if rec["empty"] or rec["VDI"] == NULL_REF:
            return DiskSpec(device, None, "raw", True, True, rec["bootable"]) if is_cd else None
        if check and (error := rules.sharing_error(store, vbd, rec)) is not None:
            raise error
        vdi = rec["VDI"]
        sr = store.get("VDI", vdi)["SR"]
        if rules.attached_pbd(store, sr) is None:
            raise ApiError("VM_REQUIRES_SR", rec["VM"], sr)
        if reset and store.get("VDI", vdi)["on_boot"] == "reset":
            await self.reset_vdi(vdi)
        driver, handle = await self.sr(sr)
        location = store.get("VDI", vdi)["location"]
        read_only = is_cd or rec["mode"] == "RO"
        with storage_errors(store, sr, vdi):
            info = await driver.attach_vdi(handle, location, read_only)
        self._held[vbd] = _Held(rec["VM"], sr, location)
        return DiskSpec(device, info.path, info.format, info.read_only, is_cd, rec["bootable"])

    async def detach_vbd(self, vbd: str) -> None:
        held = self._held.pop(vbd, None)
        if held is None:
            return
        driver = self.driver_for(self.store.get("SR", held.sr)["type"]) if self.store.exists("SR", held.sr) else None
        pbd = self.local_pbd(held.sr) if driver is not None else None
        if driver is None or pbd is None:
            return
        try:
            await driver.detach_vdi(self.handle(held.sr, pbd), held.location)
        except Exception as e:  # detaching is best effort: the domain is gone either way
            log.warning("detach of %s in SR %s failed: %s", held.location, held.sr, e)
        vdi = vdi_by_location(self.store, held.sr, held.location)
        if vdi is not None and self.store.get("VDI", vdi)["on_boot"] == "reset":
            # Each reset left one more base in the chain; now nothing runs on it, merge them.
            self.spawn(self.coalesce(held.sr), f"coalesce of SR {self.store.get('SR', held.sr)['uuid']}")

    async def attach_vm(self, vm: str, devices: set[int] | None = None) -> dict[str, DiskSpec]:
        """Every disk of a VM about to run; all or nothing. `devices` limits it to those a suspended
        domain was saved with (resume must offer the same devices)."""
        store = self.store
        specs: dict[str, DiskSpec] = {}
        vbds = sorted(store.get("VM", vm)["VBDs"], key=lambda b: str(store.get("VBD", b)["userdevice"]))
        try:
            for vbd in vbds:
                rec = store.get("VBD", vbd)
                if devices is not None and device_number(rec) not in devices:
                    continue
                spec = await self.attach_vbd(vbd, reset=devices is None)
                if spec is not None:
                    specs[vbd] = spec
        except BaseException:
            for vbd in specs:
                await self.detach_vbd(vbd)
            raise
        return specs

    async def detach_vm(self, vm: str) -> None:
        for vbd, held in list(self._held.items()):
            if held.vm == vm:
                await self.detach_vbd(vbd)
        if self.store.exists("VM", vm):
            self.mark_attached(vm, {}, False)

    def mark_attached(self, vm: str, specs: dict[str, DiskSpec], attached: bool) -> None:
        store = self.store
        with store.transaction():
            for vbd in store.get("VM", vm)["VBDs"]:
                rec = store.get("VBD", vbd)
                if attached and vbd not in specs:
                    continue
                changes: dict[str, Any] = {"currently_attached": attached}
                if attached:
                    changes["device"] = device_name(rec)
                if any(rec.get(k) != v for k, v in changes.items()):
                    store.update("VBD", vbd, changes)
            rules.refresh_vm_disks(store, vm)

    def set_vbd_attached(self, vbd: str, attached: bool) -> None:
        store = self.store
        rec = store.get("VBD", vbd)
        with store.transaction():
            changes: dict[str, Any] = {"currently_attached": attached}
            if attached:
                changes["device"] = device_name(rec)
            store.update("VBD", vbd, changes)
            rules.refresh_vbd(store, vbd)
            if rec["VDI"] != NULL_REF:
                rules.refresh_vdi(store, rec["VDI"])

    async def _readopt(self) -> None:
        """Guests outlive the daemon: the VDIs their VBDs hold are locked in the drivers again."""
        store = self.store
        for _, rec in store.items("VM"):
            if rec["power_state"] not in ("Running", "Paused") or rec["resident_on"] != self.ctx.host_ref:
                continue
            for vbd in rec["VBDs"]:
                if not store.get("VBD", vbd)["currently_attached"] or vbd in self._held:
                    continue
                try:
                    await self.attach_vbd(vbd, check=False, reset=False)
                except ApiError as e:
                    log.warning("VM %s: could not re-take disk %s: %s", rec["uuid"], vbd, e.description)


def uuid_taken(store: Store, cls: str, uuid: str) -> bool:
    try:
        store.by_uuid(cls, uuid)
    except ApiError:
        return False
    return True


def device_number(rec: dict[str, Any]) -> int:
    device = str(rec["userdevice"])
    if not device.isdigit():
        raise ApiError("INVALID_DEVICE", device)
    return int(device)


def device_name(rec: dict[str, Any]) -> str:
    """xapi's VBD.device: hd* for the emulated IDE CD drives, xvd* for paravirtual disks."""
    n = device_number(rec)
    return ("hd" if rec["type"] == "CD" else "xvd") + chr(ord("a") + n)


def _apply_sizes(store: Store, sr: str, size: int, used: int, allocated: int) -> None:
    rec = store.get("SR", sr)
    changes = {"physical_size": size, "physical_utilisation": used, "virtual_allocation": allocated}
    changes = {k: v for k, v in changes.items() if rec[k] != v}
    if changes:
        store.update("SR", sr, changes)


def snapshot_fields(source: dict[str, Any]) -> dict[str, Any]:
    """The metadata a clone or snapshot inherits from its source (xapi's snapshot_and_clone)."""
    return {
        "name_label": source["name_label"],
        "name_description": source["name_description"],
        "type": source["type"],
        "sharable": source["sharable"],
        "other_config": dict(source["other_config"]),
        "xenstore_data": dict(source["xenstore_data"]),
        "allow_caching": source["allow_caching"],
        "sm_config": {k: v for k, v in source["sm_config"].items() if k != RESET_BASE},
    }


def mark_snapshot(source: str) -> dict[str, Any]:
    return {"is_a_snapshot": True, "snapshot_of": source, "snapshot_time": now_datetime()}
