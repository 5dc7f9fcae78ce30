"""The Xen test host for tests and benches: build (cached) and boot it once, drive dom0, stop it.

Boots images/build-xen-host's image under QEMU with pyxapi's XenAPI and dom0's command agent
forwarded to 127.0.0.1 ports picked here. One host serves the whole pytest session: the driver
contract run in dom0 and the end-to-end SDK test share it (``shared_host``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "var" / "cache" / "xen-host"
BUILD_TIMEOUT = 1800.0  # first build: debootstrap downloads ~250 MB of packages
BOOT_TIMEOUT = 900.0  # nested Xen under TCG on two shared cores; ~2 min when idle
READY = "PYXAPI-XEN-HOST READY"
NEEDS = (
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("debootstrap", "debootstrap"),
    ("mkfs.ext4", "e2fsprogs"),
    ("apt-get", "apt"),
    ("dpkg", "dpkg"),
    ("flock", "util-linux"),
)


class XenHostError(Exception):
    pass


@dataclass(frozen=True)
class CommandResult:
    rc: int
    out: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def missing_requirements() -> list[str]:
    missing = [f"{tool} (Debian package {pkg})" for tool, pkg in NEEDS if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (debootstrap and mkfs of the dom0 image)")
    return missing


def build(out: Path = CACHE) -> None:
    res = subprocess.run(
        [str(REPO / "images" / "build-xen-host"), str(out)], capture_output=True, text=True, timeout=BUILD_TIMEOUT
    )
    if res.returncode != 0:
        raise XenHostError(
            f"images/build-xen-host failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        )


class XenHost:
    def __init__(self, out: Path = CACHE) -> None:
        self.out = out
        self.api_port = _free_port()
        self.agent_port = _free_port()
        self.password = secrets.token_urlsafe(12)
        self.token = secrets.token_urlsafe(16)
        self.workdir = Path(tempfile.mkdtemp(prefix="pyxapi-xenhost-"))
        self.console_log = self.workdir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.boot_seconds = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/"

    def start(self) -> None:
        env = dict(
            os.environ,
            XEN_HOST_API_PORT=str(self.api_port),
            XEN_HOST_AGENT_PORT=str(self.agent_port),
            XEN_HOST_TOKEN=self.token,
            XEN_HOST_PASSWORD=self.password,
        )
        t0 = time.monotonic()
        with open(self.console_log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(REPO / "images" / "xen-host" / "boot"), str(self.out)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = t0 + BOOT_TIMEOUT
        while True:
            text = self.console()
            if READY in text:
                break
            if "PYXAPI-XEN-HOST FAILED" in text or self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise XenHostError(
                    f"the Xen test host did not come up (QEMU status {self.proc.returncode}); console:\n{text[-6000:]}"
                )
            time.sleep(2)
        self.boot_seconds = time.monotonic() - t0

    def console(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except OSError:
            return ""

    def run(self, cmd: str, timeout: float = 600.0) -> CommandResult:
        """Run a shell command in dom0 (as root) through the agent."""
        body = json.dumps({"cmd": cmd, "timeout": timeout}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.agent_port}/run",
            data=body,
            headers={"X-Token": self.token, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout + 30) as resp:
            data = json.load(resp)
        return CommandResult(int(data["rc"]), str(data["out"]))

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(Exception):
                self.run("sync; echo o > /proc/sysrq-trigger", timeout=10)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)  # our own QEMU (the boot script execs it)
                proc.wait(timeout=30)
        self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)


class _Shared:
    """One host per test session, however many modules ask for it."""

    host: XenHost | None = None
    users = 0


def acquire() -> XenHost:
    if _Shared.host is None:
        missing = missing_requirements()
        if missing:
            raise XenHostError(f"the Xen test host needs: {', '.join(missing)} (scripts/install-debian-deps.sh)")
        build()
        host = XenHost()
        host.start()
        _Shared.host = host
    _Shared.users += 1
    return _Shared.host


def release() -> None:
    _Shared.users -= 1
    if _Shared.users <= 0 and _Shared.host is not None:
        _Shared.host.stop()
        _Shared.host = None
