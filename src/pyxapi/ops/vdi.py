"""VDI.*: create, destroy, clone, snapshot, copy, resize, introduce, forget, update, on_boot.

Each operation checks xapi's rules (storage_rules.vdi_error), marks current_operations while the
driver works, and records what the driver returns. Clones and snapshots are O(1) on the file and
sim drivers (linked qcow2 chains); copies are full and report progress on their task.
"""

from __future__ import annotations

import contextlib
import uuid as uuidlib
from collections.abc import Callable
from typing import Any

from pyxapi.api.dispatch import Call, Handler
from pyxapi.db.store import NULL_REF, new_uuid
from pyxapi.drivers.storage.base import VDIInfo
from pyxapi.model.errors import ApiError
from pyxapi.ops import storage_rules as rules
from pyxapi.ops import vm_snapshot_disks as live
from pyxapi.ops.sr import runtime
from pyxapi.ops.storage_runtime import (
    RESET_BASE,
    mark_snapshot,
    snapshot_fields,
    storage_errors,
    uuid_taken,
    vdi_by_location,
)

_CREATE_FIELDS = (
    "name_label",
    "name_description",
    "type",
    "sharable",
    "read_only",
    "other_config",
    "xenstore_data",
    "sm_config",
    "tags",
)
_FORMATS = ("raw", "qcow2")


def _mark(call: Call, vdi: str, op: str) -> Any:
    return rules.marking(call.ctx.store, "VDI", vdi, op, call.task_ref, rules.refresh_vdi)


def _progress(call: Call) -> Callable[[float], None] | None:
    task = call.task_ref
    if task is None:
        return None
    return lambda p: call.ctx.tasks.set_progress(task, p)


async def _refresh_sizes(call: Call, sr: str) -> None:
    with contextlib.suppress(ApiError):  # the operation itself succeeded; sizes catch up on the next one
        await runtime(call.ctx).refresh_sizes(sr)


async def create(call: Call, record: dict[str, Any]) -> str:
    store = call.ctx.store
    sr = record.get("SR", NULL_REF)
    store.get("SR", sr)
    error = rules.sr_error(store, sr, "vdi_create")
    if error is not None:
        raise error
    storage = runtime(call.ctx)
    driver, handle = await storage.sr(sr)
    sm_config = dict(record.get("sm_config", {}))
    wanted = sm_config.get("image-format")
    vdi_uuid = new_uuid()
    with storage_errors(store, sr):
        info = await driver.create_vdi(
            handle, vdi_uuid, record.get("virtual_size", 0), wanted if wanted in _FORMATS else None  # type: ignore[arg-type]
        )
    fields = {k: record[k] for k in _CREATE_FIELDS if k in record}
    fields["type"] = fields.get("type") or "user"
    ref = storage.new_vdi_record(sr, info, {**fields, "uuid": vdi_uuid})
    await _refresh_sizes(call, sr)
    return ref


async def destroy(call: Call, vdi: str) -> None:
    store = call.ctx.store
    rules.check_vdi(store, vdi, "destroy")
    rec = store.get("VDI", vdi)
    sr = rec["SR"]
    storage = runtime(call.ctx)
    driver, handle = await storage.sr(sr)
    with _mark(call, vdi, "destroy"):
        for location in (rec["location"], rec["sm_config"].get(RESET_BASE)):
            if not location:
                continue
            try:
                with storage_errors(store, sr, vdi):
                    await driver.destroy_vdi(handle, location)
            except ApiError as e:
                if e.code != "VDI_MISSING":  # already gone from the SR: forgetting the record is all that is left
                    raise
        with store.transaction():
            for vbd in list(rec["VBDs"]):
                if store.exists("VBD", vbd):
                    store.destroy("VBD", vbd)
            if store.exists("VDI", vdi):  # a scan that saw the image gone may have forgotten it already
                store.destroy("VDI", vdi)
            rules.refresh_sr(store, sr)
    # Bases left with a single child are merged in the background, as xapi's SR garbage collector does.
    storage.spawn(storage.coalesce(sr), f"coalesce of SR {store.get('SR', sr)['uuid']}")
    await _refresh_sizes(call, sr)


