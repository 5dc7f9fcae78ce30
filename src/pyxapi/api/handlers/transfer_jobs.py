"""The storage side of /import_raw_vdi and /export_raw_vdi: whose disk, who may touch it meanwhile,
and the driver calls that move the bytes.

A transfer holds its VDI the way xapi's handlers do (Sm_fs_ops.with_block_attached_device): through
a VBD of the control domain, attached for as long as the transfer runs, read-write for an import
and read-only for an export. Every existing rule then applies unchanged: VDI.destroy, resize, SR
detach or a VM wanting the disk read-write get VDI_IN_USE, a disk a running VM writes cannot be
claimed, two exports may share a disk. (VDI.current_operations cannot show the transfer: the
model's vdi_operations enum has no import or export, and strict clients reject unknown values.)

The VBD names its task in other_config; transfers do not survive the daemon, so claims and work
files left by a crash are cleared when the endpoint starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import uuid as uuidlib
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import Any

from pyxapi.context import Context
from pyxapi.db.store import NULL_REF, Store, new_uuid
from pyxapi.drivers.storage.base import ImageFormat
from pyxapi.model.errors import HANDLE_INVALID, UUID_INVALID, ApiError
from pyxapi.ops import storage_rules as rules
from pyxapi.ops.sr import runtime
from pyxapi.ops.storage_runtime import device_name, storage_errors
from pyxapi.wire.marshal import now_datetime

from .transfer_body import apply_chunk_protocol

log = logging.getLogger(__name__)

TRANSFER_KEY = "pyxapi_transfer_task"
"""VBD.other_config key marking a control-domain VBD that holds a disk for an HTTP transfer."""

IMPORTED_NAME = "Imported VDI"  # xapi's name for a VDI an upload into an SR creates
MAX_CONTROL_DOMAIN_DEVICES = 256
Mode = str  # "RW" | "RO"


def work_dir(ctx: Context) -> Path:
    return ctx.config.data_dir / "tmp" / "transfers"


def new_work_file(ctx: Context, suffix: str) -> Path:
    where = work_dir(ctx)
    where.mkdir(parents=True, exist_ok=True)
    return where / f"{uuidlib.uuid4().hex}.{suffix}"


# ------------------------------------------------------------------------------------ naming objects


def resolve(store: Store, cls: str, value: str) -> str:
    """A `vdi=`/`base=`/`sr_uuid=` value: a ref when it names one, else a uuid (xapi's vdi_of_req),
    so an unknown value of either kind answers UUID_INVALID [class, value]."""
    if value.startswith("OpaqueRef:") and store.exists(cls, value):
        return value
    try:
        return store.by_uuid(cls, value)
    except ApiError:
        raise ApiError(UUID_INVALID, cls, value) from None


def resolve_sr_ref(store: Store, value: str) -> str:
    if not store.exists("SR", value):
        raise ApiError(HANDLE_INVALID, "SR", value)
    return value


# -------------------------------------------------------------------------------------------- claims


def control_domain(ctx: Context) -> str:
    vm = ctx.store.get("host", ctx.host_ref)["control_domain"]
    if vm == NULL_REF or not ctx.store.exists("VM", vm):
        raise ApiError("INTERNAL_ERROR", "this host has no control domain record")
    return str(vm)


def claim(ctx: Context, vdi: str, mode: Mode, task: str) -> str:
    """Attach `vdi` to the control domain for a transfer, or raise the error an attach would give.
    No await between the checks and the write: nothing can slip in between."""
    store = ctx.store
    dom0 = control_domain(ctx)
    wanted = {"VDI": vdi, "empty": False, "mode": mode, "type": "Disk"}
    vdi_rec = store.get("VDI", vdi)
    if not vdi_rec["managed"]:
        raise ApiError("VDI_NOT_MANAGED", vdi)
    error = rules.sharing_error(store, NULL_REF, wanted)
    if error is not None:
        raise error
    used = {str(store.get("VBD", b)["userdevice"]) for b in store.get("VM", dom0)["VBDs"] if store.exists("VBD", b)}
    device = next((str(n) for n in range(MAX_CONTROL_DOMAIN_DEVICES) if str(n) not in used), None)
    if device is None:
        raise ApiError("INVALID_DEVICE", "autodetect")
    with store.transaction():
        metrics = store.create("VBD_metrics", {"last_updated": now_datetime()})
        record: dict[str, Any] = {
            **wanted,
            "VM": dom0,
            "userdevice": device,
            "bootable": False,
            "unpluggable": False,  # VBD.unplug must not pull a disk from under a transfer
            "other_config": {TRANSFER_KEY: task},
            "currently_attached": True,
            "metrics": metrics,
        }
        record["device"] = device_name(record)
        vbd = store.create("VBD", record)
        rules.refresh_vbd(store, vbd)
        rules.refresh_vdi(store, vdi)
    return vbd


def release(ctx: Context, vbd: str) -> None:
    store = ctx.store
    rec = store.find("VBD", vbd)
    if rec is None:
        return
    with store.transaction():
        if rec["metrics"] != NULL_REF and store.exists("VBD_metrics", rec["metrics"]):
            store.destroy("VBD_metrics", rec["metrics"])
        store.destroy("VBD", vbd)
        if store.exists("VDI", rec["VDI"]):
            rules.refresh_vdi(store, rec["VDI"])


async def clear_leftovers(ctx: Context) -> None:
    """At start-up: claims and work files of transfers the previous daemon was running."""
    store = ctx.store
    storage = ctx.services.get("storage")
    for vbd, rec in store.items("VBD"):
        if TRANSFER_KEY not in rec["other_config"]:
            continue
        if storage is not None:
            await storage.detach_vbd(vbd)  # a restart may have re-taken the driver's lock for it
        release(ctx, vbd)
        log.info("cleared the disk claim of an interrupted transfer (task %s)", rec["other_config"][TRANSFER_KEY])
    where = work_dir(ctx)
    if where.is_dir():
        await asyncio.to_thread(shutil.rmtree, where, True)


# -------------------------------------------------------------------------------------- moving bytes


async def _refresh_sizes(ctx: Context, sr: str) -> None:
    with contextlib.suppress(ApiError):  # the transfer itself succeeded; sizes catch up on the next one
        await runtime(ctx).refresh_sizes(sr)


async def import_into(
    ctx: Context, vdi: str, fmt: ImageFormat, source: AsyncIterable[bytes] | Path, progress: Callable[[float], None]
) -> None:
    """Replace a VDI's contents with an image; the VDI is untouched unless the whole image is good."""
    store = ctx.store
    rec = store.get("VDI", vdi)
    sr = rec["SR"]
    storage = runtime(ctx)
    driver, handle = await storage.sr(sr)
    with storage_errors(store, sr, vdi):
        info = await driver.import_data(handle, rec["location"], source, fmt, progress)
    storage.apply_vdi_info(vdi, info)
    await _refresh_sizes(ctx, sr)


async def import_new(
    ctx: Context, sr: str, fmt: ImageFormat, source: AsyncIterable[bytes], progress: Callable[[float], None]
) -> str:
    """A new VDI on `sr`, sized by the image; its record exists only once the image is in place."""
    store = ctx.store
    storage = runtime(ctx)
    driver, handle = await storage.sr(sr)
    vdi_uuid = new_uuid()
    with storage_errors(store, sr):
        info = await driver.import_new_vdi(handle, vdi_uuid, source, fmt, None, progress)
    ref = storage.new_vdi_record(sr, info, {"uuid": vdi_uuid, "name_label": IMPORTED_NAME, "type": "user"})
    await _refresh_sizes(ctx, sr)
    return ref


async def import_chunks(
    ctx: Context, vdi: str, blocks: AsyncIterator[bytes], progress: Callable[[float], None]
) -> None:
    """xapi's chunked protocol writes pieces at offsets over the disk's current contents: those are
    exported (sparse) raw, patched, and imported back."""
    rec = ctx.store.get("VDI", vdi)
    size = int(rec["virtual_size"])
    spool = new_work_file(ctx, "raw")
    try:
        await export_to_file(ctx, vdi, "raw", spool, lambda _: None)
        fd = os.open(spool, os.O_WRONLY)
        try:
            # No fsync of this spool: import_into reads it back at once and makes the VDI durable.
            await apply_chunk_protocol(blocks, fd, size)
        finally:
            os.close(fd)
        await import_into(ctx, vdi, "raw", spool, progress)
    finally:
        spool.unlink(missing_ok=True)


async def export_to_file(
    ctx: Context, vdi: str, fmt: ImageFormat, dest: Path, progress: Callable[[float], None]
) -> int:
    store = ctx.store
    rec = store.get("VDI", vdi)
    sr = rec["SR"]
    driver, handle = await runtime(ctx).sr(sr)
    with storage_errors(store, sr, vdi):
        return await driver.export_data(handle, rec["location"], fmt, dest, progress)
