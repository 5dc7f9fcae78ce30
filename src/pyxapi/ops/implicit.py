"""Generic handlers for the messages the model generates for every class.

One factory turns a message's `auto_kind` into a handler; the same code serves all classes.
"""

from __future__ import annotations

from typing import Any

from pyxapi.api.dispatch import Call, Handler
from pyxapi.db.filter import FilterSyntaxError, evaluate, parse, render_value
from pyxapi.db.store import NULL_REF
from pyxapi.model.errors import INVALID_VALUE, MAP_DUPLICATE_KEY, ApiError
from pyxapi.model.schema import MessageDef
from pyxapi.model.types import Map

# Messages the model lists as custom but which, by name and signature, read or write one field.
# xapi adds checks to some (VM.set_VCPUs_max …); until an ops module overrides one with those
# checks, the field accessor serves it.
_ACCESSOR_PREFIXES = (("add_to_", "add"), ("remove_from_", "remove"), ("set_", "setter"), ("get_", "getter"))
_SET_ACCESSOR_PREFIXES = (("add_", "add"), ("remove_", "remove"))


def accessor_kind(msg: MessageDef, fields: dict[str, Any]) -> str | None:
    """`auto_kind` for an implicit message, or the one a field-accessor-shaped message has."""
    if msg.auto_kind is not None:
        return msg.auto_kind
    n = len(msg.params)
    for prefix, kind in _ACCESSOR_PREFIXES + _SET_ACCESSOR_PREFIXES:
        fname = msg.name[len(prefix) :]
        if msg.name.startswith(prefix) and fname in fields and n == _ARITY[kind](fields[fname]):
            return f"{kind}:{fname}"
    return None


_ARITY = {
    "getter": lambda f: 1,
    "setter": lambda f: 2,
    "add": lambda f: 3 if isinstance(f.type, Map) else 2,
    "remove": lambda f: 2,
}


def implicit_handler(msg: MessageDef, stored_classes: set[str], fields: dict[str, Any]) -> Handler | None:
    """The generic handler for a message, or None where no generic one fits."""
    if msg.cls not in stored_classes:
        return None
    auto_kind = accessor_kind(msg, fields)
    if auto_kind is None:
        return None
    kind, _, fname = auto_kind.partition(":")
    cls = msg.cls
    match kind:
        case "getter":
            return _getter(cls, fname)
        case "setter":
            return _setter(cls, fname)
        case "add":
            return _adder(cls, fname, msg)
        case "remove":
            return _remover(cls, fname, msg)
        case "create":
            return _creator(cls)
        case "destroy":
            return lambda call, ref: call.ctx.store.destroy(cls, ref)
        case "get_by_uuid":
            return lambda call, uuid: call.ctx.store.by_uuid(cls, uuid)
        case "get_by_name_label":
            return lambda call, label: call.ctx.store.by_name_label(cls, label)
        case "get_record":
            return lambda call, ref: call.ctx.store.get(cls, ref)
        case "get_all":
            return lambda call: call.ctx.store.refs(cls)
        case "get_all_records":
            return lambda call: dict(call.ctx.store.items(cls))
        case "get_all_where":
            return lambda call, expr: [ref for ref, _ in _where(call, cls, expr)]
        case "get_all_records_where":
            return lambda call, expr: dict(_where(call, cls, expr))
    return None


def _getter(cls: str, fname: str) -> Handler:
    def get(call: Call, ref: str) -> Any:
        return call.ctx.store.get(cls, ref)[fname]

    return get


def _setter(cls: str, fname: str) -> Handler:
    def set_(call: Call, ref: str, value: Any) -> None:
        call.ctx.store.set_field(cls, ref, fname, value)

    return set_


def _adder(cls: str, fname: str, msg: MessageDef) -> Handler:
    if len(msg.params) == 3:  # (self, key, value): a map

        def add_to_map(call: Call, ref: str, key: Any, value: Any) -> None:
            store = call.ctx.store
            rec = store.get(cls, ref)
            current = rec[fname]
            if key in current:
                raise ApiError(MAP_DUPLICATE_KEY, cls, fname, rec.get("uuid", ref), key)
            store.set_field(cls, ref, fname, {**current, key: value})

        return add_to_map

    def add_to_set(call: Call, ref: str, value: Any) -> None:
        store = call.ctx.store
        current = store.get(cls, ref)[fname]
        if value not in current:
            store.set_field(cls, ref, fname, [*current, value])

    return add_to_set


def _remover(cls: str, fname: str, msg: MessageDef) -> Handler:
    def remove(call: Call, ref: str, item: Any) -> None:
        store = call.ctx.store
        current = store.get(cls, ref)[fname]
        if isinstance(current, dict):
            if item in current:
                store.set_field(cls, ref, fname, {k: v for k, v in current.items() if k != item})
        elif item in current:
            store.set_field(cls, ref, fname, [x for x in current if x != item])

    return remove


def _creator(cls: str) -> Handler:
    def create(call: Call, record: dict[str, Any]) -> str:
        ctx = call.ctx
        cdef = ctx.model.classes[cls]
        fields = {
            k: v for k, v in record.items() if k in cdef.fields and cdef.fields[k].qualifier in ("RW", "StaticRO")
        }
        return ctx.store.create(cls, fields)

    return create


def _where(call: Call, cls: str, text: str) -> list[tuple[str, dict[str, Any]]]:
    try:
        expr = parse(text)
    except FilterSyntaxError:
        raise ApiError(INVALID_VALUE, "expr", text) from None
    fields = call.ctx.model.classes[cls].fields
    out = []
    for ref, rec in call.ctx.store.items(cls):

        def get_field(name: str, rec: dict[str, Any] = rec) -> str | None:
            key = name.replace("__", "_")
            if key not in fields:
                return None
            return render_value(rec.get(key, NULL_REF))

        if evaluate(expr, get_field):
            out.append((ref, rec))
    return out
