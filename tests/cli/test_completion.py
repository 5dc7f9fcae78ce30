"""Bash completion, run in a real bash with the completion file sourced, against the daemon."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyxapi.cli
from tests.cli.conftest import Xe

COMPLETION = Path(pyxapi.cli.__file__).parent / "xe-completion.bash"


def complete(xe: Xe, line: str) -> list[str]:
    """What bash offers for TAB at the end of `line`."""
    script = f"""
source {COMPLETION}
COMP_LINE={line!r}
COMP_POINT=${{#COMP_LINE}}
read -ra COMP_WORDS <<< "$COMP_LINE"
[[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
_xe xe
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    env = dict(os.environ, **xe.env, PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin")
    p = subprocess.run(["bash", "--norc", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    return [w for w in p.stdout.splitlines() if w]


def test_command_names(xe: Xe) -> None:
    offered = complete(xe, "xe vm-sta")
    assert offered == ["vm-start"]
    assert {"vm-shutdown", "vm-snapshot", "vm-suspend"} <= set(complete(xe, "xe vm-s"))


def test_parameter_names_include_selectors_and_drop_those_given(xe: Xe) -> None:
    offered = complete(xe, "xe vm-start ")
    assert {"vm=", "force=", "on=", "power-state=", "name-label="} <= set(offered)
    offered = complete(xe, "xe vm-start vm=x po")
    assert "power-state=" in offered and "vm=" not in complete(xe, "xe vm-start vm=x ")


def test_values_from_the_daemon(xe: Xe) -> None:
    vm = xe.one("vm-install", "template=pyxapi test guest", "new-name-label=completable")
    # bash breaks words at "=", so the offers are the values alone
    assert "completable" in complete(xe, "xe vm-start vm=compl")
    assert vm in complete(xe, f"xe vm-param-list uuid={vm[:8]}")
    assert complete(xe, "xe vm-param-get param-name=power-s") == ["power-state"]
    assert complete(xe, "xe vm-list is-a-template=") == [
        "false",
        "true",
    ]
    sr = xe.one("sr-list", "name-label=Local storage", "--minimal")
    assert sr in complete(xe, "xe vdi-create sr-uuid=")
