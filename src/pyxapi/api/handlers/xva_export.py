"""GET /export and GET /export_metadata: a VM as an XVA, streamed as it is read; GET /export_ova.

`/export?ref=|uuid=…[&use_compression=true|gzip|zstd][&preserve_power_state=true]`: xapi's rules
apply: the VM is marked `export` in current_operations for the whole transfer (a running VM is
refused with VM_BAD_POWER_STATE, as xapi's lifecycle table refuses it), the mark goes however the
transfer ends, a client that goes away included. `/export_metadata` sends ova.xml alone (with the
snapshots and their lineage unless `export_snapshots=false`; `all=true` for every VM but the
default templates and, unless `include_dom0=false`, with the control domain).
`/export_ova?ref=|uuid=…[&disk_format=vmdk|qcow2|vhd|raw]` (pyxapi's own: xapi leaves OVF to its
clients) writes the VM as an OVA, under the same lock and roles as /export; PUT /import reads one.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import ExitStack

from aiohttp import web

from pyxapi.api.handlers.http_auth import Refusal
from pyxapi.api.handlers.xva_http import (
    OCTET_STREAM,
    TASK_HEADER,
    as_api_error,
    caller_for,
    error_response,
    fail_task,
    run_as_task,
    task_for,
    truthy,
)
from pyxapi.context import Context
from pyxapi.engine.operations import running
from pyxapi.model.errors import OPERATION_NOT_ALLOWED, ApiError
from pyxapi.xva import collect, exporter, ova_out
from pyxapi.xva.stream import Compressor, compression_of

log = logging.getLogger(__name__)

COMPRESS_IN_THREAD = 64 * 1024


class ExportEndpoint:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def vm_of(self, request: web.Request) -> str:
        ref, uuid = request.query.get("ref"), request.query.get("uuid")
        if ref:
            self.ctx.store.get("VM", ref)
            return ref
        if uuid:
            return self.ctx.store.by_uuid("VM", uuid)
        raise ApiError("INVALID_VALUE", "uuid", "")

    async def export(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "xva")

    async def export_metadata(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "metadata")

    async def export_ova(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "ova")

    async def _serve(self, request: web.Request, kind: str) -> web.StreamResponse:
        ctx = self.ctx
        metadata = kind == "metadata"
        # an OVA export reads what an XVA export reads: the model's get_export roles apply to both
        action = "get_export_metadata" if metadata else "get_export"
        try:
            caller = await caller_for(ctx, request, action, "export VMs")
        except Refusal as r:
            return r.response()
        label = {"metadata": "VM.export_metadata", "ova": "VM.export_ova"}.get(kind, "VM.export")
        task = None
        try:
            task = task_for(ctx, request, caller, label)
            vms = self._vms(request, metadata)
            disk_format = ova_out.check_disk_format(request.query.get("disk_format", "vmdk"))
        except ApiError as e:
            if task:
                fail_task(ctx, task, e)
            return error_response(e, task)
        response = web.StreamResponse(
            headers={
                TASK_HEADER: task,
                "Content-Type": OCTET_STREAM,
                "Content-Disposition": f'attachment; filename="export.{"ova" if kind == "ova" else "xva"}"',
            }
        )
        compression = None if metadata else compression_of(request.query.get("use_compression"))
        preserve = truthy(request.query, "preserve_power_state") or metadata

        async def work() -> str:
            op = "metadata_export" if metadata else "export"
            with ExitStack() as locks:
                for vm in vms:
                    locks.enter_context(running(ctx.store, vm, op, task))
                plan = collect.plan(
                    ctx,
                    vms,
                    preserve_power_state=preserve,
                    with_snapshot_metadata=metadata and truthy(request.query, "export_snapshots", True),
                )
                ctx.tasks.set_progress(task, 0.0)
                await response.prepare(request)
                sink = _Sink(response, Compressor(compression))
                try:
                    if metadata:
                        await exporter.write_metadata(ctx, plan, sink.write)
                    elif kind == "ova":
                        await ova_out.write_ova(ctx, vms[0], sink.write, disk_format)
                    else:
                        await exporter.write_xva(ctx, plan, sink.write, lambda p: ctx.tasks.set_progress(task, p))
                    await sink.close()
                except ConnectionError as e:
                    # the client went away (aiohttp raises ClientConnectionResetError, a ConnectionError)
                    raise ApiError("CLIENT_ERROR", f"the client closed the connection: {e}") from None
            return ""

        outcome = await run_as_task(ctx, task, work)
        if outcome.error is not None and not response.prepared:
            return error_response(as_api_error(outcome.error), task)
        if outcome.error is not None:
            # Headers are out: only a cut connection tells the client the archive is incomplete.
            log.info("export to %s ended early: %s", request.remote, as_api_error(outcome.error).description)
            if request.transport is not None:
                request.transport.close()
        return response

    def _vms(self, request: web.Request, metadata: bool) -> list[str]:
        store = self.ctx.store
        if metadata and truthy(request.query, "all"):
            include_dom0 = truthy(request.query, "include_dom0", True)
            out = []
            for ref, rec in store.items("VM"):
                default_template = rec["is_default_template"] or (
                    rec["is_a_template"] and rec["other_config"].get("default_template") == "true"
                )
                if default_template or (rec["is_control_domain"] and not include_dom0):
                    continue
                out.append(ref)
            return out
        vm = self.vm_of(request)
        if metadata and store.get("VM", vm)["is_a_snapshot"]:
            raise ApiError(OPERATION_NOT_ALLOWED, "Exporting metadata of a snapshot is not allowed")
        return [vm]


class _Sink:
    """Compresses (when asked) and writes to the response; big pieces compress off the event loop."""

    def __init__(self, response: web.StreamResponse, compressor: Compressor) -> None:
        self.response = response
        self.compressor = compressor

    async def write(self, data: bytes) -> None:
        if self.compressor.kind is not None:
            if len(data) >= COMPRESS_IN_THREAD:
                data = await asyncio.to_thread(self.compressor.compress, data)
            else:
                data = self.compressor.compress(data)
        if data:
            await self.response.write(data)

    async def close(self) -> None:
        tail = self.compressor.flush()
        if tail:
            await self.response.write(tail)
        await self.response.write_eof()


def install(app: web.Application, ctx: Context) -> None:
    endpoint = ExportEndpoint(ctx)
    app.router.add_get("/export", endpoint.export)
    app.router.add_get("/export_metadata", endpoint.export_metadata)
    app.router.add_get("/export_ova", endpoint.export_ova)