async def branch(call: Call, vdi: str, op: str, pending: list[live.Switch] | None = None) -> str:
    """Clone or snapshot. A disk a running guest writes is switched onto its new overlay at once, or,
    given `pending`, left for the caller to switch together with others (one instant for a VM)."""
    store = call.ctx.store
    rules.check_vdi(store, vdi, op)
    rec = store.get("VDI", vdi)
    sr = rec["SR"]
    storage = runtime(call.ctx)
    driver, handle = await storage.sr(sr)
    running = live.live_disk(call.ctx, vdi)
    with _mark(call, vdi, op):
        new = new_uuid()
        async with live.quiet_if_copied(call.ctx, running):
            with storage_errors(store, sr, vdi):
                if op == "snapshot":
                    result = await driver.snapshot_vdi(handle, rec["location"], new)
                else:
                    result = await driver.clone_vdi(handle, rec["location"], new)
        storage.apply_vdi_info(vdi, result.source)
        fields = {**snapshot_fields(rec), "uuid": new}
        if op == "snapshot":
            fields.update(mark_snapshot(vdi))
        ref = storage.new_vdi_record(sr, result.vdi, fields)
        if running is not None and result.source_repointed:
            if pending is None:
                await live.switch(call.ctx, [live.Switch(running, ref)])
            else:
                pending.append(live.Switch(running, ref))
    await _refresh_sizes(call, sr)
    return ref


async def clone(call: Call, vdi: str, driver_params: dict[str, str]) -> str:
    return await branch(call, vdi, "clone")


async def snapshot(call: Call, vdi: str, driver_params: dict[str, str]) -> str:
    return await branch(call, vdi, "snapshot")


async def copy(
    call: Call, vdi: str, sr: str, base_vdi: str, into_vdi: str, progress: Callable[[float], None] | None = None
) -> str:
    """A full copy into a new VDI on `sr`, or over the contents of `into_vdi`. A base_vdi only lets
    xapi send fewer blocks; copying everything gives the same result."""
    ctx = call.ctx
    store = ctx.store
    rules.check_vdi(store, vdi, "copy")
    src = store.get("VDI", vdi)
    if into_vdi != NULL_REF:
        into = store.get("VDI", into_vdi)
        if into["read_only"]:
            raise ApiError("VDI_READONLY", into_vdi)
        if into["virtual_size"] < src["virtual_size"]:
            raise ApiError("VDI_TOO_SMALL", into_vdi, src["virtual_size"])
        if rules.active_vbds(store, into_vdi):
            raise ApiError("VDI_IN_USE", into_vdi, "copy")
        sr = into["SR"]
    elif sr == NULL_REF:
        sr = src["SR"]
    else:
        error = rules.sr_error(store, sr, "vdi_create")
        if error is not None:
            raise error
    storage = runtime(ctx)
    src_driver, src_handle = await storage.sr(src["SR"])
    dst_driver, dst_handle = await storage.sr(sr)
    progress = progress or _progress(call)  # a VM.copy gives each disk its share of the task's progress
    with _mark(call, vdi, "copy"):
        if into_vdi != NULL_REF:
            target = store.get("VDI", into_vdi)["location"]
            async with storage.spool(src["SR"], src_driver, src_handle, src["location"], progress) as image:
                with storage_errors(store, sr, into_vdi):
                    info = await dst_driver.import_data(dst_handle, target, image, "qcow2")
            storage.apply_vdi_info(into_vdi, info)
            await _refresh_sizes(call, sr)
            return into_vdi
        info = await _copy_new(call, src, src_driver, src_handle, dst_driver, dst_handle, sr, progress)
        fields = {k: v for k, v in snapshot_fields(src).items() if k != "sm_config"}
        ref = storage.new_vdi_record(sr, info, {**fields, "read_only": False, "uuid": info.uuid or new_uuid()})
    await _refresh_sizes(call, sr)
    return ref


async def _copy_new(
    call: Call, src: dict[str, Any], src_driver: Any, src_handle: Any, dst_driver: Any, dst_handle: Any,
    sr: str, progress: Callable[[float], None] | None,
) -> VDIInfo:
    store = call.ctx.store
    storage = runtime(call.ctx)
    new = new_uuid()
    same_kind = src_driver is dst_driver and "VDI_COPY" in rules.sm_capabilities(store, src_driver.sr_type)
    with storage_errors(store, src["SR"]):
        if same_kind:
            return await src_driver.copy_vdi(src_handle, src["location"], dst_handle, new, progress)  # type: ignore[no-any-return]
    # Across driver types (an ISO into a disk SR, sim into file): through an image file.
    async with storage.spool(src["SR"], src_driver, src_handle, src["location"], progress) as image:
        with storage_errors(store, sr):
            return await dst_driver.import_new_vdi(dst_handle, new, image, "qcow2")  # type: ignore[no-any-return]


