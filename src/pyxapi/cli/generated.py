"""The commands xe derives for every class: <class>-list, -param-list, -param-get, -param-set,
-param-add, -param-remove and -param-clear, driven by the CLI field table."""

from __future__ import annotations

from pyxapi.cli.argv import STD_PARAMS
from pyxapi.cli.ctx import parse_bytes, parse_int
from pyxapi.cli.errors import ApiFailure, CliFailure
from pyxapi.cli.records import NULL, CliRecord, choose_params, filter_records, ref_class, select_fields
from pyxapi.cli.table import class_spec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from pyxapi.cli.ctx import Ctx
    from pyxapi.cli.table import ClassSpec, FieldSpec

# A list needing more objects of one class than this reads the whole class in one call.
PREFETCH_OVER = 3


def run(c: Ctx, cli: str, op: str) -> None:
    spec = class_spec(cli)
    handlers = {
        "list": do_list,
        "param-list": param_list,
        "param-get": param_get,
        "param-set": param_set,
        "param-add": param_add,
        "param-remove": param_remove,
        "param-clear": param_clear,
    }
    handlers[op](c, spec)


def _pushdown(spec: ClassSpec, filters: list[tuple[str, str]]) -> str:
    """Filters on plain string/bool fields go to the server too (the same equality xe applies
    afterwards), so that `vm-list` on a large pool does not fetch every template."""
    terms = []
    for key, value in filters:
        f = spec.by_name.get(key)
        if f is None or f.getter[0] != "f" or f.type not in ("string", "bool") or f.ci:
            continue
        v = value.replace("\\", "\\\\").replace('"', '\\"')
        terms.append(f'field "{f.getter[1]}"="{v}"')
    return " and ".join(terms) or "true"


def fetch(c: Ctx, spec: ClassSpec, where: str = "true") -> list[CliRecord]:
    records = c.api.call(f"{spec.api}.get_all_records_where", where)
    return [CliRecord(spec, ref, rec, c.resolver) for ref, rec in records.items()]


def warm(c: Ctx, records: list[CliRecord], fields: list[FieldSpec]) -> None:
    """Read whole classes when a list refers to many of their objects."""
    wanted: dict[str, set[str]] = {}
    for f in fields:
        g = f.getter
        if f.expensive or g[0] not in ("ru", "rn", "su", "m"):
            continue
        cls = g[2] if g[0] == "m" else ref_class(f.type)
        field = g[1]
        refs = wanted.setdefault(cls, set())
        for r in records:
            v = r.rec.get(field)
            refs.update(v if isinstance(v, list) else [v] if isinstance(v, str) and v != NULL else [])
    for cls, refs in wanted.items():
        if len(refs) > PREFETCH_OVER:
            c.resolver.prefetch(cls)


def do_list(c: Ctx, spec: ClassSpec) -> None:
    filters = [
        (k, v) for k, v in c.params.items() if k != "params" and k not in STD_PARAMS and not k.startswith("database:")
    ]
    filters = list(spec.filters.items()) + filters
    print_all = c.flag("all")
    records = fetch(c, spec, "true" if print_all else _pushdown(spec, filters))
    everything = records
    for key, value in filters:
        records = filter_records(records, key, value)
    shown = everything if print_all else records
    fields = select_fields(spec, choose_params(c.opt("params"), spec.list_params))
    warm(c, shown, fields)
    c.printer.table([r.printed(fields, placeholders=True) for r in shown])


def one(c: Ctx, spec: ClassSpec) -> CliRecord:
    ref = c.api.call(f"{spec.api}.get_by_uuid", c.req("uuid"))
    return CliRecord(spec, ref, c.api.call(f"{spec.api}.get_record", ref), c.resolver)


def param_list(c: Ctx, spec: ClassSpec) -> None:
    r = one(c, spec)
    c.printer.table([r.printed(select_fields(spec, None))])


def param_get(c: Ctx, spec: ClassSpec) -> None:
    r = one(c, spec)
    f = r.field(c.req("param-name"))
    key = c.opt("param-key")
    if key is not None and f.is_map:
        pairs = dict(r.get_map(f) or [])
        if key not in pairs:
            raise CliFailure(f"Key {key} not found in map")
        c.printer.lines([pairs[key]])
        return
    c.printer.lines([r.get(f)])


# -- writing ------------------------------------------------------------------------------
def _enum_value(enum: str, text: str) -> str:
    from pyxapi.cli import table

    values = table._load("enums.json").get(enum, [])
    return next((v for v in values if v.lower() == text.lower()), text)


def convert(c: Ctx, f: FieldSpec, text: str) -> Any:
    """What the user typed, as the value the field's setter takes."""
    conv = f.conv or "string"
    if conv.startswith("ref:"):
        return NULL if text == "" else c.by_uuid(conv[4:], text)
    if conv.startswith("refs:"):
        return [c.by_uuid(conv[5:], u) for u in text.split(",") if u]
    if conv == "int":
        return parse_int(f.name, text)
    if conv == "bytes":
        return parse_bytes(f.name, text)
    if conv == "float":
        try:
            return float(text)
        except ValueError:
            raise CliFailure(f"Parameter {f.name} must be a floating-point number") from None
    if conv == "bool":
        from pyxapi.cli.argv import parse_bool

        return parse_bool(f.name, text)
    if conv.startswith("enum:"):
        return _enum_value(conv[5:], text)
    if conv == "set":
        return [w for w in text.split(",") if w]
    return text


