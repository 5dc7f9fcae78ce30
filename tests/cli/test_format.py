"""xe's layouts and command-line reading, without a daemon."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from pyxapi.cli import fastjson, help, table
from pyxapi.cli.argv import Params, Usage, parse_client, parse_command, split_extra_args
from pyxapi.cli.errors import ParamError, XeExit
from pyxapi.cli.printer import Printer, format_record
from pyxapi.cli.records import scalar

GOLDEN = Path(__file__).parent / "golden"


def test_record_block_aligns_colons_first_key_left_others_right() -> None:
    text = format_record([("uuid ( RO)", "u1"), ("name-label ( RW)", "web"), ("power-state ( RO)", "halted")])
    assert text == ("uuid ( RO)           : u1\n     name-label ( RW): web\n    power-state ( RO): halted\n")


def test_table_prints_a_blank_line_after_each_record() -> None:
    out = io.StringIO()
    p = Printer(out=out)
    p.table([[("uuid ( RO)", "a")], [("uuid ( RO)", "b")]])
    p.flush()
    assert out.getvalue() == "uuid ( RO)    : a\n\nuuid ( RO)    : b\n\n"


def test_minimal_prints_first_fields_comma_separated_escaping_commas() -> None:
    out = io.StringIO()
    p = Printer(minimal=True, out=out)
    p.table([[("name-label ( RW)", "a,b"), ("uuid ( RO)", "x")], [("name-label ( RW)", "c\\d")]])
    p.msg("not shown in minimal mode")
    p.flush()
    assert out.getvalue() == "a\\,b,c\\\\d\n"


def test_minimal_with_nothing_prints_an_empty_line() -> None:
    out = io.StringIO()
    p = Printer(minimal=True, out=out)
    p.table([])
    p.flush()
    assert out.getvalue() == "\n"


def test_values_print_as_xapi_prints_them() -> None:
    assert scalar(True, "bool") == "true"
    assert scalar(0.5, "float") == "0.500"
    assert scalar(1 << 40, "int") == "1099511627776"
    assert scalar("Running", "enum vm_power_state", "lower") == "running"
    assert scalar("vt100", "enum console_protocol", "upper") == "VT100"


def test_command_words_switches_and_flags() -> None:
    name, params = parse_command(["vm-start", "vm=web 1", "--force", "-u", "bob", "other-config:a=b=c", "bare"])
    assert name == "vm-start"
    assert params.pairs == [
        ("vm", "web 1"),
        ("force", "true"),
        ("username", "bob"),
        ("other-config:a", "b=c"),
        ("bare", ""),
    ]
    with pytest.raises(ParamError) as e:
        parse_command(["vm-list", "-zz", "x"])
    assert e.value.lines() == ["Syntax error: Unknown switch: -zz", "For usage run: 'xe help'"]
    with pytest.raises(ParamError):
        parse_command(["name=value"])
    with pytest.raises(Usage):
        parse_command([])


def test_first_occurrence_of_a_parameter_wins() -> None:
    p = Params([("vm", "a"), ("vm", "b")])
    assert p["vm"] == "a" and p.all("vm") == ["a", "b"] and list(p) == ["vm", "vm"]


def test_client_options_command_line_over_extra_args_over_rc_file(tmp_path: Path) -> None:
    (tmp_path / ".xe").write_text("server=rc-host\nport=1111\nusername=rcuser\nminimal=true\n")
    env = {"HOME": str(tmp_path), "XE_EXTRA_ARGS": "server=env-host,password=env\\,pw"}
    opts, words, wants_help = parse_client(["vm-list", "-p", "2222", "--nossl"], env)
    assert (opts.server, opts.port, opts.username, opts.password) == ("env-host", 2222, "rcuser", "env,pw")
    assert opts.nossl and not wants_help
    assert words == ["vm-list", "minimal=true"]


def test_malformed_rc_file_loads_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / ".xe").write_text("server=rc-host\nnonsense\n")
    opts, _, _ = parse_client(["vm-list"], {"HOME": str(tmp_path)})
    assert opts.server == "127.0.0.1"
    assert "Error parsing rc file. No defaults loaded" in capsys.readouterr().err


def test_password_file(tmp_path: Path) -> None:
    pwf = tmp_path / "pw"
    pwf.write_text("alice\nsecret\n")
    opts, _, _ = parse_client(["vm-list", "-pwf", str(pwf)], {"HOME": str(tmp_path)})
    assert (opts.username, opts.password) == ("alice", "secret")
    with pytest.raises(XeExit):
        parse_client(["vm-list", "-pwf", str(tmp_path / "missing")], {"HOME": str(tmp_path)})


def test_extra_args_split_on_unescaped_commas() -> None:
    assert split_extra_args("a=1,b=2\\,3,,c") == ["a=1", "b=2,3", "c"]


def test_every_command_of_the_reference_is_in_the_table() -> None:
    counts = table.counts()
    names = table.command_names()
    generated = [n for n in names if (spec := table.command(n)) is not None and spec.generated]
    assert len(names) == counts["explicit"] + counts["generated"] == 678
    assert len(generated) == counts["generated"] == 291
    assert len(table.class_names()) == 56


def test_fast_json_round_trips_what_the_api_sends() -> None:
    value = {"a": [1, -2, 2.5, True, False, None, 'é"\n'], "b": {"c": {}}, "big": 1 << 62}
    text = fastjson.dumps(value)
    assert json.loads(text) == value and fastjson.loads(text) == value
    assert fastjson.loads(b'  {"x": NaN} \n')["x"] != fastjson.loads(b'{"x": NaN}')["x"]  # NaN is NaN
    with pytest.raises(ValueError):
        fastjson.loads("[1] [2]")
    with pytest.raises(ValueError):
        fastjson.loads("")


def _help_text(*words: str) -> str:
    out = io.StringIO()
    p = Printer(out=out)
    _, params = parse_command(["help", *words])
    help.run(p, params)
    p.flush()
    return out.getvalue()


@pytest.mark.parametrize("name", ["help", "help-vm-start", "help-vm-list"])
def test_help_matches_golden(name: str) -> None:
    words = [] if name == "help" else [name[len("help-") :]]
    assert _help_text(*words) == (GOLDEN / f"{name}.txt").read_text()


def test_help_for_an_unknown_command() -> None:
    assert _help_text("vm-frobnicate") == "Unknown command 'vm-frobnicate'\n"
