"""In-memory network driver with the same semantics (and errors) as the real ones.

Besides the NetworkDriver protocol it has a few hooks for tests: add_host_nic() stands in
for a kernel device that already exists (a physical NIC, a veth end), plug_guest() says
which MAC/IP the guest behind a VIF uses, and ping() answers whether two guests could
talk, honouring bridges, VLAN tags and locking modes, and bumping the counters.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from .base import (
    AlreadyExists,
    BondInfo,
    BondSpec,
    BridgeInfo,
    BridgeSpec,
    Capability,
    Counters,
    HostNic,
    InUse,
    InvalidArgument,
    NotFound,
    NotSupported,
    VifInfo,
    VifSpec,
    VlanSpec,
    check_bond,
    check_ifname,
    check_mac,
    check_mtu,
    check_tag,
    check_vif,
    vif_info,
)

HARDWARE_KINDS = ("", "veth", "dummy")


@dataclass
class _Dev:
    name: str
    mac: str
    mtu: int = 1500
    kind: str = ""
    up: bool = True
    carrier: bool = True
    speed_mbps: int | None = None
    master: str | None = None
    created: bool = False  # made by the driver (a tap): deleted on detach
    ipv4: str | None = None
    counters: Counters = field(default_factory=Counters)


@dataclass
class _Bridge:
    name: str
    mtu: int
    uplink: str | None = None
    vlan: int | None = None
    parent: str | None = None


def _host_nic(d: _Dev) -> HostNic:
    duplex = True if d.speed_mbps else None
    ipv4 = (d.ipv4,) if d.ipv4 else ()
    return HostNic(d.name, d.mac, d.mtu, d.carrier and d.up, d.up, d.speed_mbps, d.kind, d.master, duplex, ipv4)


def _random_mac() -> str:
    return "02:" + ":".join(f"{random.randrange(256):02x}" for _ in range(5))


class SimNetworkDriver:
    name = "sim"

    def __init__(
        self,
        netns: str | None = None,
        capabilities: Iterable[Capability] | None = None,
        host_nics: Iterable[HostNic] | None = None,
    ) -> None:
        self.netns = netns  # recorded only: nothing is real here
        self._caps = frozenset(Capability) if capabilities is None else frozenset(capabilities)
        self._devs: dict[str, _Dev] = {}
        self._bridges: dict[str, _Bridge] = {}
        self._vifs: dict[str, VifSpec] = {}
        self._bonds: dict[str, BondInfo] = {}
        self._guests: dict[str, tuple[str, str]] = {}  # device -> (guest mac, guest ip)
        if host_nics is None:
            host_nics = [
                HostNic("eth0", "52:54:00:00:00:10", 1500, True, True, 1000, ""),
                HostNic("eth1", "52:54:00:00:00:11", 1500, True, True, 1000, ""),
            ]
        for nic in host_nics:
            self.add_host_nic(nic.name, nic.mac, nic.mtu, nic.kind, nic.speed_mbps, nic.carrier)

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self._caps

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    # ------------------------------------------------------------ test hooks

    def add_host_nic(
        self,
        name: str,
        mac: str | None = None,
        mtu: int = 1500,
        kind: str = "",
        speed_mbps: int | None = None,
        carrier: bool = True,
    ) -> None:
        check_ifname(name)
        if name in self._devs:
            raise AlreadyExists("device", name)
        self._devs[name] = _Dev(name, check_mac(mac or _random_mac()), mtu, kind, True, carrier, speed_mbps)

    def remove_device(self, name: str) -> None:
        if name in self._vifs or any(d.master == name for d in self._devs.values()):
            raise InUse("device", name)
        self._dev(name)
        del self._devs[name]

    def plug_guest(self, device: str, mac: str, ip: str) -> None:
        self._dev(device)
        self._guests[device] = (check_mac(mac), str(ipaddress.ip_address(ip)))

    def ping(self, src_device: str, dst_ip: str) -> bool:
        """One echo request and reply between two guests; True if both got through."""
        src = self._guests.get(src_device)
        if src is None:
            raise NotFound("guest", src_device)
        self._bump(src_device, rx=True)
        if not self._may_send(src_device, *src):
            return False
        seg = self._segment(src_device)
        for dev, (mac, ip) in self._guests.items():
            if ip != dst_ip or dev == src_device or seg is None or self._segment(dev) != seg:
                continue
            if self._receive_blocked(dev):
                return False
            self._bump(dev, rx=False)
            self._bump(dev, rx=True)
            if not self._may_send(dev, mac, ip) or self._receive_blocked(src_device):
                return False
            self._bump(src_device, rx=False)
            return True
        return False

    def _segment(self, device: str) -> tuple[str, int] | None:
        spec = self._vifs.get(device)
        if spec is None:
            return None
        br = self._bridges[spec.bridge]
        if br.parent is not None:
            return (br.parent, br.vlan or 0)
        return (br.name, spec.vlan or 0)

    def _may_send(self, device: str, mac: str, ip: str) -> bool:
        spec = self._vifs[device]
        mode = spec.locking.effective()
        if mode == "unlocked":
            return True
        if mode == "disabled":
            return False
        allowed = spec.locking.ipv4_allowed + spec.locking.ipv6_allowed
        return mac == spec.mac and ip in allowed

    def _receive_blocked(self, device: str) -> bool:
        return self._vifs[device].locking.effective() == "disabled"

    def _bump(self, device: str, rx: bool, size: int = 98) -> None:
        d = self._devs[device]
        c = d.counters
        if rx:
            d.counters = replace(c, rx_packets=c.rx_packets + 1, rx_bytes=c.rx_bytes + size)
        else:
            d.counters = replace(c, tx_packets=c.tx_packets + 1, tx_bytes=c.tx_bytes + size)

    # ------------------------------------------------------------ helpers

    def _need(self, cap: Capability, detail: str = "") -> None:
        if cap not in self._caps:
            raise NotSupported(cap.value, detail)

    def _dev(self, name: str) -> _Dev:
        try:
            return self._devs[name]
        except KeyError:
            raise NotFound("device", name) from None

    def _bridge(self, name: str) -> _Bridge:
        try:
            return self._bridges[name]
        except KeyError:
            raise NotFound("bridge", name) from None

    def _info(self, br: _Bridge) -> BridgeInfo:
        ports = sorted(d for d, s in self._vifs.items() if s.bridge == br.name)
        return BridgeInfo(br.name, br.mtu, br.uplink, tuple(ports), br.vlan, br.parent)

    def _take_uplink(self, bridge: str, uplink: str, mtu: int) -> None:
        dev = self._dev(uplink)
        if dev.master is not None or uplink in self._vifs or uplink in self._bridges:
            raise InUse("device", uplink, f"enslaved to {dev.master}" if dev.master else "")
        dev.master = bridge
        dev.mtu = mtu

    # ------------------------------------------------------------ bridges

    async def create_bridge(self, spec: BridgeSpec) -> BridgeInfo:
        self._need(Capability.BRIDGE)
        check_ifname(spec.name)
        check_mtu(spec.mtu)
        if spec.uplink is not None:
            self._need(Capability.UPLINK)
            check_ifname(spec.uplink)
        br = self._bridges.get(spec.name)
        if br is None:
            if spec.name in self._devs:
                raise AlreadyExists("device", spec.name, "not a bridge")
            if spec.uplink is not None:
                self._take_uplink(spec.name, spec.uplink, spec.mtu)
            br = self._bridges[spec.name] = _Bridge(spec.name, spec.mtu, spec.uplink)
            self._devs[spec.name] = _Dev(spec.name, _random_mac(), spec.mtu, "bridge")
            return self._info(br)
        if br.parent is not None:
            raise AlreadyExists("bridge", spec.name, "it is a VLAN bridge")
        if spec.uplink is not None and br.uplink not in (None, spec.uplink):
            raise AlreadyExists("bridge", spec.name, f"carries {br.uplink}")
        if spec.uplink is not None and br.uplink is None:
            self._take_uplink(spec.name, spec.uplink, spec.mtu)
            br.uplink = spec.uplink
        br.mtu = self._devs[spec.name].mtu = spec.mtu
        if br.uplink is not None:
            self._devs[br.uplink].mtu = spec.mtu
        return self._info(br)

    async def destroy_bridge(self, name: str) -> None:
        br = self._bridge(name)
        if br.parent is not None:
            return await self.destroy_vlan(name)
        busy = [d for d, s in self._vifs.items() if s.bridge == name]
        busy += [b.name for b in self._bridges.values() if b.parent == name]
        if busy:
            raise InUse("bridge", name, "still has " + ", ".join(sorted(busy)))
        if br.uplink in self._bonds:
            await self.destroy_bond(br.uplink)
        elif br.uplink is not None:
            self._devs[br.uplink].master = None
        del self._bridges[name]
        del self._devs[name]

    async def get_bridge(self, name: str) -> BridgeInfo:
        return self._info(self._bridge(name))

    async def list_bridges(self) -> list[BridgeInfo]:
        return [self._info(b) for _, b in sorted(self._bridges.items())]

    # ------------------------------------------------------------ VIFs

    def _check_vif_features(self, spec: VifSpec, br: _Bridge) -> int | None:
        if spec.vlan is not None:
            self._need(Capability.VIF_TAG)
        if br.parent is not None and spec.vlan not in (None, br.vlan):
            raise InvalidArgument(f"bridge {br.name} is VLAN {br.vlan}; VIF asks for tag {spec.vlan}")
        if spec.locking.effective() != "unlocked":
            self._need(Capability.LOCKING)
        if spec.rate_kbps:
            self._need(Capability.RATE_LIMIT)
        return br.vlan if br.parent is not None else spec.vlan

    async def attach_vif(self, spec: VifSpec) -> VifInfo:
        self._need(Capability.VIF)
        spec = check_vif(spec)
        br = self._bridge(spec.bridge)
        tag = self._check_vif_features(spec, br)
        if spec.device in self._vifs:
            raise AlreadyExists("vif", spec.device)
        if spec.create_tap:
            if spec.device in self._devs:
                raise AlreadyExists("device", spec.device)
            self._devs[spec.device] = _Dev(spec.device, _random_mac(), spec.mtu, "tun", created=True)
        else:
            dev = self._dev(spec.device)
            if dev.master is not None or spec.device in self._bridges:
                raise InUse("device", spec.device)
        dev = self._devs[spec.device]
        dev.master = spec.bridge
        dev.mtu = spec.mtu
        self._vifs[spec.device] = spec
        return vif_info(spec, tag)

    async def update_vif(self, spec: VifSpec) -> VifInfo:
        spec = check_vif(spec)
        old = self._vifs.get(spec.device)
        if old is None:
            raise NotFound("vif", spec.device)
        if old.bridge != spec.bridge:
            raise InvalidArgument(f"{spec.device} is on {old.bridge}: detach and attach to move it")
        tag = self._check_vif_features(spec, self._bridge(spec.bridge))
        self._devs[spec.device].mtu = spec.mtu
        self._vifs[spec.device] = replace(spec, create_tap=old.create_tap)
        return vif_info(spec, tag)

    async def move_vif(self, spec: VifSpec) -> VifInfo:
        spec = check_vif(spec)
        old = self._vifs.get(spec.device)
        if old is None:
            raise NotFound("vif", spec.device)
        tag = self._check_vif_features(spec, self._bridge(spec.bridge))
        dev = self._devs[spec.device]
        dev.master = spec.bridge
        dev.mtu = spec.mtu
        self._vifs[spec.device] = replace(spec, create_tap=old.create_tap)
        return vif_info(spec, tag)

    async def detach_vif(self, device: str) -> None:
        spec = self._vifs.pop(device, None)
        if spec is None:
            raise NotFound("vif", device)
        self._guests.pop(device, None)
        dev = self._devs[device]
        if dev.created:
            del self._devs[device]
        else:
            dev.master = None

    async def get_vif(self, device: str) -> VifInfo:
        spec = self._vifs.get(device)
        if spec is None:
            raise NotFound("vif", device)
        br = self._bridges[spec.bridge]
        return vif_info(spec, br.vlan if br.parent is not None else None)

    # ------------------------------------------------------------ VLANs

    async def create_vlan(self, spec: VlanSpec) -> BridgeInfo:
        self._need(Capability.VLAN)
        check_ifname(spec.bridge)
        check_tag(spec.tag)
        parent = self._bridge(spec.parent)
        if parent.parent is not None:
            raise InvalidArgument(f"{spec.parent} is itself a VLAN bridge")
        existing = self._bridges.get(spec.bridge)
        if existing is not None:
            if existing.parent == spec.parent and existing.vlan == spec.tag:
                return self._info(existing)
            raise AlreadyExists("bridge", spec.bridge)
        if spec.bridge in self._devs:
            raise AlreadyExists("device", spec.bridge)
        for b in self._bridges.values():
            if b.parent == spec.parent and b.vlan == spec.tag:
                raise AlreadyExists("vlan", f"{spec.parent}.{spec.tag}", f"bridge {b.name}")
        mtu = spec.mtu if spec.mtu is not None else parent.mtu
        check_mtu(mtu)
        br = self._bridges[spec.bridge] = _Bridge(spec.bridge, mtu, None, spec.tag, spec.parent)
        self._devs[spec.bridge] = _Dev(spec.bridge, _random_mac(), mtu, "bridge")
        return self._info(br)

    async def destroy_vlan(self, bridge: str) -> None:
        br = self._bridge(bridge)
        if br.parent is None:
            raise InvalidArgument(f"{bridge} is not a VLAN bridge")
        busy = sorted(d for d, s in self._vifs.items() if s.bridge == bridge)
        if busy:
            raise InUse("bridge", bridge, "still has " + ", ".join(busy))
        del self._bridges[bridge]
        del self._devs[bridge]

    # ------------------------------------------------------------ bonds

    async def create_bond(self, spec: BondSpec) -> BondInfo:
        self._need(Capability.BOND)
        check_bond(spec)
        br = self._bridge(spec.bridge)
        if br.parent is not None:
            raise InvalidArgument(f"{spec.bridge} is a VLAN bridge")
        if spec.name in self._bonds or spec.name in self._devs:
            raise AlreadyExists("bond", spec.name)
        if br.uplink is not None:
            raise InUse("bridge", spec.bridge, f"already carries {br.uplink}")
        for m in spec.members:
            if self._dev(m).master is not None or m in self._vifs:
                raise InUse("device", m)
        mtu = spec.mtu or br.mtu
        for m in spec.members:
            self._devs[m].master = spec.name
            self._devs[m].mtu = mtu
        self._devs[spec.name] = _Dev(spec.name, self._devs[spec.members[0]].mac, mtu, "bond", master=spec.bridge)
        br.uplink = spec.name
        info = BondInfo(spec.name, spec.bridge, tuple(sorted(spec.members)), spec.mode)
        self._bonds[spec.name] = info
        return info

    async def destroy_bond(self, name: str) -> None:
        info = self._bonds.pop(name, None)
        if info is None:
            raise NotFound("bond", name)
        for m in info.members:
            self._devs[m].master = None
        del self._devs[name]
        br = self._bridges.get(info.bridge)
        if br is not None and br.uplink == name:
            br.uplink = None

    # ------------------------------------------------------------ host side

    async def list_host_nics(self) -> list[HostNic]:
        self._need(Capability.HOST_NICS)
        return [_host_nic(d) for _, d in sorted(self._devs.items()) if d.kind in HARDWARE_KINDS]

    async def set_ipv4_address(self, device: str, address: str | None, gateway: str | None = None) -> None:
        self._need(Capability.IP_CONFIG)
        dev = self._dev(device)
        try:
            iface = ipaddress.IPv4Interface(address) if address is not None else None
            if gateway is not None:
                ipaddress.IPv4Address(gateway)
        except ValueError as e:
            raise InvalidArgument(str(e)) from e
        dev.ipv4 = str(iface) if iface is not None else None
        dev.up = True

    def get_ipv4_address(self, device: str) -> str | None:
        return self._dev(device).ipv4

    async def get_counters(self, device: str) -> Counters:
        self._need(Capability.COUNTERS)
        return self._dev(device).counters