def _member(c: Ctx, f: FieldSpec, text: str) -> Any:
    """A set member as the API takes it (a uuid becomes a ref for sets of references)."""
    et = f.type[: -len(" set")] if f.type.endswith(" set") else f.type
    if et.endswith(" ref"):
        return c.by_uuid(ref_class(et), text)
    if et.startswith("enum "):
        return _enum_value(et[5:], text)
    return text


def _write(c: Ctx, r: CliRecord, f: FieldSpec, op: str, *args: Any) -> None:
    message = f.writers.get(op)
    if message is None:
        raise CliFailure(f"Field '{f.name}' is read-only.")
    c.api.call(f"{r.spec.api}.{message}", r.ref, *args)


def _field_kind(spec: ClassSpec, key: str) -> tuple[str, FieldSpec]:
    """xe's get_field_type: a field, `map:key`/`set:x`, or the older `map-key` spelling."""
    f = spec.by_name.get(key)
    if f is not None:
        return "normal", f
    if ":" in key:
        f = spec.by_name.get(key.split(":", 1)[0])
        if f is None:
            raise CliFailure(f"Unknown field '{key}'")
        if f.is_set:
            return "set", f
        if f.is_map:
            return "map", f
        raise CliFailure(f"Field '{f.name}' is not a set or map")
    for kind, candidates in (
        ("map", [x for x in spec.fields if x.is_map]),
        ("set", [x for x in spec.fields if x.is_set]),
    ):
        for f in sorted(candidates, key=lambda x: -len(x.name)):
            if key.startswith(f.name + "-"):
                return kind, f
    raise CliFailure(f"Unknown field '{key}'")


def param_set(c: Ctx, spec: ClassSpec) -> None:
    r = one(c, spec)
    whole_maps: dict[str, list[tuple[str, str]]] = {}
    for key, value in c.params.items():
        if key == "uuid" or key in STD_PARAMS:
            continue
        kind, f = _field_kind(spec, key)
        if kind == "set":
            raise CliFailure("Cannot param-set on set fields")
        if kind == "map":
            sub = key[len(f.name) + 1 :]
            if "set_in_map" in f.ops:
                _write(c, r, f, "set_in_map", sub, value)
            elif "set_map" in f.ops:
                whole_maps.setdefault(f.name, list(r.get_map(f) or []))
                whole_maps[f.name] = [(k, v) for k, v in whole_maps[f.name] if k != sub] + [(sub, value)]
            else:
                if "add_to_map" not in f.ops:
                    raise CliFailure(f"Map field '{f.name}' is read-only.")
                if sub in dict(r.get_map(f) or []):
                    _write(c, r, f, "remove_from_map", sub)
                _write(c, r, f, "add_to_map", sub, value)
            continue
        if "set" in f.ops:
            _write(c, r, f, "set", convert(c, f, value))
        elif "add_to_map" in f.ops:
            raise CliFailure(f"Field '{key}' is a map or set. use the 'name:key=value' syntax.")
        else:
            raise CliFailure(f"Field '{key}' is read-only.")
    for name, pairs in whole_maps.items():
        _write(c, r, spec.by_name[name], "set_map", dict(pairs))


def _extra(c: Ctx) -> list[tuple[str, str]]:
    skip = {"uuid", "param-name", "param-key", *STD_PARAMS}
    return [(k, v) for k, v in c.params.items() if k not in skip]


def param_add(c: Ctx, spec: ClassSpec) -> None:
    r = one(c, spec)
    f = r.field(c.req("param-name"))
    if "add_to_set" in f.ops:
        key = c.opt("param-key")
        if key is None:
            raise CliFailure(
                "When adding a key to a set, use the syntax: *-param-add param-name=<name> param-key=<key>"
            )
        _write(c, r, f, "add_to_set", _member(c, f, key))
    elif "add_to_map" in f.ops:
        for k, v in _extra(c):
            _write(c, r, f, "add_to_map", k, v)
    elif f.is_set or f.is_map:
        raise CliFailure("Parameter is read-only")
    else:
        raise CliFailure("Can only add to parameters of type Set or Map")


def param_remove(c: Ctx, spec: ClassSpec) -> None:
    r = one(c, spec)
    f = r.field(c.req("param-name"))
    key = c.req("param-key")
    if f.is_set and "remove_from_set" in f.ops:
        if key not in (r.get_set(f) or []):
            raise CliFailure(f"Key {key} is not in the set")
        _write(c, r, f, "remove_from_set", _member(c, f, key))
    elif f.is_map and "remove_from_map" in f.ops:
        if key not in dict(r.get_map(f) or []):
            raise CliFailure(f"Key {key} is not in map")
        _write(c, r, f, "remove_from_map", key)
    elif f.is_set or f.is_map:
        raise CliFailure("Cannot remove parameters from read-only map")
    else:
        raise CliFailure("Can only remove from parameters of type Set or Map")


def param_clear(c: Ctx, spec: ClassSpec) -> None:
    r = one(c, spec)
    f = r.field(c.req("param-name"))
    if f.is_set and "remove_from_set" in f.ops:
        for member in r.get_set(f) or []:
            _write(c, r, f, "remove_from_set", _member(c, f, member))
    elif "clear_map" in f.ops:
        _write(c, r, f, "clear_map", {})
    elif "set_map" in f.ops:
        _write(c, r, f, "set_map", {})
    elif f.is_map and "remove_from_map" in f.ops:
        for k, _ in r.get_map(f) or []:
            _write(c, r, f, "remove_from_map", k)
    elif "set" in f.ops:
        try:
            _write(c, r, f, "set", convert(c, f, ""))
        except (ApiFailure, CliFailure):
            raise CliFailure("Cannot clear this parameter") from None
    else:
        raise CliFailure("Can only clear RW parameters")
