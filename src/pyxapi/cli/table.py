"""The CLI's tables, generated from the model and the xe command reference by
scripts/gen_cli_table.py, read lazily: a command loads the index and its own class only."""

from __future__ import annotations

import os

from pyxapi.cli import fastjson

DATA = os.path.join(os.path.dirname(__file__), "data")
_cache: dict[str, object] = {}

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _load(name: str) -> Any:
    if name not in _cache:
        with open(os.path.join(DATA, name), "rb") as f:
            _cache[name] = fastjson.loads(f.read())
    return _cache[name]


class CommandSpec:
    """A command's name, parameters and flags (s: standard, h: hidden, v/o/r: VM/host/SR
    selectors, d: deprecated); `generated` is (cli class, operation) for <class>-<op> ones."""

    __slots__ = ("flags", "generated", "name", "optn", "reqd")

    def __init__(self, name: str, raw: dict[str, Any]) -> None:
        self.name = name
        self.reqd: list[str] = raw["r"]
        self.optn: list[str] = raw["o"]
        self.flags: str = raw.get("f", "")
        g = raw.get("g")
        self.generated: tuple[str, str] | None = (g[0], g[1]) if g else None


def command_names() -> list[str]:
    return list(_load("commands.json"))


def command(name: str) -> CommandSpec | None:
    raw = _load("commands.json").get(name)
    return CommandSpec(name, raw) if raw is not None else None


def flags(name: str) -> str:
    raw = _load("commands.json").get(name)
    return str(raw.get("f", "")) if raw else ""


def counts() -> dict[str, int]:
    return dict(_load("counts.json"))


def error_params(code: str) -> list[str] | None:
    params = _load("errors.json").get(code)
    return list(params) if params is not None else None


class FieldSpec:
    """How one CLI field of a class is read, shown and written (see the generator's notes)."""

    __slots__ = (
        "api",
        "case",
        "ci",
        "conv",
        "deprecated",
        "expensive",
        "getter",
        "hidden",
        "name",
        "ops",
        "sep",
        "type",
        "writers",
    )

    def __init__(self, raw: dict[str, Any]) -> None:
        self.name: str = raw["n"]
        self.getter: list[Any] = raw["g"]
        self.type: str = raw["t"]
        self.ops: tuple[str, ...] = tuple(raw.get("ops", ()))
        self.hidden = bool(raw.get("h"))
        self.expensive = bool(raw.get("x"))
        self.deprecated = bool(raw.get("d"))
        self.ci = bool(raw.get("ci"))
        self.sep: str = raw.get("sep", "; ")
        self.case: str | None = raw.get("case")
        self.api: str | None = raw.get("api")
        self.writers: dict[str, str] = raw.get("w", {})
        self.conv: str | None = raw.get("conv")

    @property
    def is_set(self) -> bool:
        return "get_set" in self.ops

    @property
    def is_map(self) -> bool:
        return "get_map" in self.ops

    def marker(self) -> str:
        """xe's access marker after the name: ( RO) ( RW) (SRO) (SRW) (MRO) (MRW)."""
        if self.is_set:
            return " (SRW)" if "add_to_set" in self.ops else " (SRO)"
        if self.is_map:
            return " (MRW)" if "add_to_map" in self.ops else " (MRO)"
        return " ( RW)" if "set" in self.ops else " ( RO)"

    def label(self) -> str:
        return self.name + self.marker() + (" [DEPRECATED]" if self.deprecated else "")


class ClassSpec:
    __slots__ = ("api", "by_name", "cli", "fields", "filters", "list_params")

    def __init__(self, raw: dict[str, Any]) -> None:
        self.cli: str = raw["cli"]
        self.api: str = raw["api"]
        self.filters: dict[str, str] = raw["filters"]
        self.list_params: list[str] = raw["list"]
        self.fields = [FieldSpec(f) for f in raw["fields"]]
        self.by_name = {f.name: f for f in self.fields}


def class_spec(cli: str) -> ClassSpec:
    key = f"classes/{cli}.json"
    spec = _cache.get("spec:" + key)
    if spec is None:
        spec = _cache["spec:" + key] = ClassSpec(_load(key))
    return spec  # type: ignore[return-value]


def class_names() -> list[str]:
    return sorted(n[:-5] for n in os.listdir(os.path.join(DATA, "classes")) if n.endswith(".json"))
