"""PUT /import and PUT /import_metadata: an XVA (or an OVA) in, VMs out.

`/import?sr_id=|sr_uuid=…[&restore=true][&force=true]` (the pool's default SR when none is named):
the objects are created, the disks written into new VDIs on that SR as the body arrives, and the
task's result is the new VMs as xapi encodes a VM ref set. An ISO library is refused
(SR_OPERATION_NOT_SUPPORTED, 400) and so is a chunked body (IMPORT_ERROR_CANNOT_HANDLE_CHUNKED, 403),
as xapi refuses them, before anything is read. `/import_metadata[?restore&force&dry_run]` creates the
objects of a metadata-only archive around disks that already exist.

The answer comes once the body is consumed: 200 with the result (and the `task-id` header), or the
HTTP error of the failure, whose exact XenAPI error is also on the task. An archive in the body is
never written to disk as files: members are parsed in memory and disk chunks go into the new VDIs.
"""

from __future__ import annotations

import logging

from aiohttp import web

from pyxapi.api.handlers.http_auth import Refusal
from pyxapi.api.handlers.xva_http import (
    TASK_HEADER,
    as_api_error,
    call_for,
    caller_for,
    error_response,
    fail_task,
    run_as_task,
    task_for,
    truthy,
)
from pyxapi.context import Context
from pyxapi.model.errors import ApiError
from pyxapi.wire.xmlrpc import task_result
from pyxapi.xva.archive import import_archive, target_sr
from pyxapi.xva.errors import CannotHandleChunked
from pyxapi.xva.restore import ImportConfig

log = logging.getLogger(__name__)


class ImportEndpoint:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def put_import(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, metadata=False)

    async def put_import_metadata(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, metadata=True)

    async def _serve(self, request: web.Request, metadata: bool) -> web.StreamResponse:
        ctx = self.ctx
        action = "put_import_metadata" if metadata else "put_import"
        try:
            caller = await caller_for(ctx, request, action, "import VMs")
        except Refusal as r:
            return r.response()
        task = None
        try:
            task = task_for(ctx, request, caller, "VM.import_metadata" if metadata else "VM.import")
            if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
                raise CannotHandleChunked()
            query = dict(request.query)
            config = ImportConfig(
                sr=None if metadata else target_sr(ctx, query),
                full_restore=truthy(query, "restore"),
                force=truthy(query, "force"),
                dry_run=metadata and truthy(query, "dry_run"),
            )
        except ApiError as e:
            if task:
                fail_task(ctx, task, e)
            return error_response(e, task)
        call = call_for(ctx, caller, task, "VM", "import")

        async def work() -> str:
            ctx.tasks.set_progress(task, 0.0)
            result = await import_archive(
                call, request.content.iter_any(), config, lambda p: ctx.tasks.set_progress(task, p)
            )
            log.info(
                "import into task %s: %d objects, %d bytes of disk data, VMs %s",
                task,
                result.objects,
                result.bytes_written,
                result.vms,
            )
            return task_result(result.vms)

        outcome = await run_as_task(ctx, task, work)
        if outcome.error is not None:
            return error_response(as_api_error(outcome.error), task)
        return web.Response(text=outcome.result, headers={TASK_HEADER: task}, content_type="text/xml")


def install(app: web.Application, ctx: Context) -> None:
    endpoint = ImportEndpoint(ctx)
    app.router.add_put("/import", endpoint.put_import)
    app.router.add_put("/import_metadata", endpoint.put_import_metadata)
