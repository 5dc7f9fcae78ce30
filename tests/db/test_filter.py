"""xapi's get_all_records_where filter language: grammar as in xapi's db_filter_parse.mly."""

from __future__ import annotations

import contextlib
import enum
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from pyxapi.db.filter import (
    MAX_DEPTH,
    And,
    Eq,
    FalseExpr,
    Field,
    FilterSyntaxError,
    Literal,
    Neq,
    Not,
    Or,
    TrueExpr,
    evaluate,
    field_names,
    parse,
    quote,
    render_value,
)

T = TrueExpr()
F = FalseExpr()


def eq(field: str, value: str) -> Eq:
    return Eq(Field(field), Literal(value))


A, B, C, D = (eq(n, "1") for n in "abcd")
SRC_A, SRC_B, SRC_C, SRC_D = (f'field "{n}"="1"' for n in "abcd")


# ---- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", T),
        ("false", F),
        ('field "power_state" = "Running"', eq("power_state", "Running")),
        # xapi's flattened DB names: namespaces join with "__", record keys with "_".
        ('field "name__label" = "web"', eq("name_label", "web")),
        ('field "name__description"="x"', eq("name_description", "x")),
        ('"Running" = field "power_state"', Eq(Literal("Running"), Field("power_state"))),
        ('"a" = "a"', Eq(Literal("a"), Literal("a"))),
        ('field "a" = field "b"', Eq(Field("a"), Field("b"))),
        ('field "a" <> "b"', Neq(Field("a"), Literal("b"))),
        ("(true)", T),
        ("((false))", F),
        ('field "x" = ""', eq("x", "")),
        ('field "x" = "two words and (parens) or not"', eq("x", "two words and (parens) or not")),
    ],
)
def test_parse_atoms(text: str, expected: Any) -> None:
    assert parse(text) == expected


def test_and_or_have_equal_precedence_left_to_right() -> None:
    # xapi: `%left LAND LOR` -- one level, left-associative.
    assert parse(f"{SRC_A} or {SRC_B} and {SRC_C}") == And((Or((A, B)), C))
    assert parse(f"{SRC_A} and {SRC_B} or {SRC_C}") == Or((And((A, B)), C))
    assert parse(f"{SRC_A} and {SRC_B} or {SRC_C} and {SRC_D}") == And((Or((And((A, B)), C)), D))


def test_not_takes_everything_to_its_right() -> None:
    # xapi declares LNOT below LAND/LOR, so `not` has the lowest precedence.
    assert parse(f"not {SRC_A} and {SRC_B}") == Not(And((A, B)))
    assert parse(f"not {SRC_A} or {SRC_B}") == Not(Or((A, B)))
    assert parse(f"{SRC_A} and not {SRC_B} or {SRC_C}") == And((A, Not(Or((B, C)))))
    # ... up to the closing parenthesis.
    assert parse(f"(not {SRC_A}) and {SRC_B}") == And((Not(A), B))
    assert parse(f"(not {SRC_A} and {SRC_B}) or {SRC_C}") == Or((Not(And((A, B))), C))
    assert parse("not not true") == Not(Not(T))


def test_parentheses_group() -> None:
    assert parse(f"{SRC_A} or ({SRC_B} and {SRC_C})") == Or((A, And((B, C))))
    assert parse(f"({SRC_A} or {SRC_B}) and {SRC_C}") == And((Or((A, B)), C))


def test_runs_of_one_operator_are_flat() -> None:
    assert parse(f"{SRC_A} or {SRC_B} or {SRC_C} or {SRC_D}") == Or((A, B, C, D))
    assert parse(f"{SRC_A} and {SRC_B} and {SRC_C}") == And((A, B, C))


def test_keywords_need_no_spaces_as_in_xapi() -> None:
    assert parse('field"uuid"="x"') == eq("uuid", "x")
    assert parse("nottrue") == Not(T)
    assert parse("(true)and(false)or(true)") == Or((And((T, F)), T))
    assert parse('field "a"="1"andfield "b"="1"') == And((A, B))


