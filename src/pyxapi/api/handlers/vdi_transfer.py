"""Disk data in and out over HTTP, as xapi serves it:

    PUT /import_raw_vdi?vdi=<ref|uuid>&format=raw|vhd|qcow2[&chunked=true]   (or sr_id= / sr_uuid=)
    GET /export_raw_vdi?vdi=<ref|uuid>&format=raw|vhd|qcow2

with `session_id` (query or cookie) or HTTP Basic credentials, a role allowed the model's
`put_import_raw_vdi` / `get_export_raw_vdi` action, and an optional `task_id` (a task.create task)
that reports progress, then the result (the VDI ref for an import) or the error. Without one a task
is made for the transfer; its ref comes back in the `task-id` response header either way.

The import answers `200 OK` as soon as the request is accepted and before reading the body, as
xapi does: the real `xe` sends its PUT head and waits for that answer before streaming the disk,
and clients sending `Expect: 100-continue` get their `100 Continue` at the same moment. The body
(Content-Length or `Transfer-Encoding: chunked`) flows through a bounded channel into the storage
driver, which spools it next to the VDI and converts it with qemu-img; the VDI changes only when
the whole image is good. The response body ends when the import has finished, so a client that
waits for it knows the task's outcome is final. An export converts first (its Content-Length is
then known) and streams the image file.

Refusals before any byte moves get an HTTP error and, for errors xapi records, a failed task:

| what | status | task error_info |
|---|---|---|
| no/invalid session or credentials; role not allowed | 401 / 403 | (none) |
| `task_id` not a task | 404 | (none) |
| `vdi` names nothing | 500 | UUID_INVALID VDI <value> |
| export without `vdi` | 500 | INTERNAL_ERROR "Missing vdi query parameter" |
| unknown `format` | 404 | INTERNAL_ERROR "Unknown format <x>" |
| `chunked=true` with vhd/qcow2 | 404 | INTERNAL_ERROR "Cannot handle chunked VHD" |
| import without `vdi`, `sr_id` or `sr_uuid` | 400 | VDI_MISSING |
| import: disk in use, read-only, smaller than Content-Length | 400 | VDI_IN_USE / VDI_READONLY / VDI_TOO_SMALL |
| import: SR unplugged | 400 | SR_HAS_NO_PBDS |
| export: disk written by a running VM, VHD over 2040 GiB | 500 | VDI_IN_USE / VDI_TOO_LARGE |
| export: SR unplugged | 500 | SR_HAS_NO_PBDS |

After the `200`, failures show on the task only (IMPORT_ERROR for a garbage or truncated image,
IMPORT_ERROR_PREMATURE_EOF for a body cut short or a client gone, SR_FULL, TASK_CANCELLED for
task.cancel); an export cut short by an error closes the connection before Content-Length bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from pyxapi.api.handlers.http_auth import Caller, Refusal, action_roles, authorize, request_credentials
from pyxapi.context import Context
from pyxapi.db.store import NULL_REF
from pyxapi.drivers.storage import qemuimg
from pyxapi.drivers.storage.base import IMAGE_FORMATS, ImageFormat
from pyxapi.model.errors import HANDLE_INVALID, INTERNAL_ERROR, ApiError
from pyxapi.ops import storage_rules as rules
from pyxapi.ops.sr import runtime
from pyxapi.wire.xmlrpc import task_result

from .transfer_body import BodyChannel, ConsumerGone, Progress, feed, premature_eof
from .transfer_jobs import (
    claim,
    clear_leftovers,
    export_to_file,
    import_chunks,
    import_into,
    import_new,
    new_work_file,
    release,
    resolve,
    resolve_sr_ref,
    work_dir,
)
from .transfer_send import qemu_can_open, send_disk, send_file

log = logging.getLogger(__name__)

IMPORT_PATH = "/import_raw_vdi"
EXPORT_PATH = "/export_raw_vdi"
IMPORT_ACTION = "put_import_raw_vdi"
EXPORT_ACTION = "get_export_raw_vdi"
IMPORT_LABEL = "Importing raw VDI"  # xapi's task labels for these handlers
EXPORT_LABEL = "Exporting raw VDI"
TASK_HEADER = "task-id"
CONTENT_TYPES: Mapping[str, str] = {
    "raw": "application/octet-stream",
    "vhd": "application/vhd",
    "qcow2": "application/x-qemu-disk",
}
IDLE_TIMEOUT = 300.0  # an upload that sends nothing for this long is abandoned
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
FALSE_WORDS = frozenset({"false", "0", "no", "off"})


class Answer(Exception):
    """A refusal before any data moved: an HTTP status plus the API error the task records."""

    def __init__(self, status: int, error: ApiError) -> None:
        super().__init__(status, error)
        self.status = status
        self.error = error


def _params(request: web.Request) -> dict[str, str]:
    """xapi reads handler arguments from the query, then from cookies."""
    merged = dict(request.cookies)
    merged.update(request.query)
    return merged


def _format(params: Mapping[str, str]) -> ImageFormat:
    value = params.get("format", "raw").lower()
    if value not in IMAGE_FORMATS:
        raise Answer(404, ApiError(INTERNAL_ERROR, f"Unknown format {params.get('format')}"))
    return value  # type: ignore[return-value]


def _chunked(params: Mapping[str, str]) -> bool:
    return "chunked" in params and params["chunked"].lower() not in FALSE_WORDS


async def _authorize(ctx: Context, request: web.Request, roles: tuple[str, ...], what: str) -> Caller:
    caller = await authorize(ctx, request_credentials(request), roles, what)
    origin = request.headers.get("Origin")
    if caller.by_cookie and origin and urlsplit(origin).netloc != request.host:
        # A page on another site could ride the browser's cookie: it must name the session itself.
        raise Refusal(403, "a cross-site disk transfer must pass session_id explicitly")
    return caller


async def _no_automatic_continue(request: web.Request) -> None:
    """aiohttp would send `100 Continue` before the handler runs; ours sends it once the request is
    accepted, so a refused client never starts streaming a disk."""
    return None


class TransferEndpoint:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.import_roles = action_roles(ctx, IMPORT_ACTION)
        self.export_roles = action_roles(ctx, EXPORT_ACTION)
        self._jobs: dict[str, asyncio.Task[Any]] = {}  # task ref -> the asyncio task doing the work
        self._gone: set[str] = set()  # task refs whose client disconnected

    # ---- shared steps --------------------------------------------------------------------------
    def _task(self, params: Mapping[str, str], caller: Caller, label: str) -> str:
        given = params.get("task_id")
        if given:
            if not self.ctx.store.exists("task", given):
                raise Answer(404, ApiError(HANDLE_INVALID, "task", given))
            return given
        return self.ctx.tasks.create(label, "", caller.session or NULL_REF)

    def _refused(self, task: str | None, answer: Answer, record: bool = True) -> web.Response:
        if record and task is not None and self.ctx.store.exists("task", task):
            self.ctx.tasks.finish(task, "failure", error=answer.error.description)
        log.info("refused a disk transfer: HTTP %d %s", answer.status, answer.error.description)
        response = web.Response(
            status=answer.status,
            text=" ".join(answer.error.description) + "\n",
            headers={TASK_HEADER: task} if task else None,
        )
        response.force_close()
        return response

    def _start(self, task: str, work: Callable[[], Awaitable[str]]) -> asyncio.Future[None]:
        """Run `work` as the task's job (task.cancel cancels it); the future resolves when it ends."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def job() -> str:
            current = asyncio.current_task()
            assert current is not None
            self._jobs[task] = current
            try:
                return await work()
            except asyncio.CancelledError:
                if task in self._gone:  # the client left: a failure, not a cancellation
                    raise ApiError(INTERNAL_ERROR, "the client closed the connection during the transfer") from None
                raise
            finally:
                self._jobs.pop(task, None)
                self._gone.discard(task)
                if not done.done():
                    done.set_result(None)

        self.ctx.tasks.start(task, job)
        return done

    def _client_gone(self, task: str) -> None:
        job = self._jobs.get(task)
        if job is not None:
            self._gone.add(task)
            job.cancel()

    def _progress(self, task: str) -> Progress:
        return Progress(lambda value: self.ctx.tasks.set_progress(task, value))

    def _failed(self, task: str) -> bool:
        rec = self.ctx.store.find("task", task)
        return rec is None or rec["status"] != "success"

    # ---- PUT /import_raw_vdi ---------------------------------------------------------------------
    async def put_import(self, request: web.Request) -> web.StreamResponse:
        try:
            caller = await _authorize(self.ctx, request, self.import_roles, "import disks")
        except Refusal as r:
            refusal = r.response()
            refusal.force_close()
            return refusal
        params = _params(request)
        task: str | None = None
        vbd: str | None = None
        try:
            task = self._task(params, caller, IMPORT_LABEL)
            vdi, sr = self._import_target(params)
            fmt = _format(params)
            chunked = _chunked(params)
            if chunked and fmt != "raw":
                raise Answer(404, ApiError(INTERNAL_ERROR, "Cannot handle chunked VHD"))
            if vdi is not None:
                vbd = await self._claim_for_import(vdi, fmt, chunked, request.content_length, task)
            elif chunked:
                raise Answer(400, ApiError(INTERNAL_ERROR, "Not enough info supplied to import"))
            else:
                await self._check_new_vdi(sr)
        except Answer as a:
            return self._refused(task, a)
        return await self._run_import(request, task, vdi, sr, fmt, chunked, vbd)

    def _import_target(self, params: Mapping[str, str]) -> tuple[str | None, str]:
        store = self.ctx.store
        try:
            if params.get("vdi"):
                return resolve(store, "VDI", params["vdi"]), NULL_REF
            if params.get("sr_id"):
                return None, resolve_sr_ref(store, params["sr_id"])
            if params.get("sr_uuid"):
                return None, resolve(store, "SR", params["sr_uuid"])
        except ApiError as e:
            raise Answer(500 if e.code != HANDLE_INVALID else 400, e) from None
        raise Answer(400, ApiError("VDI_MISSING"))

    async def _claim_for_import(self, vdi: str, fmt: ImageFormat, chunked: bool, length: int | None, task: str) -> str:
        store = self.ctx.store
        rec = store.get("VDI", vdi)
        try:
            await runtime(self.ctx).sr(rec["SR"])
            if fmt == "raw" and not chunked and length is not None and length > rec["virtual_size"]:
                raise ApiError("VDI_TOO_SMALL", vdi, length)
            if rec["read_only"]:
                raise ApiError("VDI_READONLY", vdi)
            return claim(self.ctx, vdi, "RW", task)
        except ApiError as e:
            raise Answer(400, e) from None

    async def _check_new_vdi(self, sr: str) -> None:
        error = rules.sr_error(self.ctx.store, sr, "vdi_create")
        if error is None:
            try:
                await runtime(self.ctx).sr(sr)
            except ApiError as e:
                error = e
        if error is not None:
            raise Answer(400, error)

    async def _run_import(
        self,
        request: web.Request,
        task: str,
        vdi: str | None,
        sr: str,
        fmt: ImageFormat,
        chunked: bool,
        vbd: str | None,
    ) -> web.StreamResponse:
        ctx = self.ctx
        channel = BodyChannel()
        progress = self._progress(task)

        async def work() -> str:
            try:
                convert = progress.phase(0.5, 1.0)
                if vdi is None:
                    return task_result(await import_new(ctx, sr, fmt, channel.blocks(), convert))
                if chunked:
                    await import_chunks(ctx, vdi, channel.blocks(), convert)
                else:
                    await import_into(ctx, vdi, fmt, channel.blocks(), convert)
                return task_result(vdi)
            finally:
                channel.consumer_done()
                if vbd is not None:
                    release(ctx, vbd)

        try:
            done = self._start(task, work)
        except BaseException:
            if vbd is not None:
                release(ctx, vbd)
            raise
        response = web.StreamResponse(status=200, headers={TASK_HEADER: task})
        response.content_type = "application/octet-stream"
        response.force_close()
        feeder: asyncio.Future[None] | None = None
        try:
            if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
                await request.writer.write(CONTINUE)
            await response.prepare(request)
            feeder = asyncio.ensure_future(_feed(request, channel, progress.phase(0.0, 0.5)))
            await asyncio.wait({feeder, done}, return_when=asyncio.FIRST_COMPLETED)
            body_left = not feeder.done()
            if body_left:  # the job ended first (failed, cancelled): stop taking its body
                feeder.cancel()
                await asyncio.gather(feeder, return_exceptions=True)
            await asyncio.shield(done)
            with contextlib.suppress(ConnectionError):  # the client may leave once it sent everything
                await response.write_eof()
            if body_left:
                request.protocol.force_close()  # no lingering to swallow the rest of a disk
        except BaseException:
            if feeder is not None:
                feeder.cancel()
            channel.abort(premature_eof())  # the client went away: the job sees the body end early
            raise
        return response

    # ---- GET /export_raw_vdi ---------------------------------------------------------------------
    async def get_export(self, request: web.Request) -> web.StreamResponse:
        try:
            caller = await _authorize(self.ctx, request, self.export_roles, "export disks")
        except Refusal as r:
            return r.response()
        params = _params(request)
        task: str | None = None
        try:
            task = self._task(params, caller, EXPORT_LABEL)
            vdi, fmt = self._export_source(params)
            vbd = await self._claim_for_export(vdi, fmt, task)
        except Answer as a:
            return self._refused(task, a)
        return await self._run_export(request, task, vdi, fmt, vbd)

    def _export_source(self, params: Mapping[str, str]) -> tuple[str, ImageFormat]:
        if not params.get("vdi"):
            raise Answer(500, ApiError(INTERNAL_ERROR, "Missing vdi query parameter"))
        try:
            vdi = resolve(self.ctx.store, "VDI", params["vdi"])
        except ApiError as e:
            raise Answer(500, e) from None
        fmt = _format(params)
        if params.get("base"):
            # A delta against `base` would need per-block comparison in every driver; sending the
            # whole disk instead would be silently wrong for a client that applies it as a delta.
            raise Answer(500, ApiError("VALUE_NOT_SUPPORTED", "base", params["base"], "differential export"))
        return vdi, fmt

    async def _claim_for_export(self, vdi: str, fmt: ImageFormat, task: str) -> str:
        rec = self.ctx.store.get("VDI", vdi)
        try:
            if fmt == "vhd" and rec["virtual_size"] > qemuimg.VHD_MAX_SIZE:
                raise ApiError("VDI_TOO_LARGE", vdi, qemuimg.VHD_MAX_SIZE)
            await runtime(self.ctx).sr(rec["SR"])
            return claim(self.ctx, vdi, "RO", task)
        except ApiError as e:
            raise Answer(500, e) from None

    async def _run_export(
        self, request: web.Request, task: str, vdi: str, fmt: ImageFormat, vbd: str
    ) -> web.StreamResponse:
        ctx = self.ctx
        progress = self._progress(task)
        image = new_work_file(ctx, fmt)
        response = web.StreamResponse(
            status=200,
            headers={
                TASK_HEADER: task,
                "Content-Disposition": f'attachment; filename="{ctx.store.get("VDI", vdi)["uuid"]}.{fmt}"',
            },
        )
        response.content_type = CONTENT_TYPES[fmt]
        response.force_close()
        body_sent = asyncio.Event()  # from then on a client closing the connection is no failure

        def sending(low: float) -> Callable[[float], None]:
            report = progress.phase(low, 1.0)

            def sent(fraction: float) -> None:
                report(fraction)
                if fraction >= 1.0:
                    body_sent.set()

            return sent

        async def work() -> str:
            storage = runtime(ctx)
            held = True

            async def let_go() -> None:
                nonlocal held
                if held:
                    held = False
                    await storage.detach_vbd(vbd)
                    release(ctx, vbd)

            try:
                disk = await storage.attach_vbd(vbd, check=False, reset=False) if fmt == "raw" else None
                if disk is not None and disk.path is not None and qemu_can_open(disk.path):
                    # Streamed as the disk is read, through the control domain's VBD (no copy first).
                    await send_disk(request, response, disk.path, disk.format, work_dir(ctx), sending(0.0), let_go)
                else:  # VHD and qcow2 writers need to seek: converted into a work file, then sent
                    size = await export_to_file(ctx, vdi, fmt, image, progress.phase(0.0, 0.5))
                    await let_go()  # the work file is all that is read from now on
                    response.content_length = size
                    await response.prepare(request)
                    await send_file(request, response, image, size, sending(0.5))
                with contextlib.suppress(ConnectionError):  # the client may leave once it has it all
                    await response.write_eof()
                return ""
            finally:
                image.unlink(missing_ok=True)
                await let_go()

        try:
            done = self._start(task, work)
        except BaseException:
            release(ctx, vbd)
            raise
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            if not body_sent.is_set():
                self._client_gone(task)
            raise
        if response.prepared:
            if self._failed(task) and request.transport is not None:
                request.transport.close()  # cut short: the client sees fewer than Content-Length bytes
            return response
        rec = ctx.store.get("task", task)
        error = ApiError(*rec["error_info"]) if rec["error_info"] else premature_eof()
        return self._refused(task, Answer(500, error), record=False)  # the job's failure is on the task

    # ---- life ------------------------------------------------------------------------------------
    async def startup(self, app: web.Application) -> None:
        await clear_leftovers(self.ctx)

    async def shutdown(self, app: web.Application) -> None:
        jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)


async def _feed(request: web.Request, channel: BodyChannel, uploaded: Callable[[float], None]) -> None:
    """The request body into the channel; how it ended is the channel's last word to the job."""
    length = request.content_length
    try:
        await feed(
            request.content.read,
            channel,
            length,
            IDLE_TIMEOUT,
            (lambda n: uploaded(n / length)) if length else None,
        )
        channel.end()
    except ConsumerGone:
        pass  # the job ended first: its task says why
    except ApiError as e:
        channel.abort(e)
    except (ConnectionError, OSError, ValueError) as e:  # aiohttp's payload errors included
        log.info("import upload broke off: %r", e)
        channel.abort(premature_eof())


def install(app: web.Application, ctx: Context) -> TransferEndpoint:
    endpoint = TransferEndpoint(ctx)
    app.router.add_route("PUT", IMPORT_PATH, endpoint.put_import, expect_handler=_no_automatic_continue)
    app.router.add_get(EXPORT_PATH, endpoint.get_export, allow_head=False)
    app.on_startup.append(endpoint.startup)
    app.on_shutdown.append(endpoint.shutdown)
    return endpoint
