"""Suspend images as VDIs: the memory image QEMU writes lives on the pool's suspend_image_SR and
is named by VM.suspend_VDI, as in xapi; resume reads it back and then deletes it."""

from __future__ import annotations

from pyxapi.context import Context
from pyxapi.db.store import NULL_REF, new_uuid
from pyxapi.model.errors import ApiError
from pyxapi.ops.storage_runtime import StorageRuntime, storage_errors

# QEMU's migration stream is the guest's RAM plus device state; leave room for the latter.
SUSPEND_HEADROOM = 64 << 20


def _storage(ctx: Context) -> StorageRuntime:
    storage = ctx.services.get("storage")
    if storage is None:
        raise ApiError("INTERNAL_ERROR", "no storage runtime configured")
    return storage  # type: ignore[no-any-return]


def _suspend_sr(ctx: Context, vm: str) -> str:
    store = ctx.store
    host_sr = store.get("host", ctx.host_ref)["suspend_image_sr"]
    pool_sr = store.get("pool", ctx.pool_ref)["suspend_image_SR"]
    for sr in (host_sr, pool_sr):
        if sr != NULL_REF and store.exists("SR", sr):
            return str(sr)
    raise ApiError("VM_NO_SUSPEND_SR", vm)


async def new_image(ctx: Context, vm: str) -> tuple[str, str]:
    """Create the suspend VDI; returns (VDI ref, path the hypervisor writes the image to)."""
    store, storage = ctx.store, _storage(ctx)
    rec = store.get("VM", vm)
    sr = _suspend_sr(ctx, vm)
    driver, handle = await storage.sr(sr)
    vdi_uuid = new_uuid()
    with storage_errors(store, sr):
        info = await driver.create_vdi(handle, vdi_uuid, rec["memory_static_max"] + SUSPEND_HEADROOM, "raw")
    vdi = storage.new_vdi_record(
        sr, info, {"uuid": vdi_uuid, "name_label": f"Suspend image for {rec['name_label']}", "type": "suspend"}
    )
    with storage_errors(store, sr, vdi):
        attach = await driver.attach_vdi(handle, info.location)
    return vdi, attach.path


async def release_image(ctx: Context, vdi: str) -> None:
    """The hypervisor is done with the image file (written, or read back)."""
    store, storage = ctx.store, _storage(ctx)
    if not store.exists("VDI", vdi):
        return
    rec = store.get("VDI", vdi)
    driver, handle = await storage.sr(rec["SR"])
    with storage_errors(store, rec["SR"], vdi):
        await driver.detach_vdi(handle, rec["location"])


async def open_image(ctx: Context, vm: str) -> tuple[str, str]:
    """The VM's suspend VDI and its path, for resume; VM_HAS_NO_SUSPEND_VDI when there is none."""
    store, storage = ctx.store, _storage(ctx)
    vdi = store.get("VM", vm)["suspend_VDI"]
    if vdi == NULL_REF or not store.exists("VDI", vdi):
        raise ApiError("VM_HAS_NO_SUSPEND_VDI", vm)
    rec = store.get("VDI", vdi)
    driver, handle = await storage.sr(rec["SR"])
    with storage_errors(store, rec["SR"], vdi):
        attach = await driver.attach_vdi(handle, rec["location"], read_only=True)
    return str(vdi), attach.path


async def discard(ctx: Context, vm: str) -> None:
    """Throw the memory image away (after resume, or when a suspended VM is shut down)."""
    store, storage = ctx.store, _storage(ctx)
    if not store.exists("VM", vm):
        return
    vdi = store.get("VM", vm)["suspend_VDI"]
    store.set_field("VM", vm, "suspend_VDI", NULL_REF)
    if vdi == NULL_REF or not store.exists("VDI", vdi):
        return
    rec = store.get("VDI", vdi)
    driver, handle = await storage.sr(rec["SR"])
    with storage_errors(store, rec["SR"], vdi):
        await driver.destroy_vdi(handle, rec["location"])
    store.destroy("VDI", vdi)
    await storage.refresh_sizes(rec["SR"])
