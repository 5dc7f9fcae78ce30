"""Worlds for the network driver contract suite.

A World is one driver under test plus the means to give it host NICs and guests, and to
ask whether two guests can talk. For the real drivers everything lives in network
namespaces created here (``pyx-<hex>``) and removed afterwards: a guest is a namespace
whose eth0 is one end of a veth pair, the other end being plugged like a tap. For the
simulator the same calls go to its test hooks.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pyxapi.drivers.network import netlink as nl
from pyxapi.drivers.network.base import NetworkDriver
from pyxapi.drivers.network.bridge import LinuxBridgeDriver
from pyxapi.drivers.network.ovs import OvsNetworkDriver
from pyxapi.drivers.network.sim import SimNetworkDriver

DRIVERS = ["sim", "bridge", "ovs"]
REAL_DRIVERS = ["bridge", "ovs"]

NEEDS = {
    "sim": [],
    "bridge": [("ip", "iproute2"), ("nft", "nftables"), ("busybox", "busybox-static")],
    "ovs": [
        ("ip", "iproute2"),
        ("busybox", "busybox-static"),
        ("ovs-vsctl", "openvswitch-switch"),
        ("ovs-ofctl", "openvswitch-switch"),
        ("ovsdb-server", "openvswitch-switch"),
        ("ovs-vswitchd", "openvswitch-switch"),
        ("ovsdb-tool", "openvswitch-switch"),
    ],
}


def require_tools(kind: str) -> None:
    """Fail (never skip) when a host tool is missing: the suite must run everywhere it is claimed to."""
    if os.geteuid() != 0:
        pytest.fail(f"the {kind} network driver tests need root (network namespaces)")
    missing = [f"{tool} (Debian package {pkg})" for tool, pkg in NEEDS[kind] if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{kind} network driver tests need: {', '.join(missing)}; see scripts/install-debian-deps.sh")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


async def ash(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(sh, *argv, check=check)


def new_netns() -> str:
    name = f"pyx-{secrets.token_hex(4)}"
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")
    return name


def mac_for(n: int) -> str:
    return f"52:54:00:7e:{(n >> 8) & 0xFF:02x}:{n & 0xFF:02x}"


@dataclass
class Guest:
    device: str  # host-side device, plugged into the bridge
    mac: str
    ip: str  # without prefix
    netns: str | None = None  # None for the simulator


@dataclass
class World:
    kind: str
    driver: NetworkDriver
    netns: str | None
    tmp: Path
    namespaces: list[str] = field(default_factory=list)
    _n: int = 0

    @property
    def real(self) -> bool:
        return self.kind != "sim"

    @property
    def sim(self) -> SimNetworkDriver:
        assert isinstance(self.driver, SimNetworkDriver)
        return self.driver

    def _ns(self) -> str:
        ns = new_netns()
        self.namespaces.append(ns)
        return ns

    async def add_nic(self, name: str, mac: str, mtu: int = 1500) -> None:
        """A stand-in physical NIC: a veth whose peer sits in a 'wire' namespace of its own."""
        if not self.real:
            self.sim.add_host_nic(name, mac, mtu, kind="veth", speed_mbps=10000)
            return
        assert self.netns is not None
        wire = await asyncio.to_thread(self._ns)
        await ash("ip", "-n", self.netns, "link", "add", name, "address", mac, "mtu", str(mtu),
                  "type", "veth", "peer", "name", "wire0", "netns", wire)  # fmt: skip
        await ash("ip", "-n", self.netns, "link", "set", name, "up")
        await ash("ip", "-n", wire, "link", "set", "wire0", "up")

    async def add_guest(self, device: str, ip: str, mac: str | None = None) -> Guest:
        self._n += 1
        mac = mac or mac_for(self._n)
        if not self.real:
            self.sim.add_host_nic(device, kind="veth")
            self.sim.plug_guest(device, mac, ip)
            return Guest(device, mac, ip)
        assert self.netns is not None
        gns = await asyncio.to_thread(self._ns)
        await ash("ip", "-n", self.netns, "link", "add", device, "type", "veth",
                  "peer", "name", "eth0", "netns", gns)  # fmt: skip
        await ash("ip", "-n", gns, "link", "set", "eth0", "address", mac, "up")
        if ip != "0.0.0.0":  # 0.0.0.0: no address yet (it will ask DHCP)
            await ash("ip", "-n", gns, "addr", "add", f"{ip}/24", "dev", "eth0")
        return Guest(device, mac, ip, gns)

    async def ping(self, src: Guest, dst: Guest, expect: bool) -> bool:
        """True when src reached dst. Expecting success, retry a little (MAC learning, ARP)."""
        if not self.real:
            return self.sim.ping(src.device, dst.ip)
        assert src.netns is not None
        tries = 3 if expect else 1
        for _ in range(tries):
            res = await ash("ip", "netns", "exec", src.netns, "busybox", "ping", "-c", "1", "-W", "1", dst.ip,
                            check=False)  # fmt: skip
            if res.returncode == 0:
                return True
        return False

    async def ping_burst(self, src: Guest, dst: Guest, count: int, size: int) -> int:
        """Echo replies received from a quick burst (real drivers only)."""
        assert src.netns is not None
        res = await ash("ip", "netns", "exec", src.netns, "busybox", "ping", "-q", "-c", str(count),
                        "-i", "0.02", "-W", "1", "-s", str(size), dst.ip, check=False)  # fmt: skip
        for line in res.stdout.splitlines():
            if "packets received" in line:
                return int(line.split(",")[1].split()[0])
        raise AssertionError(f"no ping summary: {res.stdout} {res.stderr}")

    async def port_owner(self, device: str) -> str | None:
        """Which bridge the data path really has the device on (kernel or OVSDB, not the driver's memory)."""
        if not self.real:
            for b in await self.driver.list_bridges():
                if device in b.ports or device == b.uplink:
                    return b.name
            return None
        if self.kind == "ovs":
            assert isinstance(self.driver, OvsNetworkDriver)
            res = await self.driver.ovs.vsctl("port-to-br", device, check=False)
            return res.stdout.strip() if res.returncode == 0 else None
        link = await nl.get_link(self.netns, device)
        return link.master if link is not None else None

    async def link(self, device: str) -> nl.Link | None:
        assert self.real
        return await nl.get_link(self.netns, device)

    async def ipv4(self, device: str) -> list[str]:
        if not self.real:
            addr = self.sim.get_ipv4_address(device)
            return [addr] if addr else []
        return await nl.get_ipv4(self.netns, device)


async def make_world(kind: str, tmp: Path) -> AsyncIterator[World]:
    require_tools(kind)
    if kind == "sim":
        drv: NetworkDriver = SimNetworkDriver(host_nics=[])
        await drv.start()
        yield World(kind, drv, None, tmp)
        return
    netns = await asyncio.to_thread(new_netns)
    run_dir: str | None = None
    world: World | None = None
    try:
        if kind == "bridge":
            drv = LinuxBridgeDriver(netns=netns)
        else:
            # Unix socket paths are short: keep the run dir out of pytest's long tmp paths.
            run_dir = tempfile.mkdtemp(prefix="pyx-ovs-", dir="/tmp")
            drv = OvsNetworkDriver(netns=netns, run_dir=run_dir)
        world = World(kind, drv, netns, tmp)
        await drv.start()
        yield world
    finally:
        if world is not None:
            await world.driver.stop()
        for ns in [*(world.namespaces if world else []), netns]:
            await ash("ip", "netns", "del", ns, check=False)
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)
