"""VBD.*: create with xapi's checks, destroy, hot-plug/unplug into running guests, CD insert/eject.

A VBD's disk is attached through its storage driver (which enforces one writer per image) and then
handed to the hypervisor; the domain spec saved for resume is kept in step with hot-plugs.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from pyxapi.api.dispatch import Call, Handler
from pyxapi.context import Context
from pyxapi.db.store import NULL_REF
from pyxapi.drivers.hypervisor import base as hv
from pyxapi.model.errors import OPERATION_NOT_ALLOWED, ApiError
from pyxapi.ops import storage_rules as rules
from pyxapi.ops import vm_state
from pyxapi.ops.sr import runtime
from pyxapi.ops.storage_runtime import device_number
from pyxapi.ops.vm import MAX_VBD_DEVICES, driver_errors
from pyxapi.ops.vm_state import hypervisor
from pyxapi.wire.marshal import now_datetime

UNPLUG_TIMEOUT = 30.0
MAX_CD_DEVICE = 3  # CD drives sit on the emulated IDE bus: two channels, two drives each
_DISK_TYPES = frozenset({"system", "user", "ephemeral", "suspend", "crashdump", "metadata"})
_NAMED = re.compile(r"^(?:xvd|hd|sd)([a-p])$")


def _number(userdevice: str) -> int | None:
    """userdevice as a slot number: '2', or a Linux-style name ('xvdc', 'hdc') xapi also accepts."""
    if userdevice.isdigit():
        return int(userdevice)
    m = _NAMED.match(userdevice)
    return ord(m.group(1)) - ord("a") if m else None


def _choose_device(ctx: Context, vm: str, userdevice: str, is_cd: bool) -> str:
    store = ctx.store
    used = {_number(str(store.get("VBD", b)["userdevice"])) for b in store.get("VM", vm)["VBDs"]}
    limit = MAX_CD_DEVICE + 1 if is_cd else MAX_VBD_DEVICES
    free = [n for n in range(limit) if n not in used]
    if userdevice == "autodetect":
        if not free:
            raise ApiError("INVALID_DEVICE", userdevice)
        return str(free[0])
    number = _number(userdevice)
    if number is None or not 0 <= number < limit:
        raise ApiError("INVALID_DEVICE", userdevice)
    if number in used:
        raise ApiError("DEVICE_ALREADY_EXISTS", userdevice)
    return str(number)


def create(call: Call, record: dict[str, Any]) -> str:
    ctx = call.ctx
    store = ctx.store
    vm = record.get("VM", NULL_REF)
    store.get("VM", vm)
    vdi = record.get("VDI", NULL_REF)
    empty = bool(record.get("empty", False))
    vbd_type = record.get("type") or "Disk"
    mode = record.get("mode") or "RW"
    vdi_rec = None
    if not empty:
        vdi_rec = store.get("VDI", vdi)
        if vdi_rec["type"] not in _DISK_TYPES:
            raise ApiError("VDI_INCOMPATIBLE_TYPE", vdi, vdi_rec["type"])
    if vbd_type == "CD" and mode != "RO":
        raise ApiError("VBD_CDS_MUST_BE_READONLY")
    if vbd_type != "CD" and empty:
        raise ApiError("VBD_NOT_REMOVABLE_MEDIA", "in constructor")
    if vdi_rec is not None:
        if vbd_type == "CD":
            _assert_iso(ctx, vdi)
        if mode == "RW" and vdi_rec["read_only"]:
            raise ApiError("VDI_READONLY", vdi)
    for op in store.get("VM", vm)["current_operations"].values():
        if op in ("migrate_send", "pool_migrate"):
            raise ApiError("OTHER_OPERATION_IN_PROGRESS", "VM", vm, op)
    userdevice = _choose_device(ctx, vm, str(record.get("userdevice", "autodetect")), vbd_type == "CD")
    with store.transaction():
        metrics = store.create("VBD_metrics", {"last_updated": now_datetime()})
        vbd = store.create(
            "VBD",
            {
                "VM": vm,
                "VDI": NULL_REF if empty else vdi,
                "userdevice": userdevice,
                "device": "",
                "bootable": bool(record.get("bootable", False)),
                "mode": mode,
                "type": vbd_type,
                "unpluggable": bool(record.get("unpluggable", True)),
                "empty": empty,
                "other_config": dict(record.get("other_config", {})),
                "qos_algorithm_type": record.get("qos_algorithm_type", ""),
                "qos_algorithm_params": dict(record.get("qos_algorithm_params", {})),
                "currently_attached": False,
                "metrics": metrics,
            },
        )
        rules.refresh_vbd(store, vbd)
        if not empty:
            rules.refresh_vdi(store, vdi)
    return vbd


def _assert_iso(ctx: Context, vdi: str) -> None:
    sr = ctx.store.get("VDI", vdi)["SR"]
    content = ctx.store.get("SR", sr)["content_type"] if ctx.store.exists("SR", sr) else ""
    if content != "iso":
        raise ApiError("VDI_IS_NOT_ISO", vdi, content)


def destroy(call: Call, vbd: str) -> None:
    store = call.ctx.store
    rec = store.get("VBD", vbd)
    if rec["currently_attached"] or rec["reserved"]:
        vm = store.find("VM", rec["VM"])
        owner = vm["uuid"] if vm else rec["VM"]
        raise ApiError(OPERATION_NOT_ALLOWED, f"VBD '{rec['uuid']}' still attached to '{owner}'")
    with store.transaction():
        if rec["metrics"] != NULL_REF and store.exists("VBD_metrics", rec["metrics"]):
            store.destroy("VBD_metrics", rec["metrics"])
        store.destroy("VBD", vbd)
        if rec["VDI"] != NULL_REF:
            rules.refresh_vdi(store, rec["VDI"])


def _check(call: Call, vbd: str, op: str) -> None:
    error = rules.vbd_error(call.ctx.store, vbd, op)
    if error is not None:
        raise error


def _mark(call: Call, vbd: str, op: str) -> Any:
    return rules.marking(call.ctx.store, "VBD", vbd, op, call.task_ref, rules.refresh_vbd)


def _save_disk(ctx: Context, vm: str, device: int, disk: hv.DiskSpec | None) -> None:
    """Keep the saved domain spec in step, so a resume offers the devices the guest has now."""
    uuid = ctx.store.get("VM", vm)["uuid"]
    spec = vm_state.load_spec(ctx, uuid)
    if spec is None:
        return
    disks = [d for d in spec.disks if d.device != device] + ([disk] if disk is not None else [])
    vm_state.save_spec(ctx, replace(spec, disks=tuple(sorted(disks, key=lambda d: d.device))))


def _running_domain(call: Call, vm: str) -> str:
    return str(call.ctx.store.get("VM", vm)["uuid"])


async def plug(call: Call, vbd: str) -> None:
    ctx = call.ctx
    _check(call, vbd, "plug")
    rec = ctx.store.get("VBD", vbd)
    vm = rec["VM"]
    storage = runtime(ctx)
    with _mark(call, vbd, "plug"):
        disk = await storage.attach_vbd(vbd)
        if disk is None:
            return
        try:
            async with _device_errors(vbd, vm):
                await hypervisor(ctx).plug_disk(_running_domain(call, vm), disk)
        except BaseException as e:
            await storage.detach_vbd(vbd)
            if isinstance(e, hv.DeviceError | hv.GuestTimeout):
                raise ApiError(OPERATION_NOT_ALLOWED, f"disk {disk.device}: {e}") from None
            raise
        storage.set_vbd_attached(vbd, True)
        _save_disk(ctx, vm, disk.device, disk)


async def _unplug(call: Call, vbd: str, op: str) -> None:
    ctx = call.ctx
    _check(call, vbd, op)
    rec = ctx.store.get("VBD", vbd)
    vm = rec["VM"]
    device = device_number(rec)
    with _mark(call, vbd, op):
        try:
            async with _device_errors(vbd, vm):
                await hypervisor(ctx).unplug_disk(_running_domain(call, vm), device, timeout=UNPLUG_TIMEOUT)
        except hv.GuestTimeout:
            if op == "unplug_force":
                raise ApiError("DEVICE_DETACH_TIMEOUT", "VBD", vbd) from None
            raise ApiError("DEVICE_DETACH_REJECTED", "VBD", vbd, "the guest did not release the device") from None
        except hv.DeviceError:
            pass  # the domain no longer has it: finish detaching on our side
        await runtime(ctx).detach_vbd(vbd)
        runtime(ctx).set_vbd_attached(vbd, False)
        _save_disk(ctx, vm, device, None)


async def unplug(call: Call, vbd: str) -> None:
    await _unplug(call, vbd, "unplug")


async def unplug_force(call: Call, vbd: str) -> None:
    await _unplug(call, vbd, "unplug_force")


@contextlib.asynccontextmanager
async def _device_errors(vbd: str, vm: str) -> AsyncIterator[None]:
    """The hypervisor's typed errors as XenAPI errors; GuestTimeout and DeviceError pass through for
    the caller to decide (an unplug the guest refuses is not a shutdown the guest refused)."""
    try:
        yield
    except (hv.GuestTimeout, hv.DeviceError):
        raise
    except hv.HypervisorError as e:
        async with driver_errors(vm):
            raise e


def _live(call: Call, rec: dict[str, Any]) -> bool:
    """Whether the VBD's drive exists in a running domain now (media changes go to the domain)."""
    vm = call.ctx.store.get("VM", rec["VM"])
    return bool(rec["currently_attached"]) and vm["power_state"] in ("Running", "Paused")


