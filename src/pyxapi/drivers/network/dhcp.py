"""A small DHCP service for a host-internal network: busybox udhcpd bound to one bridge.

The bridge must already carry the server's IPv4 address (set_ipv4_address): udhcpd takes
its server identity from the interface. The server runs inside the driver's namespace
(`ip netns exec`), is our direct child, and stop() ends exactly that pid.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import socket
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .base import InvalidArgument, NetworkError, check_ifname
from .proc import check_netns, in_netns, kill_pid, require

# busybox 1.35 dhcpd.h: struct dyn_lease { u32 expires; u32 nip; u8 mac[6]; char hostname[20]; u8 pad[2]; }
_LEASE = struct.Struct("!I4s6s20s2x")
_HEADER = struct.Struct("!q")  # when the file was written


@dataclass(frozen=True, slots=True)
class DhcpConfig:
    interface: str  # the bridge
    range_start: str
    range_end: str
    netmask: str = "255.255.255.0"
    router: str | None = None
    dns: tuple[str, ...] = ()
    lease_seconds: int = 3600


@dataclass(frozen=True, slots=True)
class Lease:
    mac: str
    ip: str
    hostname: str
    expires_in: int  # seconds left when udhcpd wrote the file


def parse_leases(data: bytes) -> list[Lease]:
    out = []
    for off in range(_HEADER.size, len(data) - _LEASE.size + 1, _LEASE.size):
        expires, nip, mac, host = _LEASE.unpack_from(data, off)
        out.append(
            Lease(
                mac=":".join(f"{b:02x}" for b in mac),
                ip=socket.inet_ntoa(nip),
                hostname=host.split(b"\0", 1)[0].decode(errors="replace"),
                expires_in=expires,
            )
        )
    return out


class DhcpService:
    def __init__(self, config: DhcpConfig, run_dir: str | Path, netns: str | None = None) -> None:
        self.config = config
        self.netns = netns
        self.run_dir = Path(run_dir)
        base = f"udhcpd-{config.interface}"
        self.conf_file = self.run_dir / f"{base}.conf"
        self.lease_file = self.run_dir / f"{base}.leases"
        self.log_file = self.run_dir / f"{base}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def _conf(self) -> str:
        c = self.config
        check_ifname(c.interface)
        try:
            lo, hi = ipaddress.IPv4Address(c.range_start), ipaddress.IPv4Address(c.range_end)
            for addr in (c.netmask, c.router, *c.dns):
                if addr is not None:
                    ipaddress.IPv4Address(addr)
        except ValueError as e:
            raise InvalidArgument(str(e)) from e
        if lo > hi:
            raise InvalidArgument(f"DHCP range {lo}..{hi} is empty")
        lines = [
            f"interface {c.interface}",
            f"start {c.range_start}",
            f"end {c.range_end}",
            f"max_leases {int(hi) - int(lo) + 1}",
            f"lease_file {self.lease_file}",
            f"pidfile {self.run_dir / (self.conf_file.stem + '.pid')}",
            # Leases written only on demand (SIGUSR1, see leases()) or at exit.
            "auto_time 0",
            f"option subnet {c.netmask}",
            f"option lease {c.lease_seconds}",
        ]
        if c.router:
            lines.append(f"option router {c.router}")
        if c.dns:
            lines.append(f"option dns {' '.join(c.dns)}")
        return "\n".join(lines) + "\n"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    async def start(self) -> None:
        if self.pid is not None:
            return
        check_netns(self.netns)
        busybox = require("busybox")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.conf_file.write_text(self._conf())
        self.lease_file.touch()
        # -a 100: probe a candidate address with ARP for 0.1 s, not 2 s, before offering it.
        argv = in_netns(self.netns, [busybox, "udhcpd", "-f", "-a", "100", str(self.conf_file)])
        with open(self.log_file, "ab") as log:
            # `ip netns exec` execs udhcpd in place, so this pid is udhcpd's own.
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        await asyncio.sleep(0.1)
        if self._proc.poll() is not None:
            tail = self.log_file.read_text(errors="replace")[-500:]
            self._proc = None
            raise NetworkError(f"udhcpd on {self.config.interface} exited at once: {tail.strip()}")

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            await kill_pid(proc.pid)
        await asyncio.to_thread(proc.wait)

    async def leases(self) -> list[Lease]:
        """Current leases: ask udhcpd to write its lease file (SIGUSR1), then read it."""
        pid = self.pid
        if pid is not None:
            before = self.lease_file.stat().st_mtime_ns if self.lease_file.exists() else 0
            os.kill(pid, signal.SIGUSR1)
            for _ in range(50):
                await asyncio.sleep(0.02)
                if self.lease_file.exists() and self.lease_file.stat().st_mtime_ns != before:
                    break
        data = self.lease_file.read_bytes() if self.lease_file.exists() else b""
        return parse_leases(data)
