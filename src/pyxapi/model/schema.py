"""The XenAPI datamodel as typed data, loaded from model/data/xenapi.json.

Everything else (dispatch, type checks, RBAC, the store's schema, the CLI) is derived from
these definitions: adding a field to the data file is enough for it to be stored and served.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from typing import Any

from pyxapi.model.types import ApiType, Map, Ref, Set, parse_type

# Role hierarchy, most privileged first (xapi's order). client-cert is internal.
ROLE_ORDER = ("pool-admin", "pool-operator", "vm-power-admin", "vm-admin", "vm-operator", "read-only")


@dataclass(frozen=True, slots=True)
class FieldDef:
    name: str
    type: ApiType
    type_text: str
    qualifier: str  # RW | StaticRO | DynamicRO
    state: str
    default: Any
    has_default: bool
    persist: bool
    internal_only: bool
    getter_roles: tuple[str, ...]
    setter_roles: tuple[str, ...]
    map_keys_roles: dict[str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class ParamDef:
    name: str
    type: ApiType
    type_text: str
    default: Any
    has_default: bool


@dataclass(frozen=True, slots=True)
class MessageDef:
    cls: str
    name: str
    params: tuple[ParamDef, ...]
    result: ApiType
    result_text: str
    errors: tuple[str, ...]
    session: bool
    static: bool
    is_async: bool
    implicit: bool
    auto_kind: str | None
    roles: tuple[str, ...] | None
    state: str
    hidden: bool
    pool_internal: bool
    secret: bool

    @property
    def wire_name(self) -> str:
        return f"{self.cls}.{self.name}"

    @property
    def min_params(self) -> int:
        """Wire arity without the trailing params that have defaults (and without the session)."""
        n = len(self.params)
        while n > 0 and self.params[n - 1].has_default:
            n -= 1
        return n


@dataclass
class ClassDef:
    name: str
    state: str
    in_database: bool
    gen_constructor_destructor: bool
    gen_events: bool
    persist: bool
    exposes_get_all: bool
    async_allowed: bool
    fields: dict[str, FieldDef]
    messages: dict[str, MessageDef]

    @cached_property
    def record_fields(self) -> tuple[FieldDef, ...]:
        """Fields that appear in API records: never internal_only ones, nor those the API removed."""
        return tuple(f for f in self.fields.values() if not f.internal_only and f.state != "removed")


@dataclass(frozen=True, slots=True)
class Relation:
    """`one` is a Ref field; `many` is the Set field on the other class kept in step with it."""

    one_cls: str
    one_field: str
    many_cls: str
    many_field: str
    many_to_many: bool


@dataclass(slots=True)
class Model:
    api_version: tuple[int, int]
    classes: dict[str, ClassDef]
    enums: dict[str, tuple[str, ...]]
    relations: tuple[Relation, ...]
    errors: dict[str, tuple[str, ...]]
    roles: tuple[str, ...]
    internal_roles: tuple[str, ...]
    emergency_calls: frozenset[str]
    http_actions: tuple[dict[str, Any], ...]
    alert_messages: tuple[str, ...]
    _lower: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lower = {name.lower(): name for name in self.classes}

    def cls(self, name: str) -> ClassDef:
        return self.classes[name]

    def class_by_lower(self, name: str) -> ClassDef | None:
        """event.from and friends name classes case-insensitively."""
        real = self._lower.get(name.lower())
        return self.classes[real] if real else None

    def stored_classes(self) -> list[ClassDef]:
        return [c for c in self.classes.values() if c.in_database or c.name == "message"]

    def messages(self) -> list[MessageDef]:
        return [m for c in self.classes.values() for m in c.messages.values()]


def _field(raw: dict[str, Any], role_sets: list[list[str]]) -> FieldDef:
    get = raw.get("get")
    setr = raw.get("set")
    return FieldDef(
        name=raw["name"],
        type=parse_type(raw["type"]),
        type_text=raw["type"],
        qualifier=raw["qualifier"],
        state=raw["state"],
        default=raw.get("default"),
        has_default="default" in raw,
        persist=raw.get("persist", True),
        internal_only=raw.get("internal_only", False),
        getter_roles=tuple(role_sets[get]) if get is not None else (),
        setter_roles=tuple(role_sets[setr]) if setr is not None else (),
        map_keys_roles={k: tuple(v) for k, v in raw.get("map_keys_roles", {}).items()},
    )


def _message(cls: str, raw: dict[str, Any], role_sets: list[list[str]]) -> MessageDef:
    roles = raw.get("roles")
    return MessageDef(
        cls=cls,
        name=raw["name"],
        params=tuple(
            ParamDef(p["name"], parse_type(p["type"]), p["type"], p.get("default"), "default" in p)
            for p in raw["params"]
        ),
        result=parse_type(raw["result"]),
        result_text=raw["result"],
        errors=tuple(raw["errors"]),
        session=raw["session"],
        static=raw["static"],
        is_async=raw["async"],
        implicit=raw["implicit"],
        auto_kind=raw.get("auto_kind"),
        roles=tuple(role_sets[roles]) if roles is not None else None,
        state=raw["state"],
        hidden=raw.get("hidden", False),
        pool_internal=raw.get("pool_internal", False),
        secret=raw.get("secret", False),
    )


def _relations(raw: list[dict[str, str]], classes: dict[str, ClassDef]) -> tuple[Relation, ...]:
    out = []
    for r in raw:
        one_cls, one_field = r["one_or_many"].split(".")
        many_cls, many_field = r["other_end"].split(".")
        if one_cls not in classes or many_cls not in classes:
            continue
        one_type = classes[one_cls].fields[one_field].type
        many_type = classes[many_cls].fields[many_field].type
        if not isinstance(many_type, Set | Ref):
            continue
        out.append(Relation(one_cls, one_field, many_cls, many_field, isinstance(one_type, Set)))
    return tuple(out)


def load_model(data: dict[str, Any] | None = None) -> Model:
    if data is None:
        text = resources.files("pyxapi.model").joinpath("data/xenapi.json").read_text()
        data = json.loads(text)
    role_sets = data["role_sets"]
    classes: dict[str, ClassDef] = {}
    for c in data["classes"]:
        classes[c["name"]] = ClassDef(
            name=c["name"],
            state=c["state"],
            in_database=c["in_database"],
            gen_constructor_destructor=c["gen_constructor_destructor"],
            gen_events=c["gen_events"],
            persist=c["persist"],
            exposes_get_all=c["exposes_get_all"],
            async_allowed=c["async_allowed"],
            fields={f["name"]: _field(f, role_sets) for f in c["fields"]},
            messages={m["name"]: _message(c["name"], m, role_sets) for m in c["messages"]},
        )
    return Model(
        api_version=(data["api_version"]["major"], data["api_version"]["minor"]),
        classes=classes,
        enums={k: tuple(v) for k, v in data["enums"].items()},
        relations=_relations(data["relations"], classes),
        errors={k: tuple(v or ()) for k, v in data["errors"].items()},
        roles=tuple(r["name"] for r in data["roles"]),
        internal_roles=tuple(r["name"] for r in data["roles"] if r["internal"]),
        emergency_calls=frozenset(data["emergency_calls"]),
        http_actions=tuple(data["http_actions"]),
        alert_messages=tuple(data["alert_messages"]),
    )


def is_map_or_set(t: ApiType) -> bool:
    return isinstance(t, Map | Set)
