"""SR.*: create, introduce, forget, destroy, scan, probe, update, supported types, sharing.

As in xapi: SR.create makes the SR on disk through its driver, records the SR and this host's PBD,
then plugs the PBD; forget and destroy refuse while a PBD is plugged (SR_HAS_PBD); destroy also
needs the SR empty of managed VDIs (SR_NOT_EMPTY) and removes the records after the driver.
"""

from __future__ import annotations

import uuid as uuidlib
from typing import Any
from xml.sax.saxutils import escape

from pyxapi.api.dispatch import Call, Handler
from pyxapi.context import Context
from pyxapi.db.store import NULL_REF, new_uuid
from pyxapi.model.errors import ApiError
from pyxapi.ops import storage_rules as rules
from pyxapi.ops.storage_runtime import StorageRuntime, storage_errors, uuid_taken


def runtime(ctx: Context) -> StorageRuntime:
    storage = ctx.services.get("storage")
    if storage is None:
        raise ApiError("INTERNAL_ERROR", "no storage runtime is configured on this host")
    return storage  # type: ignore[no-any-return]


def _check_host(ctx: Context, host: str) -> None:
    if host != ctx.host_ref:
        raise ApiError("HOST_OFFLINE", host)


def _check(call: Call, sr: str, op: str) -> None:
    error = rules.sr_error(call.ctx.store, sr, op)
    if error is not None:
        raise error


def _mark(call: Call, sr: str, op: str) -> Any:
    return rules.marking(call.ctx.store, "SR", sr, op, call.task_ref, rules.refresh_sr)


async def create(
    call: Call,
    host: str,
    device_config: dict[str, str],
    physical_size: int,
    name_label: str,
    name_description: str,
    type: str,
    content_type: str,
    shared: bool,
    sm_config: dict[str, str],
) -> str:
    ctx = call.ctx
    store = ctx.store
    _check_host(ctx, host)
    storage = runtime(ctx)
    sr_type = type.lower()
    driver = storage.driver_for(sr_type)
    sr_uuid = new_uuid()
    # Records first, so the SR exists while the driver works (xapi does the same), removed on failure.
    with store.transaction():
        sr = _introduce(ctx, sr_uuid, name_label, name_description, sr_type, content_type, shared, sm_config)
        pbd = store.create("PBD", {"host": host, "SR": sr, "device_config": dict(device_config)})
    try:
        with storage_errors(store, sr):
            info = await driver.create_sr(dict(device_config), sr_uuid, max(0, physical_size))
    except BaseException:
        with store.transaction():
            store.destroy("PBD", pbd)
            store.destroy("SR", sr)
        raise
    with store.transaction():
        changes: dict[str, Any] = {
            "physical_size": info.physical_size,
            "physical_utilisation": info.physical_utilisation,
            "virtual_allocation": info.virtual_allocation,
            "sm_config": {**sm_config, **info.sm_config},
        }
        if not content_type:
            changes["content_type"] = info.content_type
        store.update("SR", sr, changes)
    try:
        await storage.plug_pbd(pbd)
        await storage.scan(sr)
    except ApiError:
        # xapi keeps an SR whose PBD would not plug; the client sees currently_attached=false.
        pass
    return sr


def _introduce(
    ctx: Context,
    uuid: str,
    name_label: str,
    name_description: str,
    sr_type: str,
    content_type: str,
    shared: bool,
    sm_config: dict[str, str],
) -> str:
    store = ctx.store
    uuid = uuid or new_uuid()
    try:
        uuid = str(uuidlib.UUID(uuid))
    except ValueError:
        raise ApiError("UUID_INVALID", "SR", uuid) from None
    if uuid_taken(store, "SR", uuid):
        raise ApiError("SR_UUID_EXISTS", uuid)
    with store.transaction():
        sr = store.create(
            "SR",
            {
                "uuid": uuid,
                "name_label": name_label,
                "name_description": name_description,
                "type": sr_type.lower(),
                "content_type": content_type,
                "shared": shared,
                "sm_config": dict(sm_config),
                "physical_size": -1,
                "physical_utilisation": -1,
                "virtual_allocation": 0,
                "default_vdi_visibility": True,
            },
        )
        rules.refresh_sr(store, sr)
    return sr


def introduce(
    call: Call,
    uuid: str,
    name_label: str,
    name_description: str,
    type: str,
    content_type: str,
    shared: bool,
    sm_config: dict[str, str],
) -> str:
    return _introduce(call.ctx, uuid, name_label, name_description, type, content_type, shared, sm_config)


def _forget_records(ctx: Context, sr: str) -> None:
    store = ctx.store
    runtime(ctx).forget_attachment(sr)
    with store.transaction():
        for pbd in list(store.get("SR", sr)["PBDs"]):
            if store.exists("PBD", pbd):
                store.destroy("PBD", pbd)
        for vdi in list(store.get("SR", sr)["VDIs"]):
            if store.exists("VDI", vdi):
                store.destroy("VDI", vdi)
        _clear_pool_references(ctx, sr)
        store.destroy("SR", sr)