async def insert(call: Call, vbd: str, vdi: str) -> None:
    ctx = call.ctx
    store = ctx.store
    _check(call, vbd, "insert")
    _assert_iso(ctx, vdi)
    if not store.get("VDI", vdi)["managed"]:
        raise ApiError("VDI_NOT_MANAGED", vdi)
    rec = store.get("VBD", vbd)
    with _mark(call, vbd, "insert"):
        store.update("VBD", vbd, {"VDI": vdi, "empty": False})
        if not _live(call, rec):
            rules.refresh_vdi(store, vdi)
            return
        storage = runtime(ctx)
        try:
            disk = await storage.attach_vbd(vbd, reset=False)
            assert disk is not None
            try:
                await _set_media(call, vbd, rec, disk.path)
            except BaseException:
                await storage.detach_vbd(vbd)
                raise
        except BaseException:
            if store.exists("VBD", vbd):
                store.update("VBD", vbd, {"VDI": NULL_REF, "empty": True})
            raise
        _save_disk(ctx, rec["VM"], disk.device, disk)
        rules.refresh_vdi(store, vdi)


async def eject(call: Call, vbd: str) -> None:
    ctx = call.ctx
    store = ctx.store
    _check(call, vbd, "eject")
    rec = store.get("VBD", vbd)
    with _mark(call, vbd, "eject"):
        if _live(call, rec):
            await _set_media(call, vbd, rec, None)
            await runtime(ctx).detach_vbd(vbd)
            device = device_number(rec)
            _save_disk(ctx, rec["VM"], device, hv.DiskSpec(device, None, "raw", True, True, rec["bootable"]))
        store.update("VBD", vbd, {"VDI": NULL_REF, "empty": True})
        if store.exists("VDI", rec["VDI"]):
            rules.refresh_vdi(store, rec["VDI"])