def test_whitespace() -> None:
    assert parse(' \t\n field\t"a"\n=\n"1"  ') == A
    # Carriage returns are accepted too (a pyxapi leniency: xapi's lexer rejects them).
    assert parse('field "a" = "1"\r\nand\r\nfield "b" = "1"') == And((A, B))


def test_strings_have_no_escapes_by_default_like_xapi() -> None:
    # xapi's lexer: '"' [^ '"']* '"' -- a backslash is an ordinary character.
    assert parse('field "path" = "C:\\"') == eq("path", "C:\\")
    assert parse('field "x" = "a\\\\b"') == eq("x", "a\\\\b")
    assert parse('field "x" = "line\nbreak"') == eq("x", "line\nbreak")
    with pytest.raises(FilterSyntaxError):
        parse('field "x" = "say \\"hi\\""')


def test_escapes_mode_reads_backslash_quote_and_backslash_backslash() -> None:
    assert parse('field "x" = "say \\"hi\\""', escapes=True) == eq("x", 'say "hi"')
    assert parse('field "x" = "a\\\\b"', escapes=True) == eq("x", "a\\b")
    assert parse('field "x" = "tail\\\\"', escapes=True) == eq("x", "tail\\")
    # Any other backslash stays literal.
    assert parse('field "x" = "C:\\temp\\n"', escapes=True) == eq("x", "C:\\temp\\n")
    with pytest.raises(FilterSyntaxError, match="unterminated"):
        parse('field "x" = "C:\\"', escapes=True)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "field",
        'field "x"',
        '"x"',
        'field "x" =',
        '= "x"',
        'field "x" = "y" = "z"',
        'field "x" == "y"',
        'field "x" != "y"',
        'field x = "y"',
        'field = "y"',
        "(true",
        "true)",
        "()",
        "not",
        "true and",
        "and true",
        "true or or false",
        "true false",
        "truefalse",
        "TRUE",
        "True",
        'Field "x" = "y"',
        "true AND false",
        'field "x" = "unterminated',
        "field 'x' = 'y'",
        "true; false",
        "!true",
        'field "x" = "y" true',
        "\x00",
    ],
)
def test_syntax_errors(text: str) -> None:
    with pytest.raises(FilterSyntaxError):
        parse(text)


def test_syntax_error_reports_position() -> None:
    with pytest.raises(FilterSyntaxError) as info:
        parse('true and field "x" = ')
    assert info.value.position == len('true and field "x" = ')
    with pytest.raises(FilterSyntaxError) as info:
        parse("true # comment")
    assert info.value.position == 5
    assert isinstance(info.value, ValueError)