def _clear_pool_references(ctx: Context, sr: str) -> None:
    store = ctx.store
    for pool, rec in store.items("pool"):
        changes = {k: NULL_REF for k in ("default_SR", "suspend_image_SR", "crash_dump_SR") if rec[k] == sr}
        if changes:
            store.update("pool", pool, changes)
    for host, rec in store.items("host"):
        changes = {k: NULL_REF for k in ("suspend_image_sr", "crash_dump_sr", "local_cache_sr") if rec[k] == sr}
        if changes:
            store.update("host", host, changes)


def forget(call: Call, sr: str) -> None:
    if rules.attached_pbd(call.ctx.store, sr) is not None:
        raise ApiError("SR_HAS_PBD", sr)
    _check(call, sr, "forget")
    _forget_records(call.ctx, sr)


async def destroy(call: Call, sr: str) -> None:
    ctx = call.ctx
    store = ctx.store
    if rules.attached_pbd(store, sr) is not None:
        raise ApiError("SR_HAS_PBD", sr)
    _check(call, sr, "destroy")
    storage = runtime(ctx)
    rec = store.get("SR", sr)
    driver = storage.driver_for(rec["type"])
    pbd = storage.local_pbd(sr)
    if pbd is None:
        raise ApiError("SR_HAS_NO_PBDS", sr)
    with _mark(call, sr, "destroy"):
        handle = storage.handle(sr, pbd)
        with storage_errors(store, sr):
            await driver.destroy_sr(handle)
    _forget_records(ctx, sr)


async def scan(call: Call, sr: str) -> None:
    _check(call, sr, "scan")
    storage = runtime(call.ctx)
    with _mark(call, sr, "scan"):
        await storage.scan(sr)
    # As SM's scan kicks its garbage collector: layers left by deleted snapshots merge in the background.
    storage.spawn(storage.coalesce(sr), f"coalesce of SR {call.ctx.store.get('SR', sr)['uuid']}")


async def update(call: Call, sr: str) -> None:
    _check(call, sr, "update")
    with _mark(call, sr, "update"):
        await runtime(call.ctx).refresh_sizes(sr)


def _probe_driver(call: Call, host: str, sr_type: str) -> Any:
    _check_host(call.ctx, host)
    return runtime(call.ctx).driver_for(sr_type.lower())


async def probe(call: Call, host: str, device_config: dict[str, str], type: str, sm_config: dict[str, str]) -> str:
    """The SRs found at a device_config, as the XML xapi's SM plugins print."""
    driver = _probe_driver(call, host, type)
    with storage_errors(call.ctx.store, NULL_REF):
        found = await driver.probe(dict(device_config))
    lines = ['<?xml version="1.0" ?>', "<SRlist>"]
    for result in found:
        lines += ["\t<SR>", f"\t\t<UUID>{escape(result.uuid)}</UUID>"]
        lines += [f"\t\t<Size>{result.info.physical_size}</Size>", "\t</SR>"]
    lines.append("</SRlist>")
    return "\n".join(lines) + "\n"


async def probe_ext(
    call: Call, host: str, device_config: dict[str, str], type: str, sm_config: dict[str, str]
) -> list[dict[str, Any]]:
    driver = _probe_driver(call, host, type)
    with storage_errors(call.ctx.store, NULL_REF):
        found = await driver.probe(dict(device_config))
    out = []
    for result in found:
        free = max(0, result.info.physical_size - result.info.physical_utilisation)
        out.append(
            {
                "configuration": dict(result.device_config),
                "complete": True,
                "sr": {
                    "uuid": result.uuid,
                    "name_label": "",
                    "name_description": "",
                    "free_space": free,
                    "total_space": result.info.physical_size,
                    "clustered": False,
                    "health": "healthy",
                },
                "extra_info": {},
            }
        )
    return out


def get_supported_types(call: Call) -> list[str]:
    return sorted(runtime(call.ctx).drivers)


def set_shared(call: Call, sr: str, value: bool) -> None:
    store = call.ctx.store
    pbds = store.get("SR", sr)["PBDs"]
    if not value and len(pbds) > 1:
        raise ApiError("SR_HAS_MULTIPLE_PBDS", *pbds)
    store.set_field("SR", sr, "shared", value)


MESSAGES: dict[str, Handler] = {
    "create": create,
    "introduce": introduce,
    "forget": forget,
    "destroy": destroy,
    "scan": scan,
    "update": update,
    "probe": probe,
    "probe_ext": probe_ext,
    "get_supported_types": get_supported_types,
    "set_shared": set_shared,
}
