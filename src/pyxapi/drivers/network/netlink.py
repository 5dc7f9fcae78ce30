"""rtnetlink through pyroute2's AsyncIPRoute, always inside the driver's namespace.

A socket is opened per call (about 10 ms into a namespace): drivers stay free of
event-loop-bound state, and a namespace removed under us shows up as NotFound.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import ipaddress
import secrets
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import nic_info
from .base import AlreadyExists, Counters, HostNic, NetworkError, NotFound, NotSupported

# Kinds list_host_nics reports: hardware (no kind), and the stand-ins tests and small hosts use.
HARDWARE_KINDS = ("", "veth", "dummy")


@dataclass(frozen=True, slots=True)
class Link:
    index: int
    name: str
    kind: str
    mac: str
    mtu: int
    up: bool
    carrier: bool
    master: str | None
    alias: str
    counters: Counters


def map_error(e: NetlinkError, kind: str, name: str) -> NetworkError:
    if e.code == errno.ENODEV:
        return NotFound(kind, name)
    if e.code == errno.EEXIST:
        return AlreadyExists(kind, name)
    if e.code == errno.EOPNOTSUPP:
        return NotSupported(kind, str(e))
    return NetworkError(f"{kind} {name}: {e}")


@asynccontextmanager
async def ipr(netns: str | None) -> AsyncIterator[Any]:
    # flags=0: never create a namespace by accident (pyroute2's default is O_CREAT).
    try:
        ip = AsyncIPRoute(netns=netns, flags=0) if netns else AsyncIPRoute()
    except FileNotFoundError:
        raise NotFound("netns", netns or "") from None
    try:
        async with ip:
            yield ip
    except FileNotFoundError:
        raise NotFound("netns", netns or "") from None


def _counters(msg: Any) -> Counters:
    s = msg.get("stats64") or msg.get("stats") or {}
    return Counters(
        rx_bytes=s.get("rx_bytes", 0),
        tx_bytes=s.get("tx_bytes", 0),
        rx_packets=s.get("rx_packets", 0),
        tx_packets=s.get("tx_packets", 0),
        rx_errors=s.get("rx_errors", 0),
        tx_errors=s.get("tx_errors", 0),
        rx_dropped=s.get("rx_dropped", 0),
        tx_dropped=s.get("tx_dropped", 0),
    )


def _link(msg: Any, names: dict[int, str]) -> Link:
    master = msg.get("master")
    return Link(
        index=msg["index"],
        name=msg.get("ifname"),
        kind=msg.get(("linkinfo", "kind")) or "",
        mac=(msg.get("address") or "").lower(),
        mtu=msg.get("mtu") or 0,
        up=bool(msg["flags"] & 1),
        carrier=bool(msg.get("carrier")),
        master=names.get(master) if master else None,
        alias=msg.get("ifalias") or "",
        counters=_counters(msg),
    )


async def list_links(netns: str | None) -> list[Link]:
    async with ipr(netns) as ip:
        msgs = [m async for m in await ip.link("dump")]
    names = {m["index"]: m.get("ifname") for m in msgs}
    return [_link(m, names) for m in msgs]


async def get_link(netns: str | None, name: str) -> Link | None:
    for link in await list_links(netns):
        if link.name == name:
            return link
    return None


async def must_link(netns: str | None, name: str, kind: str = "device") -> Link:
    link = await get_link(netns, name)
    if link is None:
        raise NotFound(kind, name)
    return link


async def add_link(netns: str | None, name: str, kind: str, **kw: Any) -> None:
    async with ipr(netns) as ip:
        try:
            await ip.link("add", ifname=name, kind=kind, **kw)
        except NetlinkError as e:
            raise map_error(e, "device", name) from e


async def create_tap(netns: str | None, name: str) -> None:
    await add_link(netns, name, "tuntap", mode="tap")


async def delete_link(netns: str | None, name: str) -> None:
    async with ipr(netns) as ip:
        try:
            await ip.link("del", ifname=name)
        except NetlinkError as e:
            raise map_error(e, "device", name) from e


async def set_link(netns: str | None, name: str, **kw: Any) -> None:
    """kw: mtu, state ('up'/'down'), master (name, or None to release), address, ifalias."""
    async with ipr(netns) as ip:
        try:
            idx = await ip.link_lookup(ifname=name)
            if not idx:
                raise NotFound("device", name)
            if "master" in kw:
                master = kw.pop("master")
                if master is None:
                    kw["master"] = 0
                else:
                    midx = await ip.link_lookup(ifname=master)
                    if not midx:
                        raise NotFound("device", master)
                    kw["master"] = midx[0]
            await ip.link("set", index=idx[0], **kw)
        except NetlinkError as e:
            raise map_error(e, "device", name) from e


async def probe_kind(netns: str | None, kind: str, **kw: Any) -> bool:
    """Can this kernel create links of ``kind``? Without modules, EOPNOTSUPP means no."""
    name = f"pyxprb{secrets.token_hex(4)}"
    async with ipr(netns) as ip:
        try:
            await ip.link("add", ifname=name, kind=kind, **kw)
        except NetlinkError as e:
            return e.code != errno.EOPNOTSUPP
        except Exception:
            return False
        await ip.link("del", ifname=name)
        return True


async def replace_ipv4(netns: str | None, device: str, address: str | None, gateway: str | None) -> None:
    iface = ipaddress.IPv4Interface(address) if address is not None else None
    gw = ipaddress.IPv4Address(gateway) if gateway is not None else None
    async with ipr(netns) as ip:
        idx = await ip.link_lookup(ifname=device)
        if not idx:
            raise NotFound("device", device)
        index = idx[0]
        try:
            old = [a async for a in await ip.addr("dump", index=index, family=socket.AF_INET)]
            for a in old:
                await ip.addr("del", index=index, address=a.get("address"), prefixlen=a["prefixlen"])
            if iface is not None:
                await ip.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            await ip.link("set", index=index, state="up")
            if gw is not None:
                await ip.route("replace", dst="0.0.0.0/0", gateway=str(gw), oif=index)
        except NetlinkError as e:
            raise map_error(e, "device", device) from e


async def get_ipv4(netns: str | None, device: str) -> list[str]:
    async with ipr(netns) as ip:
        idx = await ip.link_lookup(ifname=device)
        if not idx:
            raise NotFound("device", device)
        addrs = [a async for a in await ip.addr("dump", index=idx[0], family=socket.AF_INET)]
    return [f"{a.get('address')}/{a['prefixlen']}" for a in addrs]


# ------------------------------------------------------------ host NICs and link speed

_SIOCETHTOOL = 0x8946
_ETHTOOL_GSET = 0x00000001


def _ethtool_in(netns: str | None, names: list[str]) -> dict[str, tuple[int | None, bool | None]]:
    """Speed (Mbit/s) and full duplex, by the legacy ETHTOOL_GSET ioctl on a socket opened
    inside the namespace (blocking)."""
    from pyroute2 import netns as pnetns

    sock = (
        pnetns.create_socket(netns, socket.AF_INET, socket.SOCK_DGRAM, flags=0)
        if netns
        else socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    )
    out: dict[str, tuple[int | None, bool | None]] = {}
    try:
        for name in names:
            buf = ctypes.create_string_buffer(struct.pack("I", _ETHTOOL_GSET) + b"\0" * 40)
            ifreq = struct.pack("16sP", name.encode(), ctypes.addressof(buf)) + b"\0" * 16
            try:
                fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, ifreq)
            except OSError:
                out[name] = (None, None)
                continue
            speed_lo = struct.unpack_from("H", buf.raw, 12)[0]
            duplex = buf.raw[14]  # DUPLEX_HALF 0, DUPLEX_FULL 1, DUPLEX_UNKNOWN 0xff
            speed_hi = struct.unpack_from("H", buf.raw, 28)[0]
            speed = speed_lo | (speed_hi << 16)
            out[name] = (
                None if speed in (0, 0xFFFF, 0xFFFFFFFF) else speed,
                None if duplex not in (0, 1) else duplex == 1,
            )
    finally:
        sock.close()
    return out


async def _ipv4_by_index(netns: str | None) -> dict[int, list[str]]:
    async with ipr(netns) as ip:
        addrs = [a async for a in await ip.addr("dump", family=socket.AF_INET)]
    out: dict[int, list[str]] = {}
    for a in addrs:
        out.setdefault(a["index"], []).append(f"{a.get('address')}/{a['prefixlen']}")
    return out


async def host_nics(netns: str | None) -> list[HostNic]:
    links = [lk for lk in await list_links(netns) if lk.kind in HARDWARE_KINDS and lk.name != "lo"]
    links = [lk for lk in links if lk.mac and lk.mac != "00:00:00:00:00:00"]
    names = [lk.name for lk in links]
    ethtool = await asyncio.to_thread(_ethtool_in, netns, names) if links else {}
    addresses = await _ipv4_by_index(netns) if links else {}
    # sysfs shows this mount namespace's view, the root network namespace: only trust it there.
    hardware = await asyncio.to_thread(nic_info.hardware_of, names) if links and netns is None else {}
    return [
        HostNic(
            name=lk.name,
            mac=lk.mac,
            mtu=lk.mtu,
            carrier=lk.carrier and lk.up,
            up=lk.up,
            speed_mbps=ethtool.get(lk.name, (None, None))[0],
            kind=lk.kind,
            master=lk.master,
            duplex=ethtool.get(lk.name, (None, None))[1],
            ipv4=tuple(addresses.get(lk.index, ())),
            hardware=hardware.get(lk.name),
        )
        for lk in sorted(links, key=lambda x: x.name)
    ]
