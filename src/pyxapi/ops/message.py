"""message.*: alerts attached to objects by uuid (xapi keeps them beside the database)."""

from __future__ import annotations

from typing import Any

from pyxapi.api.dispatch import Call, Handler
from pyxapi.db.filter import FilterSyntaxError, evaluate, parse, render_value
from pyxapi.model.errors import INVALID_VALUE, ApiError
from pyxapi.wire.marshal import now_datetime

Records = dict[str, dict[str, Any]]


def create(call: Call, name: str, priority: int, cls: str, obj_uuid: str, body: str) -> str:
    return call.ctx.store.create(
        "message",
        {
            "name": name,
            "priority": priority,
            "cls": cls,
            "obj_uuid": obj_uuid,
            "body": body,
            "timestamp": now_datetime(),
        },
    )


def destroy(call: Call, self: str) -> None:
    call.ctx.store.destroy("message", self)


def destroy_many(call: Call, messages: list[str]) -> None:
    store = call.ctx.store
    with store.transaction():
        for ref in messages:
            store.get("message", ref)
            store.destroy("message", ref)


def destroy_all(call: Call, filters: dict[str, str]) -> None:
    store = call.ctx.store
    with store.transaction():
        for ref, rec in store.items("message"):
            if all(str(rec.get(k)) == v for k, v in filters.items()):
                store.destroy("message", ref)


def _all(call: Call) -> Records:
    return dict(call.ctx.store.items("message"))


def get(call: Call, cls: str, obj_uuid: str, since: str) -> Records:
    return {
        ref: rec
        for ref, rec in call.ctx.store.items("message")
        if rec["cls"] == cls and rec["obj_uuid"] == obj_uuid and rec["timestamp"] > since
    }


def get_since(call: Call, since: str) -> Records:
    return {ref: rec for ref, rec in call.ctx.store.items("message") if rec["timestamp"] > since}


def get_all_records_where(call: Call, expr: str) -> Records:
    try:
        parsed = parse(expr)
    except FilterSyntaxError:
        raise ApiError(INVALID_VALUE, "expr", expr) from None
    out = {}
    for ref, rec in call.ctx.store.items("message"):

        def get_field(name: str, rec: dict[str, Any] = rec) -> str | None:
            return render_value(rec[name]) if name in rec else None

        if evaluate(parsed, get_field):
            out[ref] = rec
    return out


MESSAGES: dict[str, Handler] = {
    "create": create,
    "destroy": destroy,
    "destroy_many": destroy_many,
    "destroy_all": destroy_all,
    "get": get,
    "get_all": lambda call: call.ctx.store.refs("message"),
    "get_since": get_since,
    "get_record": lambda call, ref: call.ctx.store.get("message", ref),
    "get_by_uuid": lambda call, uuid: call.ctx.store.by_uuid("message", uuid),
    "get_all_records": _all,
    "get_all_records_where": get_all_records_where,
}