def test_non_string_input_is_a_syntax_error() -> None:
    with pytest.raises(FilterSyntaxError):
        parse(None)  # type: ignore[arg-type]
    with pytest.raises(FilterSyntaxError):
        parse(b"true")  # type: ignore[arg-type]


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    for depth in (MAX_DEPTH + 1, 10_000):
        with pytest.raises(FilterSyntaxError, match="too deeply"):
            parse("(" * depth + "true" + ")" * depth)
        with pytest.raises(FilterSyntaxError, match="too deeply"):
            parse("not " * depth + "true")
    # Alternating operators nest the tree one level per switch.
    alternating = " and true or ".join(["true"] * 5_000)
    with pytest.raises(FilterSyntaxError, match="too deeply"):
        parse(alternating)
    # Reasonable nesting is fine.
    nested = "(" * (MAX_DEPTH // 2) + "true" + ")" * (MAX_DEPTH // 2)
    assert parse(nested) == T


def test_long_flat_chains_parse_and_evaluate() -> None:
    uuids = [f"uuid-{i}" for i in range(20_000)]
    text = " or ".join(f'field "uuid"="{u}"' for u in uuids)
    expr = parse(text)
    assert isinstance(expr, Or) and len(expr.terms) == len(uuids)
    assert evaluate(expr, {"uuid": "uuid-19999"}.get)
    assert not evaluate(expr, {"uuid": "other"}.get)


def test_fuzz_only_ever_raises_filter_syntax_error() -> None:
    rng = random.Random(1234)
    pieces = ["true", "false", "not", "and", "or", "field", "(", ")", "=", "<>", '"', '"x"', "\\", " ", "<", ">"]
    for _ in range(3_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        for escapes in (False, True):
            try:
                expr = parse(text, escapes=escapes)
            except FilterSyntaxError:
                continue
            evaluate(expr, {"x": "x"}.get)  # whatever parses also evaluates
    for _ in range(2_000):
        text = "".join(chr(rng.randint(0, 0x2FF)) for _ in range(rng.randint(0, 20)))
        with contextlib.suppress(FilterSyntaxError):
            parse(text)


# ---- evaluation -------------------------------------------------------------------------------

VM: dict[str, Any] = {
    "uuid": "0b4bd1c5-2a21-4bb9-9a8b-d6f1cd2dd8d4",
    "name_label": "web-1",
    "power_state": "Running",
    "is_a_template": False,
    "is_control_domain": False,
    "VCPUs_max": 4,
    "memory_static_max": 2147483648,
    "HVM_shadow_multiplier": 1.0,
    "tags": ["prod", "web"],
    "other_config": {"owner": "ops"},
}


def vm_field(key: str) -> str | None:
    return render_value(VM[key]) if key in VM else None


def matches(text: str) -> bool:
    return evaluate(parse(text), vm_field)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("false", False),
        ('field "power_state" = "Running"', True),
        ('field "power_state" = "running"', False),  # plain string comparison, case-sensitive
        ('field "name__label" = "web-1"', True),
        ('field "is_a_template" = "false"', True),
        ('field "is_a_template" = "true"', False),
        ('field "VCPUs_max" = "4"', True),
        ('field "memory_static_max" = "2147483648"', True),
        ('field "HVM__shadow_multiplier" = "1"', True),
        ("field \"tags\" = \"('prod' 'web')\"", True),
        ("field \"other_config\" = \"(('owner' 'ops'))\"", True),
        ('field "power_state" <> "Halted"', True),
        ('field "power_state" <> "Running"', False),
        ('field "is_a_template" = "false" and field "is_control_domain" = "false"', True),
        ('field "power_state" = "Halted" or field "power_state" = "Running"', True),
        ('not field "power_state" = "Halted"', True),
        # `not` over the whole rest: not (Running and false-ish) -> true
        ('not field "power_state" = "Running" and field "VCPUs_max" = "8"', True),
        ('(not field "power_state" = "Running") and field "VCPUs_max" = "8"', False),
        # Left to right: (true or false) and false. With `and` binding tighter it would be true.
        ('field "VCPUs_max" = "4" or field "power_state" = "x" and false', False),
        ('"a" = "a"', True),
        ('"a" = "b"', False),
        ('field "uuid" = field "uuid"', True),
    ],
)
def test_evaluate(text: str, expected: bool) -> None:
    assert matches(text) is expected


def test_unknown_field_compares_false_for_eq_and_true_for_neq() -> None:
    assert matches('field "no_such_field" = ""') is False
    assert matches('field "no_such_field" = "x"') is False
    assert matches('field "no_such_field" <> "x"') is True
    assert matches('not field "no_such_field" = "x"') is True
    assert matches('field "no_such_field" = field "no_such_field"') is False


def test_neq_is_exactly_not_eq() -> None:
    for left in ('field "power_state"', '"Running"', 'field "missing"'):
        for right in ('"Running"', '"Halted"', 'field "power_state"', 'field "missing"'):
            assert matches(f"{left} <> {right}") is (not matches(f"{left} = {right}"))


