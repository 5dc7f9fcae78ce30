"""The XenAPI type language ("VM ref", "(string -> int) map", ...) as a small AST."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Prim:
    """string, int (64-bit), float, bool, datetime."""

    name: str


@dataclass(frozen=True, slots=True)
class Ref:
    cls: str


@dataclass(frozen=True, slots=True)
class Enum:
    name: str


@dataclass(frozen=True, slots=True)
class Set:
    item: ApiType


@dataclass(frozen=True, slots=True)
class Map:
    key: ApiType
    value: ApiType


@dataclass(frozen=True, slots=True)
class Record:
    cls: str


@dataclass(frozen=True, slots=True)
class Option:
    item: ApiType


@dataclass(frozen=True, slots=True)
class Void:
    pass


ApiType = Prim | Ref | Enum | Set | Map | Record | Option | Void

STRING = Prim("string")
INT = Prim("int")
FLOAT = Prim("float")
BOOL = Prim("bool")
DATETIME = Prim("datetime")
VOID = Void()
_PRIMS = {p.name: p for p in (STRING, INT, FLOAT, BOOL, DATETIME)}


class TypeSyntaxError(ValueError):
    pass


def parse_type(text: str) -> ApiType:
    """Parse the reference's type notation; postfix words bind to what precedes them."""
    parser = _Parser(text)
    result = parser.parse()
    if parser.pos != len(parser.tokens):
        raise TypeSyntaxError(text)
    return result


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = text.replace("(", " ( ").replace(")", " ) ").split()
        self.pos = 0

    def _next(self) -> str:
        if self.pos >= len(self.tokens):
            raise TypeSyntaxError(self.text)
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def parse(self) -> ApiType:
        base = self._atom()
        while (word := self._peek()) in ("ref", "set", "record", "option"):
            self.pos += 1
            base = self._postfix(base, word)
        return base

    def _postfix(self, base: ApiType, word: str | None) -> ApiType:
        if word == "set":
            return Set(base)
        if word == "option":
            return Option(base)
        if not isinstance(base, _ClassName):
            raise TypeSyntaxError(self.text)
        return Ref(base.name) if word == "ref" else Record(base.name)

    def _atom(self) -> ApiType:
        tok = self._next()
        if tok == "(":
            key = self.parse()
            if self._next() != "->":
                raise TypeSyntaxError(self.text)
            value = self.parse()
            if self._next() != ")" or self._next() != "map":
                raise TypeSyntaxError(self.text)
            return Map(key, value)
        if tok == "enum":
            return Enum(self._next())
        if tok == "void":
            return VOID
        if tok in _PRIMS and self._peek() not in ("ref", "record"):
            return _PRIMS[tok]
        return _ClassName(tok)  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class _ClassName:
    """Transient parse node: a class name waiting for `ref` or `record`."""

    name: str


def type_to_str(t: ApiType) -> str:
    match t:
        case Prim(name):
            return name
        case Ref(cls):
            return f"{cls} ref"
        case Enum(name):
            return f"enum {name}"
        case Set(item):
            return f"{type_to_str(item)} set"
        case Map(k, v):
            return f"({type_to_str(k)} -> {type_to_str(v)}) map"
        case Record(cls):
            return f"{cls} record"
        case Option(item):
            return f"{type_to_str(item)} option"
        case Void():
            return "void"
    raise TypeError(t)
