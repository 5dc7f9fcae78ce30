"""CLI records: an API record seen through the CLI field table, each value printed as xe
prints it (refs as uuids, maps as `k: v; k2: v2`, sets joined by `; `, floats with 3 decimals),
and xe's filters over them (`field=value`, `map:key=value`, `set:contains=value`)."""

from __future__ import annotations

from pyxapi.cli.errors import ApiFailure, CliFailure

NID = "<not in database>"
NULL = "OpaqueRef:NULL"

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from pyxapi.cli.session import Api
    from pyxapi.cli.table import ClassSpec, FieldSpec


class Resolver:
    """Records of referenced objects, fetched once per command (one by one, or a whole class
    at once when a list needs many of them)."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.records: dict[str, dict[str, Any] | None] = {}
        self._whole: set[str] = set()

    def record(self, cls: str, ref: str) -> dict[str, Any] | None:
        if not ref or ref == NULL:
            return None
        if ref not in self.records:
            try:
                self.records[ref] = self.api.call(f"{cls}.get_record", ref)
            except ApiFailure:
                self.records[ref] = None
        return self.records[ref]

    def prefetch(self, cls: str) -> None:
        if cls in self._whole:
            return
        self._whole.add(cls)
        try:  # noqa: SIM105 - contextlib would cost xe's start-up another import
            self.records.update(self.api.call(f"{cls}.get_all_records"))
        except ApiFailure:
            pass

    def uuid(self, cls: str, ref: str) -> str:
        rec = self.record(cls, ref)
        return str(rec.get("uuid", NID)) if rec else NID

    def name(self, cls: str, ref: str) -> str:
        rec = self.record(cls, ref)
        return str(rec.get("name_label", NID)) if rec else NID


def ref_class(type_text: str) -> str:
    """`VM ref` / `VM ref set` / `(string -> blob ref) map` -> the referenced class."""
    t = type_text.split(" -> ")[-1].rstrip(") map") if " -> " in type_text else type_text
    return t.split(" ")[0]


def scalar(value: Any, type_text: str, case: str | None = None) -> str:
    if value is None:
        return ""
    if type_text == "bool" or isinstance(value, bool):
        return "true" if value else "false"
    if type_text == "float":
        return f"{float(value):.3f}"
    if type_text == "int":
        return str(int(value))
    text = str(value)
    if case == "lower":
        return text.lower()
    if case == "upper":
        return text.upper()
    return text


def element_type(type_text: str) -> str:
    return type_text[: -len(" set")] if type_text.endswith(" set") else type_text


def map_value_type(type_text: str) -> str:
    inner = type_text[1 : -len(") map")] if type_text.endswith(") map") else type_text
    return inner.split(" -> ", 1)[1] if " -> " in inner else "string"


class CliRecord:
    """One object as the CLI shows it."""

    def __init__(self, spec: ClassSpec, ref: str, rec: dict[str, Any], resolver: Resolver) -> None:
        self.spec = spec
        self.ref = ref
        self.rec = rec
        self.resolver = resolver

    def field(self, name: str) -> FieldSpec:
        f = self.spec.by_name.get(name)
        if f is None:
            raise ApiFailure("Missing parameter", [name])
        return f

    # -- the pieces of a value ------------------------------------------------------------
    def _related(self, via: str, cls: str) -> dict[str, Any] | None:
        return self.resolver.record(cls, str(self.rec.get(via, NULL)))

    def _call(self, message: str) -> Any:
        return self.resolver.api.call(f"{self.spec.api}.{message}", self.ref)

    def _format(self, value: Any, f: FieldSpec, type_text: str | None = None) -> str:
        t = type_text or f.type
        if t.endswith(" ref"):
            return self.resolver.uuid(ref_class(t), str(value))
        if t.endswith(" set"):
            return f.sep.join(self._elements(value, t, f))
        if t.endswith(" map"):
            pairs = self._pairs(value, t, f)
            if f.api == "current_operations":
                return "; ".join(v for _, v in pairs)
            return "; ".join(f"{k}: {v}" for k, v in pairs)
        return scalar(value, t, f.case)

    def _elements(self, value: Any, type_text: str, f: FieldSpec) -> list[str]:
        et = element_type(type_text)
        if et.endswith(" ref"):
            cls = ref_class(et)
            return [self.resolver.uuid(cls, str(r)) for r in value or []]
        return [scalar(v, et, f.case) for v in value or []]

    def _pairs(self, value: Any, type_text: str, f: FieldSpec) -> list[tuple[str, str]]:
        vt = map_value_type(type_text)
        out = []
        for k, v in (value or {}).items():
            if vt.endswith(" ref"):
                out.append((str(k), self.resolver.uuid(ref_class(vt), str(v))))
            elif vt.endswith(" set"):
                out.append((str(k), "; ".join(scalar(x, element_type(vt)) for x in v)))
            else:
                out.append((str(k), scalar(v, vt, f.case)))
        return out

    # -- what xe prints, and the set/map views param-get and filters use -------------------
    def get(self, f: FieldSpec) -> str:
        """safe_get_field: a dangling reference prints as <invalid reference>."""
        try:
            return self._get(f)
        except ApiFailure as e:
            if e.code == "HANDLE_INVALID":
                return "<invalid reference>"
            raise

    def _get(self, f: FieldSpec) -> str:
        g = f.getter
        kind = g[0]
        if kind == "f":
            return self._format(self.rec.get(g[1]), f)
        if kind == "ru":
            return self.resolver.uuid(ref_class(f.type), str(self.rec.get(g[1], NULL)))
        if kind == "rn":
            return self.resolver.name(ref_class(f.type), str(self.rec.get(g[1], NULL)))
        if kind == "su":
            return "; ".join(self._elements(self.rec.get(g[1]), f.type, f))
        if kind == "m":
            related = self._related(g[1], g[2])
            if related is None or g[3] not in related:
                return str(g[4])
            return self._format(related[g[3]], f)
        if kind == "call":
            return self._get_call(f)
        if kind == "x":
            from pyxapi.cli import derived

            return derived.value(self, f, g[1])
        return "<unknown>"

    def _get_call(self, f: FieldSpec) -> str:
        _, message, how, missing = f.getter
        try:
            value = self._call(message)
        except ApiFailure:
            return str(missing)
        if how == "strings":
            return "; ".join(str(v) for v in value)
        if how == "refs":
            return "; ".join(self.resolver.uuid("host", str(r)) for r in value)
        if how == "map":
            return "; ".join(f"{k}: {v}" for k, v in value.items())
        return scalar(value, "bool" if how == "bool" else "int" if how == "int" else "string")

    def get_set(self, f: FieldSpec) -> list[str] | None:
        if not f.is_set:
            return None
        g = f.getter
        if g[0] == "su" or (g[0] == "f" and f.type.endswith(" set")):
            return self._elements(self.rec.get(g[1]), f.type, f)
        if g[0] == "f" and f.type.endswith(" map"):  # current-operations: the operations
            return [v for _, v in self._pairs(self.rec.get(g[1]), f.type, f)]
        if g[0] == "call":
            try:
                return [str(v) for v in self._call(g[1])]
            except ApiFailure:
                return []
        text = self.get(f)
        return [s for s in text.split(f.sep) if s] if text else []

    def get_map(self, f: FieldSpec) -> list[tuple[str, str]] | None:
        if not f.is_map:
            return None
        g = f.getter
        if g[0] == "f":
            return self._pairs(self.rec.get(g[1]), f.type, f)
        if g[0] == "m":
            related = self._related(g[1], g[2])
            if related is None or g[3] not in related:
                return []
            return self._pairs(related[g[3]], f.type, f)
        if g[0] == "x":
            from pyxapi.cli import derived

            return derived.pairs(self, f, g[1])
        if g[0] == "call":
            try:
                return [(str(k), str(v)) for k, v in self._call(g[1]).items()]
            except ApiFailure:
                return []
        return []

    def printed(self, fields: list[FieldSpec], placeholders: bool = False) -> list[tuple[str, str]]:
        """(label, value) pairs; in lists, expensive fields show as <expensive field>."""
        return [(f.label(), "<expensive field>" if placeholders and f.expensive else self.get(f)) for f in fields]


def select_fields(spec: ClassSpec, wanted: list[str] | None) -> list[FieldSpec]:
    """params=a,b (record order, as xe keeps it); params=all or none given: everything not hidden."""
    if not wanted:
        return [f for f in spec.fields if not f.hidden]
    return [f for f in spec.fields if f.name in wanted and not f.hidden]


def choose_params(params_value: str | None, defaults: list[str]) -> list[str]:
    if params_value is None:
        return defaults
    return [] if params_value == "all" else params_value.split(",")


def filter_records(records: list[CliRecord], key: str, value: str) -> list[CliRecord]:
    if not records:
        return []
    spec = records[0].spec
    f = spec.by_name.get(key)
    if f is not None:
        if f.ci:
            return [r for r in records if r.get(f).lower() == value.lower()]
        return [r for r in records if r.get(f) == value]
    if ":" in key:
        name, _, sub = key.partition(":")
        f = spec.by_name.get(name)
        if f is None:
            raise CliFailure(f"Unknown field '{key}'")
        if f.is_set:
            return _filter_set(records, f, sub, value)
        if f.is_map:
            return _filter_map(records, f, sub, value)
        raise CliFailure(f"Field '{f.name}' is not a set or map")
    # xe's older spelling: map-name-key=value (the longest map name that prefixes it)
    for candidates in ([f for f in spec.fields if f.is_map], [f for f in spec.fields if f.is_set]):
        for f in sorted(candidates, key=lambda c: -len(c.name)):
            if key.startswith(f.name + "-"):
                sub = key[len(f.name) + 1 :]
                if f.is_map:
                    return _filter_map(records, f, sub, value)
                return _filter_set(records, f, sub, value)
    raise CliFailure(f"Unknown field '{key}'")


def _filter_set(records: list[CliRecord], f: FieldSpec, sub: str, value: str) -> list[CliRecord]:
    if sub != "contains":
        raise CliFailure("Invalid syntax for set filtering (should be set-param:contains=key)")
    out = []
    for r in records:
        members = r.get_set(f) or []
        if f.ci:
            members, want = [m.lower() for m in members], value.lower()
        else:
            want = value
        if want in members:
            out.append(r)
    return out


def _filter_map(records: list[CliRecord], f: FieldSpec, key: str, value: str) -> list[CliRecord]:
    out = []
    for r in records:
        pairs = dict(r.get_map(f) or [])
        if pairs.get(key) == value:
            out.append(r)
    return out
