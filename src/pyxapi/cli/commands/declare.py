"""Thin commands declared rather than written: which API call, where each of its arguments
comes from on the command line, and what to print. tests/cli/test_declared.py checks every
declaration against the model (the call exists, the argument count matches)."""

from __future__ import annotations

from pyxapi.cli.ctx import parse_bytes, parse_float, parse_int
from pyxapi.cli.errors import CliFailure
from pyxapi.cli.records import NULL
from pyxapi.cli.selectors import do_op

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from pyxapi.cli.ctx import Ctx


class Arg:
    """One API argument read from the command line."""

    def __init__(self, read: Callable[[Ctx], Any], names: tuple[str, ...] = ()) -> None:
        self.read = read
        self.names = names  # the command-line keys it consumes (kept out of selector filters)


def p(name: str, default: str | None = None) -> Arg:
    """A string; required unless a default is given."""
    return Arg(lambda c: c.req(name) if default is None else c.opt(name, default), (name,))


def flag(name: str, default: bool = False) -> Arg:
    return Arg(lambda c: c.flag(name, default), (name,))


def integer(name: str, default: int | None = None) -> Arg:
    def read(c: Ctx) -> int:
        if default is not None and not c.has(name):
            return default
        return parse_int(name, c.req(name))

    return Arg(read, (name,))


def real(name: str) -> Arg:
    return Arg(lambda c: parse_float(name, c.req(name)), (name,))


def size(name: str) -> Arg:
    return Arg(lambda c: parse_bytes(name, c.req(name)), (name,))


def ref(cls: str, name: str, optional: bool = False) -> Arg:
    """A uuid on the command line, a reference for the API (NULL when optional and absent)."""

    def read(c: Ctx) -> str:
        if optional and not c.has(name):
            return NULL
        return c.by_uuid(cls, c.req(name))

    return Arg(read, (name,))


def refs(cls: str, name: str) -> Arg:
    """Comma-separated uuids -> a set of references."""
    return Arg(lambda c: [c.by_uuid(cls, u) for u in (c.opt(name) or "").split(",") if u], (name,))


def mapping(prefix: str) -> Arg:
    """`prefix:key=value` words -> a map."""
    return Arg(lambda c: dict(c.params.prefixed(prefix)), (prefix,))


def words(name: str) -> Arg:
    """A comma-separated list -> a set of strings."""
    return Arg(lambda c: [w for w in (c.opt(name) or "").split(",") if w], (name,))


def keys(*names: str) -> Arg:
    """The given optional parameters, as a map of those present."""
    return Arg(lambda c: {n: c.req(n) for n in names if c.has(n)}, names)


def const(value: Any) -> Arg:
    return Arg(lambda c: value)


def this_host() -> Arg:
    return Arg(lambda c: c.this_host())


def host_or_master(name: str = "host-uuid") -> Arg:
    """host-uuid= when given, else the pool's coordinator (xe's parse_host_uuid)."""

    def read(c: Ctx) -> str:
        if c.has(name):
            return c.by_uuid("host", c.req(name))
        return str(c.call("pool.get_master", c.pool()))

    return Arg(read, (name,))


def the_pool() -> Arg:
    return Arg(lambda c: c.pool())


# -- what to print --------------------------------------------------------------------------
def show(c: Ctx, how: str | None, value: Any) -> None:
    if how is None:
        return
    kind, _, cls = how.partition(":")
    if kind == "uuid":
        c.printer.lines([c.uuid_of(cls, value)])
    elif kind == "uuids":
        c.print_uuids(cls, list(value))
    elif kind == "value":
        c.printer.lines([_text(value)])
    elif kind == "msg":
        c.printer.msg(_text(value))
    elif kind == "lines":
        c.printer.lines([_text(v) for v in value])
    elif kind == "table":
        c.printer.table([[(str(k), _text(v)) for k, v in value.items()]])
    elif kind == "records":
        c.printer.table([[(str(k), _text(v)) for k, v in r.items()] for r in value])


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:f}"
    return str(value)


def _run(c: Ctx, method: str, target: Any, args: tuple[Arg, ...]) -> Any:
    values = [a.read(c) for a in args]
    return c.call(method, *([] if target is None else [target]), *values)


def call(method: str, *args: Arg, show_as: str | None = None, doc: str = "") -> Callable[[Ctx], None]:
    """A static (or pool-level) call: the arguments are all read from the command line."""

    def handler(c: Ctx) -> None:
        show(c, show_as, _run(c, method, None, args))

    return _mark(handler, method, len(args), doc)


def on_uuid(
    method: str, *args: Arg, cls: str | None = None, key: str = "uuid", show_as: str | None = None, doc: str = ""
) -> Callable[[Ctx], None]:
    """A call on the object named by `key`=<uuid> (of the method's class, or `cls`)."""
    owner = cls or method.split(".")[0]

    def handler(c: Ctx) -> None:
        show(c, show_as, _run(c, method, c.by_uuid(owner, c.req(key)), args))

    return _mark(handler, method, len(args) + 1, doc)


def on_selected(
    selector: str,
    method: str,
    *args: Arg,
    show_as: str | None = None,
    doc: str = "",
    multiple: bool = True,
    include_control: bool = False,
    include_templates: bool = False,
) -> Callable[[Ctx], None]:
    """A call on each object the vm=/host=/sr= selectors choose."""
    ignore = tuple(n for a in args for n in a.names)

    def handler(c: Ctx) -> None:
        do_op(
            c,
            selector,
            lambda r: show(c, show_as, _run(c, method, r.ref, args)),
            ignore,
            multiple=multiple,
            include_control=include_control,
            include_templates=include_templates,
        )

    return _mark(handler, method, len(args) + 1, doc)


def forced(handler: Callable[[Ctx], None], message: str) -> Callable[[Ctx], None]:
    """Refuse unless --force was given."""

    def wrapped(c: Ctx) -> None:
        if not c.flag("force"):
            raise CliFailure(message)
        handler(c)

    wrapped.__doc__ = handler.__doc__
    for attr in ("api_method", "api_arity"):
        setattr(wrapped, attr, getattr(handler, attr))
    return wrapped


def _mark(handler: Callable[[Ctx], None], method: str, arity: int, doc: str) -> Callable[[Ctx], None]:
    handler.__doc__ = doc
    handler.api_method = method  # type: ignore[attr-defined]
    handler.api_arity = arity  # type: ignore[attr-defined]
    return handler
