"""Async subprocesses for the network drivers, optionally inside a network namespace."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .base import CommandFailed, MissingTool, NotFound

# Which Debian package ships each tool, for MissingTool's message.
PACKAGES = {
    "ip": "iproute2",
    "nft": "nftables",
    "busybox": "busybox-static",
    "ovs-vsctl": "openvswitch-switch",
    "ovs-ofctl": "openvswitch-switch",
    "ovs-appctl": "openvswitch-switch",
    "ovsdb-tool": "openvswitch-switch",
    "ovsdb-server": "openvswitch-switch",
    "ovs-vswitchd": "openvswitch-switch",
    "dnsmasq": "dnsmasq-base",
}


@dataclass(frozen=True, slots=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def require(tool: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        raise MissingTool(tool, PACKAGES.get(tool, tool))
    return path


def netns_exists(netns: str) -> bool:
    return os.path.exists(os.path.join("/run/netns", netns))


def check_netns(netns: str | None) -> None:
    if netns is not None and not netns_exists(netns):
        raise NotFound("netns", netns)


def in_netns(netns: str | None, argv: Sequence[str]) -> list[str]:
    """argv run inside ``netns``. `ip netns exec` also remounts /sys for that namespace."""
    if netns is None:
        return list(argv)
    return [require("ip"), "netns", "exec", netns, *argv]


async def run(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    check: bool = True,
    timeout: float = 30.0,
) -> Result:
    argv = [require(argv[0]), *argv[1:]]
    full = in_netns(netns, argv)
    proc = await asyncio.create_subprocess_exec(
        *full,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env} if env else None,
    )
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), timeout=timeout
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CommandFailed(full, -9, f"timed out after {timeout}s") from None
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()  # the caller gave up: the command must not outlive it
        raise
    res = Result(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))
    if check and res.returncode != 0:
        raise CommandFailed(full, res.returncode, res.stderr or res.stdout)
    return res


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); look at its state so a dead child does not count as alive.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def read_pidfile(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


async def kill_pid(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM, wait, then SIGKILL: only ever for a pid this process started."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while loop.time() < deadline:
            if not pid_alive(pid):
                _reap(pid)
                return
            await asyncio.sleep(0.02)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
