"""What the archive handlers share: who may call them, which task reports on them, and how a
failure is answered.

Like xapi, each transfer runs as a task: the client's own (`task_id=`, made with task.create) or a
new one, named in the `task-id` response header. The work runs through the task runner, so
`task.cancel` stops it; its progress, result (xapi-encoded VM refs for imports) and error (the exact
XenAPI error) are on the task. A failure found before any byte is sent gets an HTTP error whose body
is the error code and parameters; one found later ends the connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from pyxapi.api.dispatch import Call
from pyxapi.api.handlers.http_auth import Caller, Refusal, action_roles, authorize, request_credentials
from pyxapi.context import Context
from pyxapi.db.store import NULL_REF
from pyxapi.model.errors import HANDLE_INVALID, INTERNAL_ERROR, UUID_INVALID, ApiError

TASK_HEADER = "task-id"
OCTET_STREAM = "application/octet-stream"


@dataclass(slots=True)
class Outcome:
    result: str = ""
    error: BaseException | None = None


def truthy(query: Any, key: str, default: bool = False) -> bool:
    """xapi's query flags: `key=true` is true, anything else false; absent gives the default."""
    value = query.get(key)
    return default if value is None else value == "true"


async def caller_for(ctx: Context, request: web.Request, action: str, what: str) -> Caller:
    return await authorize(ctx, request_credentials(request), action_roles(ctx, action), what)


def task_for(ctx: Context, request: web.Request, caller: Caller, label: str) -> str:
    """The client's task (task_id=) or a new one in the caller's session."""
    task = request.query.get("task_id") or request.cookies.get("task_id")
    if task:
        ctx.store.get("task", task)  # HANDLE_INVALID for a task that does not exist
        return task
    return ctx.tasks.create(label, session_ref=caller.session or NULL_REF)


def call_for(ctx: Context, caller: Caller, task: str, cls: str, message: str) -> Call:
    """The Call that ops functions (VBD.create, VIF.create…) expect, on behalf of this caller."""
    session = None
    if caller.session:
        try:
            session = ctx.sessions.validate(caller.session)
        except ApiError:
            session = None
    return Call(ctx, ctx.model.classes[cls].messages[message], session, task, "xml")


async def run_as_task(ctx: Context, task: str, work: Callable[[], Awaitable[str]]) -> Outcome:
    """Run `work` as the task's body (so task.cancel cancels it) and wait for it to end."""
    outcome = Outcome()
    ended = asyncio.Event()

    async def body() -> str:
        try:
            outcome.result = await work()
            return outcome.result
        except BaseException as e:
            outcome.error = e
            raise
        finally:
            ended.set()

    ctx.tasks.start(task, body)
    # aiohttp cancels this handler when the client goes away; the task is left to end by itself
    # (its next write or read fails: CLIENT_ERROR or a premature end), which is the truthful error.
    await ended.wait()
    return outcome


def fail_task(ctx: Context, task: str, error: ApiError) -> None:
    if ctx.store.exists("task", task) and ctx.store.get("task", task)["status"] == "pending":
        ctx.tasks.finish(task, "failure", error=error.description)


def as_api_error(error: BaseException) -> ApiError:
    if isinstance(error, ApiError):
        return error
    if isinstance(error, asyncio.CancelledError):
        return ApiError("TASK_CANCELLED", "")
    return ApiError(INTERNAL_ERROR, f"{type(error).__name__}: {error}")


def error_response(error: ApiError, task: str | None = None) -> web.Response:
    status = 500
    if error.code in (HANDLE_INVALID, UUID_INVALID):
        status = 404
    elif error.code in ("IMPORT_ERROR_CANNOT_HANDLE_CHUNKED", "RBAC_PERMISSION_DENIED"):
        status = 403
    elif error.code in ("SR_OPERATION_NOT_SUPPORTED", "INVALID_VALUE", "VALUE_NOT_SUPPORTED"):
        status = 400
    headers = {TASK_HEADER: task} if task else {}
    return web.Response(status=status, text=" ".join(error.description) + "\n", headers=headers)


def refusal_response(refusal: Refusal) -> web.Response:
    return refusal.response()
