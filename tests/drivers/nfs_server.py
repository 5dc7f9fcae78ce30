"""A real NFS server for tests: nfs-ganesha (+ rpcbind) inside a network namespace the test creates.

The namespace gets a veth pair to the root namespace with a /30 of link-local addresses, so the server
is reached from the root namespace by the storage driver (libnfs, qemu-img, in the test process or the
daemon) and by the QEMU guests the daemon starts there. (A daemon given this namespace with --netns
would adopt the veth as a PIF and bridge it, taking the address away: keep guests out of it.) rpcbind
and ganesha run under `ip netns exec`, whose private mount namespace gets its own
tmpfs on /run: their rpcbind socket and lock files never meet another engineer's. Everything is
stopped by pid and the namespace (with its veth) deleted at the end.

Missing packages are a test failure, never a skip (scripts/install-debian-deps.sh installs them).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

START_TIMEOUT = 60.0  # generous: 2 shared CPUs


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: run scripts/install-debian-deps.sh (as root)")


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def _taken_prefixes() -> set[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    return {word.rsplit(".", 1)[0] for word in out.split() if word.startswith("169.254.")}


@dataclass
class TestNetns:
    """A network namespace with a veth to the root namespace: host_addr here, ns_addr inside."""

    __test__ = False  # a helper, not a test class
    name: str
    host_if: str
    host_addr: str
    ns_addr: str

    @classmethod
    def create(cls, prefix: str = "pyxs") -> TestNetns:
        need("ip")
        tag = uuid.uuid4().hex[:6]
        name = f"{prefix}-{tag}-{os.getpid()}"
        host_if, ns_if = f"vs{tag}h", f"vs{tag}n"
        taken = _taken_prefixes()
        rng = random.Random()
        for _ in range(100):
            third, fourth = rng.randrange(1, 255), rng.randrange(0, 64) * 4
            if f"169.254.{third}" not in taken:
                break
        host_addr, ns_addr = f"169.254.{third}.{fourth + 1}", f"169.254.{third}.{fourth + 2}"
        sh("ip", "netns", "add", name)
        net = cls(name, host_if, host_addr, ns_addr)
        try:
            sh("ip", "-n", name, "link", "set", "lo", "up")
            sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", name)
            sh("ip", "addr", "add", f"{host_addr}/30", "dev", host_if)
            sh("ip", "link", "set", host_if, "up")
            sh("ip", "-n", name, "addr", "add", f"{ns_addr}/30", "dev", ns_if)
            sh("ip", "-n", name, "link", "set", ns_if, "up")
        except BaseException:
            net.delete()
            raise
        return net

    def exec(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def delete(self) -> None:
        # Deleting the namespace destroys its veth end, and with it the pair.
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)


def wait_port(host: str, port: int, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {host}:{port} after {timeout}s")


@dataclass
class Daemons:
    """Processes started by one `ip netns exec sh` runner; their pids come from files it writes."""

    runner: subprocess.Popen[bytes]
    pid_files: list[Path] = field(default_factory=list)

    def stop(self) -> None:
        pids = []
        for f in self.pid_files:
            with contextlib.suppress(OSError, ValueError):
                pids.append(int(f.read_text().split()[0]))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        for pid in pids:  # tgtd ignores SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            self.runner.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.runner.kill()
            self.runner.wait()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


GANESHA_CONF = """\
NFS_CORE_PARAM {{ Protocols = 3, 4; Bind_addr = {addr}; Enable_RQUOTA = false; }}
NFSV4 {{ Graceless = true; RecoveryRoot = {recovery}; }}
EXPORT {{
  Export_Id = 1; Path = {export}; Pseudo = {export}; Access_Type = RW; Squash = No_Root_Squash;
  Protocols = 3, 4; Transports = TCP; SecType = sys; FSAL {{ Name = VFS; }}
}}
LOG {{ Default_Log_Level = EVENT; }}
"""

RUNNER = """\
set -e
mount -t tmpfs -o mode=0755 pyxapi-test-run /run
mkdir -p /run/rpcbind
rpcbind -f -w & echo $! > {dir}/rpcbind.pid
sleep 0.2
ganesha.nfsd -F -f {dir}/ganesha.conf -L {dir}/ganesha.log -p {dir}/ganesha.pidfile & echo $! > {dir}/ganesha.pid
wait
"""


@dataclass
class NfsServer:
    """nfs-ganesha exporting `export` (RW, no root squash) at netns.ns_addr."""

    netns: TestNetns
    workdir: Path
    daemons: Daemons | None = None

    @property
    def server(self) -> str:
        return self.netns.ns_addr

    @property
    def export(self) -> Path:
        return self.workdir / "export"

    def start(self) -> NfsServer:
        need("ganesha.nfsd", "rpcbind")
        if not Path("/usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so").exists():
            need("libfsalvfs.so (package nfs-ganesha-vfs)")
        self.export.mkdir(parents=True, exist_ok=True)
        (self.workdir / "recovery").mkdir(exist_ok=True)
        conf = GANESHA_CONF.format(addr=self.server, export=self.export, recovery=self.workdir / "recovery")
        (self.workdir / "ganesha.conf").write_text(conf)
        script = self.workdir / "run.sh"
        script.write_text(RUNNER.format(dir=self.workdir))
        log = open(self.workdir / "runner.log", "wb")  # noqa: SIM115 - kept by the child
        runner = subprocess.Popen(self.netns.exec("sh", str(script)), stdout=log, stderr=log, start_new_session=True)
        log.close()
        self.daemons = Daemons(runner, [self.workdir / "ganesha.pid", self.workdir / "rpcbind.pid"])
        try:
            wait_port(self.server, 2049)
            wait_port(self.server, 111)
            self._wait_mountd()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_mountd(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            out = subprocess.run(["showmount", "-e", "--no-headers", self.server], capture_output=True, text=True)
            if str(self.export) in out.stdout:
                return
            time.sleep(0.2)
        log = (self.workdir / "ganesha.log").read_text(errors="replace")[-2000:]
        raise AssertionError(f"ganesha never exported {self.export}:\n{log}")

    def stop(self) -> None:
        if self.daemons is not None:
            self.daemons.stop()
            self.daemons = None

    def device_config(self, serverpath: Path | None = None) -> dict[str, str]:
        return {"server": self.server, "serverpath": str(serverpath or self.export)}
