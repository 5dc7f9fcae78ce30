"""xapi's row-filter language, as used by `<class>.get_all_records_where` and `get_all_where`.

The grammar follows xapi's own lexer and parser (ocaml/database/db_filter_lex.mll and
db_filter_parse.mly), because clients write filters against real xapi and must get the same
rows back from us:

    expr  := "true" | "false" | "not" expr | expr "and" expr | expr "or" expr
           | "(" expr ")" | value "=" value | value "<>" value
    value := "field" STRING | STRING

Details confirmed against xapi, several of which are easy to get wrong:

* `and` and `or` have the SAME precedence and associate to the left:
  `a or b and c` is `(a or b) and c`.
* `not` has the LOWEST precedence: it takes everything to its right up to the closing
  parenthesis or the end, so `not a and b` is `not (a and b)`. Write `(not a) and b` for
  the other reading.
* STRING is a double quote, any characters but a double quote, and a double quote. xapi has
  no escapes at all: `"C:\\"` is the three characters `C:\\`. That is our default too; a
  caller that builds filters itself may pass `escapes=True` to get `\\"` and `\\\\`
  (see `parse`).
* Keywords are lowercase and need no separating space (`field"uuid"="x"` and `nottrue` are
  valid xapi); whitespace is space, tab and newline (we also accept carriage return, which
  xapi rejects, because filters typed on Windows clients end lines with it).
* The empty string is a syntax error, as in xapi.

Two deliberate differences from xapi:

* `<>` (not equal) is a pyxapi extension; xapi only has `=`. It never changes the meaning of
  a filter xapi accepts.
* A field the row does not have: xapi fails the whole call with a database error. Here
  `get_field` returns None and the comparison is simply false for `=` and true for `<>`,
  so `a <> b` is always exactly `not (a = b)`. Callers that prefer xapi's failure can check
  `field_names(expr)` against the class's fields before evaluating.

Fields are named in xapi's flattened database form, where namespaces join with `__`:
`field "name__label"` is the record key `name_label`. Comparison is on strings, so record
values must first be rendered the way xapi's database stores them: see `render_value`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "And",
    "Eq",
    "Expr",
    "FalseExpr",
    "Field",
    "FilterSyntaxError",
    "Literal",
    "Neq",
    "Not",
    "Or",
    "TrueExpr",
    "Value",
    "db_field_to_key",
    "evaluate",
    "field_names",
    "parse",
    "quote",
    "render_value",
]

# Filters nested deeper than this (in parentheses and `not`s, or in the resulting tree) are
# refused at parse time, because both the parser and `evaluate` recurse once per level and
# must not hit Python's recursion limit. No real filter comes close: long `or` chains stay
# one level deep (see `_Parser._expr`).
MAX_DEPTH = 100


class FilterSyntaxError(ValueError):
    """The filter text is not a valid expression. `position` is a character offset."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at position {position}")
        self.position = position


# ---- syntax tree ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    """A record field, by its record key (`name_label`, not xapi's `name__label`)."""

    name: str


@dataclass(frozen=True, slots=True)
class Literal:
    value: str


Value = Field | Literal


@dataclass(frozen=True, slots=True)
class TrueExpr:
    pass


@dataclass(frozen=True, slots=True)
class FalseExpr:
    pass


@dataclass(frozen=True, slots=True)
class Not:
    expr: Expr


@dataclass(frozen=True, slots=True)
class And:
    """All terms true. n-ary so that `a and b and c ...` stays one level deep."""

    terms: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Or:
    terms: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Eq:
    left: Value
    right: Value


@dataclass(frozen=True, slots=True)
class Neq:
    left: Value
    right: Value


Expr = TrueExpr | FalseExpr | Not | And | Or | Eq | Neq


def db_field_to_key(name: str) -> str:
    """xapi's flattened database column name to the record key: `name__label` -> `name_label`."""
    return name.replace("__", "_")


# ---- lexer ------------------------------------------------------------------------------------

# Token kinds. Keywords are tried as plain prefixes, exactly like xapi's ocamllex rules: the
# language has no bare identifiers, so `nottrue` can only mean `not true`.
_KEYWORDS = ("true", "false", "field", "and", "or", "not")
_PUNCT = ("<>", "=", "(", ")")
_SPACE = " \t\n\r"
_STRING = "string"
_EOF = "eof"


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # a keyword, a punctuation mark, _STRING or _EOF
    text: str  # the string's contents for _STRING
    pos: int


def _tokens(text: str, escapes: bool) -> Iterator[_Token]:
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _SPACE:
            i += 1
            continue
        if c == '"':
            value, i = _read_string(text, i, escapes)
            yield _Token(_STRING, value, i)
            continue
        for word in (*_PUNCT, *_KEYWORDS):
            if text.startswith(word, i):
                yield _Token(word, word, i)
                i += len(word)
                break
        else:
            raise FilterSyntaxError(f"unexpected character {c!r}", i)
    yield _Token(_EOF, "", n)


