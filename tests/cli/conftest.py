"""A real daemon (simulated hypervisor) per test module, and `xe` run against it: in-process
for speed (`xe(...)`), or as the installed console script (`xe_proc(...)`)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
import XenAPI

from pyxapi.cli.xe import main
from tests.server_harness import ROOT_PASSWORD, Daemon, new_daemon

XE_SCRIPT = Path(sys.executable).parent / "xe"


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


class Xe:
    """Runs xe commands against one daemon, through its local socket (as root on the host)."""

    def __init__(self, daemon: Daemon, home: Path) -> None:
        self.daemon = daemon
        self.home = home
        sock = daemon.data_dir / "xapi.sock"
        self.env = {"PYXAPI_SOCKET": str(sock), "HOME": str(home)}
        # The daemon opens its TCP port a moment before its Unix socket.
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert time.monotonic() < deadline, f"{sock} never appeared"
            time.sleep(0.05)

    def __call__(self, *args: str, stdin: str = "", env: dict[str, str] | None = None) -> Result:
        raw = io.BytesIO()  # a byte buffer underneath, as a terminal's stdout has (file downloads use it)
        out, err = io.TextIOWrapper(raw, encoding="utf-8", newline=""), io.StringIO()
        saved = {k: os.environ.get(k) for k in (*self.env, *(env or {}), "XE_EXTRA_ARGS")}
        os.environ.update(self.env)
        os.environ.pop("XE_EXTRA_ARGS", None)
        os.environ.update(env or {})
        old_stdin = sys.stdin
        sys.stdin = io.StringIO(stdin)
        try:
            with redirect_stdout(out), redirect_stderr(err):
                rc = main(list(args))
        finally:
            sys.stdin = old_stdin
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        out.flush()
        return Result(rc, raw.getvalue().decode("utf-8", "replace"), err.getvalue())

    def ok(self, *args: str, stdin: str = "") -> str:
        r = self(*args, stdin=stdin)
        assert r.rc == 0, f"xe {' '.join(args)} -> {r.rc}\n{r.out}\n{r.err}"
        assert r.err == "", r.err
        return r.out

    def one(self, *args: str) -> str:
        """A command printing one value (a uuid): that value."""
        return self.ok(*args).strip()

    def proc(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
        """The installed `xe` console script, as a user runs it."""
        full_env = dict(os.environ)
        full_env.pop("XE_EXTRA_ARGS", None)
        full_env.update(self.env)
        full_env.update(env or {})
        p = subprocess.run([str(XE_SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=timeout)
        return Result(p.returncode, p.stdout, p.stderr)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = new_daemon(tmp_path_factory.mktemp("pyxapi-cli"))
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def xe(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Xe:
    return Xe(daemon, tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def api(daemon: Daemon) -> Iterator[XenAPI.Session]:
    s = XenAPI.Session(daemon.url)
    s.xenapi.login_with_password("root", ROOT_PASSWORD, "2.23", "pyxapi-cli-tests")
    yield s
    s.xenapi.session.logout()


def records(text: str) -> list[dict[str, str]]:
    """xe's record blocks back into {name: value} (markers dropped)."""
    out: list[dict[str, str]] = []
    for block in text.strip("\n").split("\n\n"):
        if not block.strip():
            continue
        rec = {}
        for line in block.splitlines():
            label, _, value = line.partition(": ")
            rec[label.strip().rsplit(" (", 1)[0]] = value
        out.append(rec)
    return out
