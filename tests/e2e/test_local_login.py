"""session.slave_local_login_with_password against a real daemon: on the local Unix socket root (by
the kernel's SO_PEERCRED, not by the password) gets a local-superuser session; over TCP, and from
another user on that socket, the password is checked as xapi checks it; xe's local-session commands
use it."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import tempfile
import time
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import Xe
from tests.server_harness import READER, ROOT_PASSWORD, Daemon, new_daemon

NOBODY = 65534


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    # A directory others may traverse: one test connects to the socket as another user.
    root = Path(tempfile.mkdtemp(prefix="pyxl-", dir="/tmp"))
    root.chmod(0o755)
    d = new_daemon(root)
    try:
        d.start()
        deadline = time.monotonic() + 60  # the Unix socket opens a moment after the TCP port
        while not (d.data_dir / "xapi.sock").exists():
            assert time.monotonic() < deadline, "the daemon's Unix socket never appeared"
            time.sleep(0.05)
        yield d
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, euid: int | None = None) -> None:
        super().__init__("localhost", timeout=30)
        self.path, self.euid = path, euid

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.euid is None:
            self.sock.connect(str(self.path))
            return
        # The kernel records the effective uid at connect(): become that user for the call only.
        os.seteuid(self.euid)
        try:
            self.sock.connect(str(self.path))
        finally:
            os.seteuid(0)


def unix_call(daemon: Daemon, method: str, *params: Any, euid: int | None = None) -> dict[str, Any]:
    conn = UnixConnection(daemon.data_dir / "xapi.sock", euid)
    try:
        conn.request("POST", "/", xmlrpc.client.dumps(params, method).encode(), {"Content-Type": "text/xml"})
        reply: dict[str, Any] = xmlrpc.client.loads(conn.getresponse().read())[0][0]
        return reply
    finally:
        conn.close()


def tcp_call(daemon: Daemon, method: str, *params: Any) -> dict[str, Any]:
    reply: dict[str, Any] = getattr(xmlrpc.client.ServerProxy(daemon.url), method)(*params)
    return reply


def test_root_on_the_unix_socket_needs_no_password(daemon: Daemon) -> None:
    for uname, pwd in (("root", "wrong"), ("root", ""), (READER[0], "wrong"), ("no-such-user", "x")):
        login = unix_call(daemon, "session.slave_local_login_with_password", uname, pwd)
        assert login["Status"] == "Success", (uname, login)
        session = login["Value"]
        rec = unix_call(daemon, "session.get_record", session, session)["Value"]
        assert rec["is_local_superuser"] is True and rec["auth_user_name"] == "root"
        assert unix_call(daemon, "pool.get_all", session)["Status"] == "Success"
        assert unix_call(daemon, "session.local_logout", session)["Status"] == "Success"
        assert unix_call(daemon, "pool.get_all", session)["ErrorDescription"][0] == "SESSION_INVALID"


def test_over_tcp_the_password_is_checked(daemon: Daemon) -> None:
    for uname, pwd in (("root", "wrong"), ("root", ""), (READER[0], "wrong"), ("no-such-user", "x")):
        refused = tcp_call(daemon, "session.slave_local_login_with_password", uname, pwd)
        assert refused == {"Status": "Failure", "ErrorDescription": ["SESSION_AUTHENTICATION_FAILED"]}
    login = tcp_call(daemon, "session.slave_local_login_with_password", "root", ROOT_PASSWORD)
    assert login["Status"] == "Success"
    rec = tcp_call(daemon, "session.get_record", login["Value"], login["Value"])["Value"]
    assert rec["is_local_superuser"] is True
    reader = tcp_call(daemon, "session.slave_local_login_with_password", *READER)
    rec = tcp_call(daemon, "session.get_record", reader["Value"], reader["Value"])["Value"]
    assert rec["is_local_superuser"] is False and rec["auth_user_name"] == READER[0]


def test_another_user_on_the_unix_socket_is_not_trusted(daemon: Daemon) -> None:
    """The socket is the daemon's (0600); opened up here, the peer's uid still decides."""
    sock = daemon.data_dir / "xapi.sock"
    sock.chmod(0o666)
    try:
        refused = unix_call(daemon, "session.slave_local_login_with_password", "root", "wrong", euid=NOBODY)
        assert refused["ErrorDescription"] == ["SESSION_AUTHENTICATION_FAILED"]
        refused = unix_call(daemon, "session.login_with_password", "root", "", euid=NOBODY)
        assert refused["ErrorDescription"] == ["SESSION_AUTHENTICATION_FAILED"]
        # the password still opens a session for them, as over TCP
        login = unix_call(daemon, "session.slave_local_login_with_password", "root", ROOT_PASSWORD, euid=NOBODY)
        assert login["Status"] == "Success"
    finally:
        sock.chmod(0o600)


def test_xe_local_session_commands(daemon: Daemon, tmp_path: Path) -> None:
    """host-is-in-emergency-mode takes a host-local session: its answer shows the login went
    through and the call reached the API."""
    xe = Xe(daemon, tmp_path)
    # On the socket, a wrong password for any user: the daemon vouches for root (xe's old fallback
    # to login_with_password refused this one).
    r = xe("host-is-in-emergency-mode", "-u", READER[0], "-pw", "wrong")
    assert (r.rc, r.out, r.err) == (0, "false\n", ""), r
    # Over the network the password counts.
    tcp = {"PYXAPI_SOCKET": "/nonexistent/xapi.sock"}
    args = ("-s", "127.0.0.1", "-p", str(daemon.port))
    r = xe("host-is-in-emergency-mode", *args, "-u", "root", "-pw", "wrong", env=tcp)
    assert (r.rc, r.err) == (1, "Authentication failed\nFor usage run: 'xe help'\n"), r
    r = xe("host-is-in-emergency-mode", *args, "-u", "root", "-pw", ROOT_PASSWORD, env=tcp)
    assert (r.rc, r.out, r.err) == (0, "false\n", ""), r
