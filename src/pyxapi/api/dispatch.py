"""Dispatch derived from the model: arity, session, types, RBAC, Async.* → task.

The method table is built once from the model: implicit messages get generic handlers,
custom ones the function their ops module lists, and whatever has no handler yet answers
NOT_IMPLEMENTED. No name is built into a function lookup at run time.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyxapi.db.store import NULL_REF
from pyxapi.model.errors import (
    INTERNAL_ERROR,
    MESSAGE_METHOD_UNKNOWN,
    MESSAGE_PARAMETER_COUNT_MISMATCH,
    MESSAGE_REMOVED,
    NOT_IMPLEMENTED,
    RBAC_PERMISSION_DENIED,
    ApiError,
)
from pyxapi.model.schema import MessageDef
from pyxapi.model.types import Ref
from pyxapi.wire.marshal import Format
from pyxapi.wire.xmlrpc import task_result

if TYPE_CHECKING:
    from pyxapi.context import Context
    from pyxapi.engine.sessions import SessionInfo

log = logging.getLogger(__name__)

Handler = Callable[..., Any]
HandlerFactory = Callable[[MessageDef], Handler | None]
ASYNC_PREFIX = "Async."
# `from` is a keyword in Python, so the SDK's callers write session.xenapi.event_from(...),
# which arrives as this name; xapi accepts it too.
ALIASES = {"event_from": "event.from"}


class WireValue:
    """A result whose wire shape is not its declared type (event.from returns a struct)."""

    def __init__(self, encode: Callable[[Format], Any]) -> None:
        self.encode = encode


@dataclass(slots=True)
class Call:
    """What a handler knows about the call it serves."""

    ctx: Context
    message: MessageDef
    session: SessionInfo | None
    task_ref: str | None
    fmt: Format
    local: bool = False  # from root (or the daemon's user) over the Unix socket: api/local_peer.py

    @property
    def session_ref(self) -> str:
        return self.session.ref if self.session else NULL_REF


@dataclass(frozen=True, slots=True)
class Method:
    message: MessageDef
    handler: Handler | None
    kind: str  # custom | implicit | missing


def build_methods(
    messages: list[MessageDef], custom: Mapping[str, Mapping[str, Handler]], implicit: HandlerFactory
) -> dict[str, Method]:
    table: dict[str, Method] = {}
    for msg in messages:
        handler = custom.get(msg.cls, {}).get(msg.name)
        if handler is not None:
            table[msg.wire_name] = Method(msg, handler, "custom")
        elif (handler := implicit(msg)) is not None:
            table[msg.wire_name] = Method(msg, handler, "implicit")
        else:
            table[msg.wire_name] = Method(msg, None, "missing")
    return table


class Dispatcher:
    def __init__(self, ctx: Context, methods: dict[str, Method]) -> None:
        self.ctx = ctx
        self.methods = methods

    def list_methods(self) -> list[str]:
        names = [n for n, m in self.methods.items() if m.message.state != "removed"]
        names += [ASYNC_PREFIX + n for n, m in self.methods.items() if m.message.is_async]
        return [*sorted(names), "system.listMethods"]

    async def call(self, name: str, params: list[Any], fmt: Format, local: bool = False) -> Any:
        """Run one API call; returns the wire value, raises ApiError for every failure."""
        try:
            return await self._call(name, params, fmt, local)
        except ApiError:
            raise
        except Exception as e:
            log.exception("internal error in %s", name)
            raise ApiError(INTERNAL_ERROR, f"{type(e).__name__}: {e}") from e

    async def _call(self, name: str, params: list[Any], fmt: Format, local: bool) -> Any:
        if name == "system.listMethods":
            return self.list_methods()
        name = ALIASES.get(name, name)
        is_async = name.startswith(ASYNC_PREFIX)
        method = self.methods.get(name[len(ASYNC_PREFIX) :] if is_async else name)
        if method is None or (is_async and not method.message.is_async):
            raise ApiError(MESSAGE_METHOD_UNKNOWN, name)
        msg = method.message
        if msg.state == "removed":
            raise ApiError(MESSAGE_REMOVED)
        offset = 1 if msg.session else 0
        full, least = len(msg.params) + offset, msg.min_params + offset
        if not least <= len(params) <= full:
            raise ApiError(MESSAGE_PARAMETER_COUNT_MISMATCH, name, full, len(params))
        session = self.ctx.sessions.validate(params[0]) if msg.session else None
        args = self._decode_args(msg, params[offset:])
        if session is not None and not session.may(msg.roles):
            raise ApiError(RBAC_PERMISSION_DENIED, msg.wire_name, "No permission in user session")
        if method.handler is None:
            raise ApiError(NOT_IMPLEMENTED, msg.wire_name)
        handler = method.handler
        if is_async:
            return self._start_task(name, msg, handler, session, args)
        self._check_refs(msg, args)
        call = Call(self.ctx, msg, session, None, fmt, local)
        result = handler(call, *args)
        if inspect.isawaitable(result):
            result = await result
        return self._encode(result, msg, fmt)

    def _decode_args(self, msg: MessageDef, raw: list[Any]) -> list[Any]:
        marshal = self.ctx.marshal
        args = []
        for i, p in enumerate(msg.params):
            value = raw[i] if i < len(raw) else p.default
            args.append(marshal.decode(value, p.type, p.name))
        return args

    def _check_refs(self, msg: MessageDef, args: list[Any]) -> None:
        """HANDLE_INVALID [class, ref] for a reference to nothing (the null ref may pass)."""
        store = self.ctx.store
        for p, value in zip(msg.params, args, strict=True):
            if isinstance(p.type, Ref) and value != NULL_REF and store.has_class(p.type.cls):
                store.get(p.type.cls, value)

    def _encode(self, result: Any, msg: MessageDef, fmt: Format) -> Any:
        if isinstance(result, WireValue):
            return result.encode(fmt)
        return self.ctx.marshal.encode(result, msg.result, fmt)

    def _start_task(
        self, name: str, msg: MessageDef, handler: Handler, session: SessionInfo | None, args: list[Any]
    ) -> str:
        tasks = self.ctx.tasks
        task_ref = tasks.create(name, "", session.ref if session else NULL_REF)
        call = Call(self.ctx, msg, session, task_ref, "xml")

        async def work() -> str:
            self._check_refs(msg, args)  # inside the task: xapi reports a bad handle as a task failure
            result = handler(call, *args)
            if inspect.isawaitable(result):
                result = await result
            return task_result(self._encode(result, msg, "xml"))

        tasks.start(task_ref, work)
        return task_ref