async def _set_media(call: Call, vbd: str, rec: dict[str, Any], path: str | None) -> None:
    try:
        async with _device_errors(vbd, rec["VM"]):
            await hypervisor(call.ctx).set_cdrom(_running_domain(call, rec["VM"]), device_number(rec), path)
    except (hv.DeviceError, hv.GuestTimeout) as e:
        raise ApiError(OPERATION_NOT_ALLOWED, f"CD drive {rec['userdevice']}: {e}") from None


def assert_attachable(call: Call, vbd: str) -> None:
    _check(call, vbd, "attach")
    rec = call.ctx.store.get("VBD", vbd)
    if not rec["empty"] and rec["VDI"] != NULL_REF:
        sr = call.ctx.store.get("VDI", rec["VDI"])["SR"]
        if rules.attached_pbd(call.ctx.store, sr) is None:
            raise ApiError("SR_HAS_NO_PBDS", sr)


def set_mode(call: Call, vbd: str, value: str) -> None:
    store = call.ctx.store
    rec = store.get("VBD", vbd)
    power = store.get("VM", rec["VM"])["power_state"]
    if power != "Halted":
        raise ApiError("VM_BAD_POWER_STATE", rec["VM"], "halted", power.lower())
    if rec["type"] == "CD" and value != "RO":
        raise ApiError("VBD_CDS_MUST_BE_READONLY")
    with store.transaction():
        store.set_field("VBD", vbd, "mode", value)
        rules.refresh_vbd(store, vbd)


MESSAGES: dict[str, Handler] = {
    "create": create,
    "destroy": destroy,
    "plug": plug,
    "unplug": unplug,
    "unplug_force": unplug_force,
    "insert": insert,
    "eject": eject,
    "assert_attachable": assert_attachable,
    "set_mode": set_mode,
}
