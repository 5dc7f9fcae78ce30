"""role.*: permission queries over the role graph (roles contain subroles)."""

from __future__ import annotations

from pyxapi.api.dispatch import Call, Handler


def _closure(call: Call, role: str) -> list[str]:
    store = call.ctx.store
    seen: list[str] = []
    todo = list(store.get("role", role)["subroles"])
    while todo:
        ref = todo.pop()
        if ref in seen or not store.exists("role", ref):
            continue
        seen.append(ref)
        todo.extend(store.get("role", ref)["subroles"])
    return seen


def get_permissions(call: Call, self: str) -> list[str]:
    return _closure(call, self)


def get_permissions_name_label(call: Call, self: str) -> list[str]:
    store = call.ctx.store
    return [store.get("role", r)["name_label"] for r in _closure(call, self)]


def get_by_permission(call: Call, permission: str) -> list[str]:
    return [ref for ref in call.ctx.store.refs("role") if permission in _closure(call, ref)]


def get_by_permission_name_label(call: Call, label: str) -> list[str]:
    store = call.ctx.store
    wanted = set(store.by_name_label("role", label))
    return [ref for ref in store.refs("role") if wanted.intersection(_closure(call, ref))]


MESSAGES: dict[str, Handler] = {
    "get_permissions": get_permissions,
    "get_permissions_name_label": get_permissions_name_label,
    "get_by_permission": get_by_permission,
    "get_by_permission_name_label": get_by_permission_name_label,
}
