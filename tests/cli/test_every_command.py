"""Every explicit command of the table, run with its required parameters filled with values that
name nothing: each must parse, reach the API (or refuse on the client side) and end the way xe
ends — exit status 0 or 1 with its message — never with a Python traceback or a hang.
Commands that would take the daemon away (stop, reboot, re-address it) run last."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pyxapi.cli import table
from tests.cli.conftest import Xe

NOBODY = "00000000-0000-0000-0000-000000000000"
LAST = {
    "host-shutdown-agent",
    "host-reboot",
    "host-shutdown",
    "host-management-disable",
    "host-management-reconfigure",
    "host-emergency-management-reconfigure",
    "pool-management-reconfigure",
    "pool-emergency-transition-to-master",
    "pool-emergency-reset-master",
    "pool-eject",
    "pool-join",
}
# What xe prints when a command fails: its own refusal, an API error (known or not), a
# command-line error, a transfer failure, or the per-object failures of --multiple.
FAILURE = re.compile(
    r"^(Error: |Error code: |Required parameter not found|Syntax error|Operation failed\. Error: |"
    r"Unknown command|No VM found|Failed to read|Authentication failed|[A-Z][^\n]*\.\n[\w<>-]+: |"
    r"[A-Z][^\n]*\n)",
)


def explicit() -> list[str]:
    names = [n for n in table.command_names() if (s := table.command(n)) is not None and not s.generated]
    return sorted(names, key=lambda n: (n in LAST, n))


def filled(name: str, tmp: Path) -> list[str]:
    spec = table.command(name)
    assert spec is not None
    words = []
    for key in spec.reqd:
        if "uuid" in key:
            value = NOBODY
        elif "file" in key or key in ("certificate", "private-key"):
            value = str(tmp / "no-such-file")
        elif key in ("class",):
            value = "vm"
        else:
            value = "1"
        words.append(f"{key}={value}")
    if "v" in spec.flags:
        words.append("vm=nobody")
    if "o" in spec.flags:
        words.append("host=nobody")
    if "r" in spec.flags:
        words.append("sr=nobody")
    return words


def test_all_387_are_tried() -> None:
    assert len(explicit()) == 387


@pytest.mark.parametrize("name", explicit())
def test_command_ends_as_xe_ends(name: str, xe: Xe, tmp_path: Path) -> None:
    args = filled(name, tmp_path)
    if name == "event-wait":
        args.append(f"uuid={NOBODY}")  # nothing will match... so wait on something that already does
        args = ["class=vm", "is-control-domain=true"]
    r = xe(name, *args, stdin="no\n")
    assert r.rc in (0, 1, 2, 3), (r.rc, r.out, r.err)
    if r.rc != 0:
        said = r.err or r.out
        assert said, f"{name} failed silently"
        assert FAILURE.match(said) or said.startswith("operation failed on"), said