def test_evaluate_short_circuits() -> None:
    seen: list[str] = []

    def get(key: str) -> str | None:
        seen.append(key)
        return "1"

    assert evaluate(parse('field "a" = "2" and field "b" = "1"'), get) is False
    assert seen == ["a"]
    seen.clear()
    assert evaluate(parse('field "a" = "1" or field "b" = "1"'), get) is True
    assert seen == ["a"]


def test_field_names() -> None:
    expr = parse('field "name__label" = "x" and (not field "a" = field "b" or "l" <> field "c") or true')
    assert field_names(expr) == {"name_label", "a", "b", "c"}
    assert field_names(parse("true and false")) == set()


def test_quote_round_trips() -> None:
    for value in ["", "plain", 'say "hi"', "back\\slash", "tail\\", '\\"', "it's", "and or not ( ) ="]:
        expr = parse(f'field "x" = {quote(value, escapes=True)}', escapes=True)
        assert expr == eq("x", value)
        if '"' not in value:
            assert parse(f'field "x" = {quote(value)}') == eq("x", value)
    with pytest.raises(ValueError):
        quote('say "hi"')


# ---- rendering --------------------------------------------------------------------------------


class Power(enum.Enum):
    RUNNING = "Running"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (-12, "-12"),
        (2**63 - 1, "9223372036854775807"),
        # xapi writes floats with printf "%0.18g".
        (1.0, "1"),
        (0.1, "0.100000000000000006"),
        (-2.5, "-2.5"),
        (1e100, "1.00000000000000002e+100"),
        (float("inf"), "inf"),
        (float("-inf"), "-inf"),
        (float("nan"), "nan"),
        ("Running", "Running"),
        ("OpaqueRef:NULL", "OpaqueRef:NULL"),
        ("", ""),
        (Power.RUNNING, "Running"),
        (None, ""),
        (datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), "20240102T03:04:05Z"),
        (datetime(2024, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2))), "20240102T03:04:05Z"),
        (datetime(2024, 1, 2, 3, 4, 5), "20240102T03:04:05Z"),
        # Sets: xapi's SExpr, single-quoted strings, list order kept.
        ([], "()"),
        (["a"], "('a')"),
        (["b", "a"], "('b' 'a')"),
        ((1, 2), "('1' '2')"),
        ([True], "('true')"),
        ({"b", "a", "c"}, "('a' 'b' 'c')"),
        (["it's", 'say "x"', "back\\slash"], "('it\\'s' 'say \\\"x\\\"' 'back\\\\slash')"),
        # Maps: pairs sorted by key (xapi's Map.Make(String) order).
        ({}, "()"),
        ({"k": "v"}, "(('k' 'v'))"),
        ({"z": "1", "a": "2", "B": "3"}, "(('B' '3') ('a' '2') ('z' '1'))"),
        ({"n": 5, "f": False}, "(('f' 'false') ('n' '5'))"),
        ({"q": "it's"}, "(('q' 'it\\'s'))"),
    ],
)
def test_render_value(value: Any, expected: str) -> None:
    assert render_value(value) == expected


def test_render_value_rejects_unknown_types() -> None:
    with pytest.raises(TypeError):
        render_value(object())
    with pytest.raises(TypeError):
        render_value(b"bytes")


def test_rendered_sets_and_maps_can_be_matched_by_a_filter() -> None:
    # A client can match a whole set/map by writing xapi's stored form in the literal; single
    # quotes and backslashes are fine in xapi's (escape-less) filter strings.
    record = {"tags": ["it's"], "platform": {"acpi": "1"}}
    get = lambda key: render_value(record[key]) if key in record else None  # noqa: E731
    assert evaluate(parse('field "tags" = "(\'it\\\'s\')"'), get)
    assert evaluate(parse("field \"platform\" = \"(('acpi' '1'))\""), get)