async def resize(call: Call, vdi: str, size: int) -> None:
    await _resize(call, vdi, size, "resize")


async def resize_online(call: Call, vdi: str, size: int) -> None:
    await _resize(call, vdi, size, "resize_online")


async def _resize(call: Call, vdi: str, size: int, op: str) -> None:
    store = call.ctx.store
    rules.check_vdi(store, vdi, op)
    rec = store.get("VDI", vdi)
    sr = rec["SR"]
    storage = runtime(call.ctx)
    driver, handle = await storage.sr(sr)
    running = live.live_disk(call.ctx, vdi) if op == "resize_online" else None
    if running is not None and size < rec["virtual_size"]:
        raise ApiError("VDI_TOO_SMALL", vdi, rec["virtual_size"])  # the image may not show the last growth yet
    with _mark(call, vdi, op):
        with storage_errors(store, sr, vdi):
            info = await driver.resize_vdi(handle, rec["location"], size, online=running is not None)
        if running is not None:
            # The running emulator holds the image: only it may grow it (QMP block_resize). The
            # driver already said what the VDI will be once it has.
            await live.grow(call.ctx, running, info.virtual_size)
        storage.apply_vdi_info(vdi, info)
    await _refresh_sizes(call, sr)


def _check_new_identity(call: Call, uuid: str, sr: str, location: str) -> str:
    store = call.ctx.store
    store.get("SR", sr)
    uuid = uuid or new_uuid()
    try:
        uuid = str(uuidlib.UUID(uuid))
    except ValueError:
        raise ApiError("UUID_INVALID", "VDI", uuid) from None
    if uuid_taken(store, "VDI", uuid):
        raise ApiError("DB_UNIQUENESS_CONSTRAINT_VIOLATION", "VDI", "uuid", uuid)
    if vdi_by_location(store, sr, location) is not None:
        raise ApiError("LOCATION_NOT_UNIQUE", sr, location)
    return uuid


async def introduce(
    call: Call, uuid: str, name_label: str, name_description: str, SR: str, type: str, sharable: bool,
    read_only: bool, other_config: dict[str, str], location: str, xenstore_data: dict[str, str],
    sm_config: dict[str, str], managed: bool, virtual_size: int, physical_utilisation: int,
    metadata_of_pool: str, is_a_snapshot: bool, snapshot_time: str, snapshot_of: str,
) -> str:
    """Make a VDI record for an image already in the SR (the driver confirms it is there)."""
    store = call.ctx.store
    error = rules.sr_error(store, SR, "vdi_introduce")
    if error is not None:
        raise error
    uuid = _check_new_identity(call, uuid, SR, location)
    storage = runtime(call.ctx)
    driver, handle = await storage.sr(SR)
    try:
        with storage_errors(store, SR):
            info = await driver.stat_vdi(handle, location)
    except ApiError as e:
        if e.code == "VDI_MISSING":
            raise ApiError("VDI_LOCATION_MISSING", SR, location) from None
        raise
    fields = {
        "uuid": uuid,
        "name_label": name_label or location,
        "name_description": name_description,
        "type": type,
        "sharable": sharable,
        "read_only": read_only or info.read_only,
        "other_config": other_config,
        "xenstore_data": xenstore_data,
        "sm_config": sm_config,
        "managed": managed,
        "metadata_of_pool": metadata_of_pool,
        "is_a_snapshot": is_a_snapshot,
        "snapshot_time": snapshot_time,
        "snapshot_of": snapshot_of,
    }
    return storage.new_vdi_record(SR, info, fields)


