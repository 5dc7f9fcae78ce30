"""How xe reaches the daemon (local socket, -s/-p over HTTP and HTTPS, ~/.xe, XE_EXTRA_ARGS,
-pwf) and how it fails: messages and exit codes, through the installed console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.cli.conftest import Xe, records
from tests.server_harness import READER, ROOT_PASSWORD, free_port


def test_console_script_and_module_over_the_local_socket(xe: Xe) -> None:
    r = xe.proc("vm-list", "is-control-domain=true")
    assert r.rc == 0 and r.err == ""
    [dom0] = records(r.out)
    assert dom0["power-state"] == "running"
    p = subprocess.run(
        [sys.executable, "-m", "pyxapi.cli", "host-list", "--minimal"],
        capture_output=True,
        text=True,
        env={**xe.env, "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert p.returncode == 0 and p.stdout.strip() == xe.one("host-list", "--minimal")


def test_server_port_user_password_over_http_and_https(xe: Xe) -> None:
    d = xe.daemon
    env = {"PYXAPI_SOCKET": "/nonexistent/xapi.sock"}  # no local socket: the network only
    auth = ["-u", "root", "-pw", ROOT_PASSWORD]
    r = xe.proc("-s", "localhost", "-p", str(d.port), "--nossl", *auth, "pool-list", "--minimal", env=env)
    assert (r.rc, r.err) == (0, "") and r.out.strip() == xe.one("pool-list", "--minimal")
    r = xe.proc("-s", "localhost", "-p", str(d.tls_port), *auth, "pool-list", "--minimal", env=env)
    assert (r.rc, r.err) == (0, "") and r.out.strip() == xe.one("pool-list", "--minimal")
    r = xe.proc(
        "pool-list",
        "server=localhost",
        f"port={d.port}",
        "nossl=true",
        "username=root",
        f"password={ROOT_PASSWORD}",
        env=env,
    )
    assert r.rc == 0
    r = xe.proc("-s", "localhost", "-p", str(d.port), "--nossl", "-u", "root", "-pw", "wrong", "vm-list", env=env)
    assert (r.rc, r.out, r.err) == (1, "", "Authentication failed\nFor usage run: 'xe help'\n")


def test_rc_file_extra_args_and_password_file(xe: Xe, tmp_path: Path) -> None:
    d = xe.daemon
    home = tmp_path / "home"
    home.mkdir()
    (home / ".xe").write_text(f"server=localhost\nport={d.port}\nnossl=true\nusername=root\npassword={ROOT_PASSWORD}\n")
    env = {"HOME": str(home), "PYXAPI_SOCKET": "/nonexistent/xapi.sock"}
    r = xe.proc("host-list", "--minimal", env=env)
    assert (r.rc, r.out.strip()) == (0, xe.one("host-list", "--minimal"))
    r = xe.proc("host-list", "--minimal", env={**env, "XE_EXTRA_ARGS": "password=wrong"})
    assert r.rc == 1 and r.err.startswith("Authentication failed")
    r = xe.proc("host-list", "--minimal", "-pw", ROOT_PASSWORD, env={**env, "XE_EXTRA_ARGS": "password=wrong"})
    assert r.rc == 0  # the command line wins
    pwf = tmp_path / "pwfile"
    pwf.write_text(f"{READER[0]}\n{READER[1]}\n")
    r = xe.proc("-s", "localhost", "-p", str(d.port), "--nossl", "-pwf", str(pwf), "vm-list", "--minimal")
    assert r.rc == 0  # a read-only user may list


def test_rbac_refusal_prints_the_error(xe: Xe) -> None:
    d = xe.daemon
    auth = ["-s", "localhost", "-p", str(d.port), "--nossl", "-u", READER[0], "-pw", READER[1]]
    r = xe.proc(
        *auth,
        "vm-param-set",
        f"uuid={xe.one('vm-list', '--minimal')}",
        "name-description=x",
        env={"PYXAPI_SOCKET": "/nonexistent"},
    )
    assert r.rc == 1
    assert r.err.splitlines()[0] == "Your role does not allow this operation."


def test_no_server_to_talk_to(xe: Xe) -> None:
    r = xe.proc("vm-list", "-p", str(free_port()), env={"PYXAPI_SOCKET": "/nonexistent/xapi.sock"})
    assert (r.rc, r.err) == (1, "Unable to contact server. Please check server and port settings.\n")
    r = xe.proc("vm-list", "-s", "no-such-host.invalid", "--nossl", env={"PYXAPI_SOCKET": "/nonexistent"})
    assert (r.rc, r.err) == (1, "Host 'no-such-host.invalid' not found.\n")


def test_usage_help_unknown_command_and_missing_parameter(xe: Xe) -> None:
    r = xe.proc()
    assert r.rc == 0 and r.err.startswith("Usage: xe <cmd> [-s server]")
    r = xe.proc("--help")
    assert r.rc == 0 and r.err.startswith("Usage: xe <cmd>")
    r = xe.proc("vm-start", "--help")
    assert r.rc == 0 and r.out.startswith("command name            : vm-start\n")
    r = xe.proc("vm-frobnicate")
    assert (r.rc, r.out, r.err) == (1, "", "Unknown command: vm-frobnicate\nFor usage run: 'xe help'\n")
    r = xe.proc("vdi-create", "name-label=x")
    assert (r.rc, r.err) == (1, "Required parameter not found: sr-uuid\nFor usage run: 'xe help'\n")
    r = xe.proc("vm-list", "-q", "x")
    assert (r.rc, r.err) == (1, "Syntax error: Unknown switch: -q\nFor usage run: 'xe help'\n")
    r = xe.proc("help", "--minimal")
    assert r.rc == 0 and "vm-start" in r.out.strip().split(",")


def test_unknown_error_codes_print_code_and_parameters(xe: Xe) -> None:
    # An error the CLI has no words for keeps xe's generic layout.
    r = xe("vm-param-get", f"uuid={xe.one('vm-list', '--minimal')}", "param-name=nope")
    assert (r.rc, r.err) == (1, "Error code: Missing parameter\nError parameters: nope\n")