def _read_string(text: str, start: int, escapes: bool) -> tuple[str, int]:
    """Read the string whose opening quote is at `start`; return its value and the next index."""
    if not escapes:
        end = text.find('"', start + 1)
        if end < 0:
            raise FilterSyntaxError("unterminated string", start)
        return text[start + 1 : end], end + 1
    out: list[str] = []
    i = start + 1
    while i < len(text):
        c = text[i]
        if c == '"':
            return "".join(out), i + 1
        # Only \" and \\ are escapes; any other backslash stays literal so that most strings
        # written for xapi (Windows paths, regexps) read the same in both modes.
        if c == "\\" and i + 1 < len(text) and text[i + 1] in '"\\':
            out.append(text[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    raise FilterSyntaxError("unterminated string", start)


# ---- parser -----------------------------------------------------------------------------------


def parse(text: str, *, escapes: bool = False) -> Expr:
    """Parse a filter; raise FilterSyntaxError (and nothing else) if it is not valid.

    `escapes=False` reads strings exactly as xapi does (no escapes, so a value containing a
    double quote cannot be written). `escapes=True` additionally reads `\\"` as `"` and `\\\\`
    as `\\`; use it only for filters pyxapi itself builds with `quote(..., escapes=True)`.
    """
    if not isinstance(text, str):
        raise FilterSyntaxError("filter must be a string", 0)
    return _Parser(text, escapes).parse()


class _Parser:
    def __init__(self, text: str, escapes: bool) -> None:
        self._tokens = _tokens(text, escapes)
        self._tok = next(self._tokens)

    def parse(self) -> Expr:
        expr, _ = self._expr(0)
        if self._tok.kind != _EOF:
            raise self._unexpected()
        return expr

    def _advance(self) -> _Token:
        tok = self._tok
        if tok.kind != _EOF:
            self._tok = next(self._tokens)
        return tok

    def _unexpected(self) -> FilterSyntaxError:
        tok = self._tok
        shown = "end of input" if tok.kind == _EOF else repr(tok.kind if tok.kind != _STRING else tok.text)
        return FilterSyntaxError(f"unexpected {shown}", tok.pos)

    def _check_depth(self, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise FilterSyntaxError("expression nested too deeply", self._tok.pos)

    def _expr(self, nesting: int) -> tuple[Expr, int]:
        """expr := unary (("and" | "or") unary)*, left-associative, one precedence level.

        `nesting` counts the parentheses and `not`s we are inside (the parser's recursion);
        the returned int is the depth of the returned tree (`evaluate`'s recursion). A run of
        the same operator becomes one n-ary node, so `a or b or c ...` stays one level deep.
        """
        self._check_depth(nesting)
        first, depth = self._unary(nesting)
        terms = [first]
        op: str | None = None
        while self._tok.kind in ("and", "or"):
            next_op = self._advance().kind
            right, right_depth = self._unary(nesting)
            if op is not None and next_op != op:
                # Equal precedence, left-associative: what we have so far is the left operand.
                node, depth = _node(op, terms, depth)
                self._check_depth(depth)
                terms = [node]
            op = next_op
            terms.append(right)
            depth = max(depth, right_depth)
        if op is None:
            return first, depth
        node, depth = _node(op, terms, depth)
        self._check_depth(depth)
        return node, depth

    def _unary(self, nesting: int) -> tuple[Expr, int]:
        if self._tok.kind == "not":
            self._advance()
            # xapi gives `not` the lowest precedence: its operand is a whole expression.
            inner, inner_depth = self._expr(nesting + 1)
            self._check_depth(inner_depth + 1)
            return Not(inner), inner_depth + 1
        return self._primary(nesting)

    def _primary(self, nesting: int) -> tuple[Expr, int]:
        kind = self._tok.kind
        if kind == "true":
            self._advance()
            return TrueExpr(), 1
        if kind == "false":
            self._advance()
            return FalseExpr(), 1
        if kind == "(":
            self._advance()
            inner, inner_depth = self._expr(nesting + 1)
            if self._tok.kind != ")":
                raise self._unexpected()
            self._advance()
            return inner, inner_depth
        if kind in ("field", _STRING):
            left = self._value()
            op = self._tok.kind
            if op not in ("=", "<>"):
                raise self._unexpected()
            self._advance()
            right = self._value()
            return (Eq(left, right) if op == "=" else Neq(left, right)), 1
        raise self._unexpected()

    def _value(self) -> Value:
        if self._tok.kind == "field":
            self._advance()
            if self._tok.kind != _STRING:
                raise self._unexpected()
            return Field(db_field_to_key(self._advance().text))
        if self._tok.kind == _STRING:
            return Literal(self._advance().text)
        raise self._unexpected()


def _node(op: str, terms: list[Expr], terms_depth: int) -> tuple[Expr, int]:
    node = And(tuple(terms)) if op == "and" else Or(tuple(terms))
    return node, terms_depth + 1


# ---- evaluation -------------------------------------------------------------------------------


def evaluate(expr: Expr, get_field: Callable[[str], str | None]) -> bool:
    """Evaluate `expr` for one row.

    `get_field(key)` returns the field's value already rendered as xapi's database string
    (see `render_value`), or None when the row has no such field; a comparison involving a
    missing field is false for `=` and true for `<>`.
    """
    match expr:
        case TrueExpr():
            return True
        case FalseExpr():
            return False
        case Not(inner):
            return not evaluate(inner, get_field)
        case And(terms):
            return all(evaluate(t, get_field) for t in terms)
        case Or(terms):
            return any(evaluate(t, get_field) for t in terms)
        case Eq(left, right):
            return _equal(left, right, get_field)
        case Neq(left, right):
            return not _equal(left, right, get_field)
    raise TypeError(f"not a filter expression: {expr!r}")


def _equal(left: Value, right: Value, get_field: Callable[[str], str | None]) -> bool:
    a = _resolve(left, get_field)
    b = _resolve(right, get_field)
    return a is not None and b is not None and a == b


def _resolve(value: Value, get_field: Callable[[str], str | None]) -> str | None:
    if isinstance(value, Literal):
        return value.value
    return get_field(value.name)


def field_names(expr: Expr) -> set[str]:
    """The record keys the expression reads (to validate them, or to fetch only those)."""
    names: set[str] = set()
    stack: list[Expr] = [expr]
    while stack:
        node = stack.pop()
        match node:
            case Not(inner):
                stack.append(inner)
            case And(terms) | Or(terms):
                stack.extend(terms)
            case Eq(left, right) | Neq(left, right):
                names.update(v.name for v in (left, right) if isinstance(v, Field))
    return names


def quote(value: str, *, escapes: bool = False) -> str:
    """The filter STRING for `value`, readable back by `parse(..., escapes=escapes)`.

    Without escapes (xapi's syntax) a double quote cannot be written: ValueError.
    """
    if not escapes:
        if '"' in value:
            raise ValueError("a double quote cannot appear in an xapi filter string")
        return f'"{value}"'
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---- rendering record values as xapi's database strings -------------------------------------


def render_value(value: Any) -> str:
    """Render a field value as the string xapi's database holds, which is what filters compare.

    Mirrors xapi's generated DB marshalling (gen_db_actions.ml and String_marshall_helper):

    * bool: `true` / `false`; int: decimal; float: C's `%.18g` (so 0.1 is
      `0.100000000000000006` and 1.0 is `1`, as in xapi); str (strings, refs, enums,
      datetimes already in `YYYYMMDDTHH:MM:SSZ`): unchanged; an enum.Enum: its value;
      a datetime: `YYYYMMDDTHH:MM:SSZ` in UTC (naive means UTC).
    * a set (list, tuple, set, frozenset) is xapi's S-expression `('a' 'b')`: every element
      rendered, then single-quoted with `\\`, `"` and `'` backslash-escaped. Lists keep their
      order (xapi keeps a set's stored order); Python sets, which have none, are sorted.
    * a map (any Mapping) is `(('k1' 'v1') ('k2' 'v2'))`, sorted by key: current xapi keeps
      maps in an OCaml `Map.Make(String)`, i.e. in byte order, which for text is code-point
      order. Empty sets and maps are `()`.
    * None (an empty option) is the empty string; xapi never stores options in a row.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return render_value(value.value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _render_float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):
        utc = value.astimezone(UTC) if value.tzinfo is not None else value
        return utc.strftime("%Y%m%dT%H:%M:%SZ")
    if isinstance(value, Mapping):
        pairs = sorted((render_value(k), render_value(v)) for k, v in value.items())
        return "(" + " ".join(f"({_sexpr_string(k)} {_sexpr_string(v)})" for k, v in pairs) + ")"
    if isinstance(value, set | frozenset):
        return "(" + " ".join(_sexpr_string(s) for s in sorted(render_value(x) for x in value)) + ")"
    if isinstance(value, list | tuple):
        return "(" + " ".join(_sexpr_string(render_value(x)) for x in value) + ")"
    raise TypeError(f"cannot render {type(value).__name__} as an xapi database value")


def _render_float(value: float) -> str:
    # OCaml's Printf "%0.18g" goes through C printf, which spells these as below.
    if math.isnan(value):
        return "-nan" if math.copysign(1.0, value) < 0 else "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.18g}"


def _sexpr_string(text: str) -> str:
    # xapi's SExpr.escape: backslash, double and single quote get a backslash.
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")
    return f"'{escaped}'"