def db_introduce(
    call: Call, uuid: str, name_label: str, name_description: str, SR: str, type: str, sharable: bool,
    read_only: bool, other_config: dict[str, str], location: str, xenstore_data: dict[str, str],
    sm_config: dict[str, str], managed: bool, virtual_size: int, physical_utilisation: int,
    metadata_of_pool: str, is_a_snapshot: bool, snapshot_time: str, snapshot_of: str, cbt_enabled: bool,
) -> str:
    """The record only, nothing asked of the storage (xapi's pool/db_introduce)."""
    store = call.ctx.store
    uuid = _check_new_identity(call, uuid, SR, location)
    with store.transaction():
        ref = store.create(
            "VDI",
            {
                "uuid": uuid, "name_label": name_label, "name_description": name_description, "SR": SR,
                "type": type, "sharable": sharable, "read_only": read_only, "other_config": other_config,
                "location": location, "xenstore_data": xenstore_data, "sm_config": sm_config,
                "managed": managed, "virtual_size": virtual_size, "physical_utilisation": physical_utilisation,
                "metadata_of_pool": metadata_of_pool, "is_a_snapshot": is_a_snapshot,
                "snapshot_time": snapshot_time, "snapshot_of": snapshot_of, "cbt_enabled": cbt_enabled,
                "on_boot": "persist",
            },
        )
        rules.refresh_vdi(store, ref)
        rules.refresh_sr(store, SR)
    return ref


def db_forget(call: Call, vdi: str) -> None:
    store = call.ctx.store
    sr = store.get("VDI", vdi)["SR"]
    with store.transaction():
        store.destroy("VDI", vdi)
        rules.refresh_sr(store, sr)


def forget(call: Call, vdi: str) -> None:
    rules.check_vdi(call.ctx.store, vdi, "forget")
    db_forget(call, vdi)


async def update(call: Call, vdi: str) -> None:
    store = call.ctx.store
    rules.check_vdi(store, vdi, "update")
    rec = store.get("VDI", vdi)
    storage = runtime(call.ctx)
    driver, handle = await storage.sr(rec["SR"])
    with storage_errors(store, rec["SR"], vdi):
        info = await driver.stat_vdi(handle, rec["location"])
    storage.apply_vdi_info(vdi, info)


async def set_on_boot(call: Call, vdi: str, value: str) -> None:
    """`reset` keeps a hidden snapshot of the disk as it is now; every boot starts from a fresh
    clone of it. `persist` drops that snapshot."""
    store = call.ctx.store
    rec = store.get("VDI", vdi)
    sr = rec["SR"]
    current = rec["sm_config"].get(RESET_BASE)
    if value == rec["on_boot"] and (value == "persist" or current):
        return
    caps = rules.sm_capabilities(store, store.get("SR", sr)["type"])
    if value == "reset" and not {"VDI_SNAPSHOT", "VDI_CLONE"} <= caps:
        raise ApiError("SR_OPERATION_NOT_SUPPORTED", sr)
    if value == "reset" and any(b["mode"] == "RW" for _, b in rules.active_vbds(store, vdi)):
        raise ApiError("VDI_IN_USE", vdi, "set_on_boot")
    storage = runtime(call.ctx)
    driver, handle = await storage.sr(sr)
    with _mark(call, vdi, "set_on_boot"):
        sm_config = {k: v for k, v in rec["sm_config"].items() if k != RESET_BASE}
        with storage_errors(store, sr, vdi):
            if value == "reset":
                result = await driver.snapshot_vdi(handle, rec["location"], new_uuid())
                storage.apply_vdi_info(vdi, result.source)
                sm_config[RESET_BASE] = result.vdi.location
            elif current:
                with contextlib.suppress(ApiError):
                    await driver.destroy_vdi(handle, current)
        store.update("VDI", vdi, {"on_boot": value, "sm_config": sm_config})
    await _refresh_sizes(call, sr)


def _setter(fname: str) -> Handler:
    def set_(call: Call, vdi: str, value: Any) -> None:
        store = call.ctx.store
        with store.transaction():
            store.set_field("VDI", vdi, fname, value)
            rules.refresh_vdi(store, vdi)

    return set_


MESSAGES: dict[str, Handler] = {
    "create": create,
    "destroy": destroy,
    "clone": clone,
    "snapshot": snapshot,
    "copy": copy,
    "resize": resize,
    "resize_online": resize_online,
    "introduce": introduce,
    "db_introduce": db_introduce,
    "pool_introduce": db_introduce,
    "db_forget": db_forget,
    "forget": forget,
    "update": update,
    "set_on_boot": set_on_boot,
    "set_allow_caching": _setter("allow_caching"),
    "set_read_only": _setter("read_only"),
    "set_sharable": _setter("sharable"),
    "set_managed": _setter("managed"),
}
