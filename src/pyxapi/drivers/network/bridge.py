"""Linux bridge driver: pyroute2 for links and addresses, nftables for locking and rate limits.

What the driver made is marked in the kernel itself (the interface alias), not only in
memory, so a restarted daemon still tells uplinks from VIF ports and its own taps from
devices it must leave alone:  "pyxapi:uplink[:bond:<mode>]", "pyxapi:tap",
"pyxapi:vlan:<parent>:<tag>" (on a VLAN network's bridge).
"""

from __future__ import annotations

import shutil
import zlib
from dataclasses import replace

from . import netlink as nl
from . import nft
from .base import (
    AlreadyExists,
    BondInfo,
    BondMode,
    BondSpec,
    BridgeInfo,
    BridgeSpec,
    Capability,
    CommandFailed,
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
    check_mtu,
    check_tag,
    check_vif,
    vif_info,
)
from .proc import check_netns

UPLINK = "pyxapi:uplink"
TAP = "pyxapi:tap"
VLAN = "pyxapi:vlan"

# Linux bonding has no SLB; balance-alb also balances by source MAC without switch support.
_BOND_MODES: dict[BondMode, int] = {"balance-slb": 6, "active-backup": 1, "lacp": 4}

_BASE_CAPS = frozenset(
    {
        Capability.BRIDGE,
        Capability.UPLINK,
        Capability.VIF,
        Capability.MTU,
        Capability.COUNTERS,
        Capability.HOST_NICS,
        Capability.IP_CONFIG,
        Capability.GUEST_OFFLOAD,
    }
)


class LinuxBridgeDriver:
    name = "bridge"

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._caps: frozenset[Capability] = _BASE_CAPS
        self._vifs: dict[str, tuple[VifSpec, int | None]] = {}
        self._nft_ready = False  # base chains rebuilt while a bridge exists (see nft.setup_script)

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self._caps

    async def start(self) -> None:
        check_netns(self.netns)
        caps = set(_BASE_CAPS)
        if shutil.which("nft"):
            try:
                await nft.setup(self.netns)
                caps |= {Capability.LOCKING, Capability.RATE_LIMIT}
                self._nft_ready = any(lk.kind == "bridge" for lk in await nl.list_links(self.netns))
            except CommandFailed:
                pass  # no nf_tables bridge family in this kernel
        if await nl.probe_kind(self.netns, "bond"):
            caps.add(Capability.BOND)
        # A vlan link without a parent is EINVAL when 802.1q exists, EOPNOTSUPP when it does not.
        if await nl.probe_kind(self.netns, "vlan", vlan_id=1):
            caps.add(Capability.VLAN)
        self._caps = frozenset(caps)

    async def stop(self) -> None:
        return None  # nothing to stop: bridges and taps outlive the daemon on purpose

    def _need(self, cap: Capability, detail: str = "") -> None:
        if cap not in self._caps:
            raise NotSupported(cap.value, detail or f"{self.name} driver on this kernel")

    # ------------------------------------------------------------ bridges

    def _info(self, br: nl.Link, links: list[nl.Link]) -> BridgeInfo:
        slaves = [lk for lk in links if lk.master == br.name]
        uplink = next((lk.name for lk in slaves if lk.alias.startswith(UPLINK)), None)
        ports = sorted(lk.name for lk in slaves if not lk.alias.startswith(UPLINK))
        vlan = parent = None
        if br.alias.startswith(VLAN + ":"):
            _, _, parent, tag = br.alias.split(":")
            vlan = int(tag)
        return BridgeInfo(br.name, br.mtu, uplink, tuple(ports), vlan, parent)

    async def _bridge(self, name: str) -> tuple[nl.Link, list[nl.Link]]:
        links = await nl.list_links(self.netns)
        br = next((lk for lk in links if lk.name == name), None)
        if br is None or br.kind != "bridge":
            raise NotFound("bridge", name)
        return br, links

    async def _take_uplink(self, bridge: str, uplink: str, mtu: int, alias: str = UPLINK) -> None:
        link = await nl.must_link(self.netns, uplink)
        if link.master is not None and link.master != bridge:
            raise InUse("device", uplink, f"enslaved to {link.master}")
        if link.kind in ("bridge", "tun"):
            raise InvalidArgument(f"{uplink} ({link.kind}) cannot be an uplink")
        await nl.set_link(self.netns, uplink, mtu=mtu, master=bridge, state="up", ifalias=alias)

    async def create_bridge(self, spec: BridgeSpec) -> BridgeInfo:
        return await self._create_bridge(spec, alias="")

    async def _create_bridge(self, spec: BridgeSpec, alias: str) -> BridgeInfo:
        check_ifname(spec.name)
        check_mtu(spec.mtu)
        if spec.uplink is not None:
            check_ifname(spec.uplink)
        existing = await nl.get_link(self.netns, spec.name)
        if existing is None:
            up = await nl.must_link(self.netns, spec.uplink) if spec.uplink else None
            if up is not None and up.master is not None:
                raise InUse("device", up.name, f"enslaved to {up.master}")
            await nl.add_link(self.netns, spec.name, "bridge")
            try:
                # Pin the bridge MAC (the uplink's, as XenServer does): otherwise it follows
                # the lowest port MAC and changes as VIFs come and go.
                mac = up.mac if up is not None else (await nl.must_link(self.netns, spec.name)).mac
                await nl.set_link(self.netns, spec.name, address=mac, mtu=spec.mtu, state="up")
                if alias:
                    await nl.set_link(self.netns, spec.name, ifalias=alias)
                if spec.uplink is not None:
                    await self._take_uplink(spec.name, spec.uplink, spec.mtu)
            except BaseException:
                await nl.delete_link(self.netns, spec.name)
                raise
            return await self.get_bridge(spec.name)
        if existing.kind != "bridge":
            raise AlreadyExists("device", spec.name, f"a {existing.kind or 'device'}, not a bridge")
        info = await self.get_bridge(spec.name)
        if info.vlan is not None:
            raise AlreadyExists("bridge", spec.name, "it is a VLAN bridge")
        if spec.uplink is not None and info.uplink not in (None, spec.uplink):
            raise AlreadyExists("bridge", spec.name, f"carries {info.uplink}")
        await nl.set_link(self.netns, spec.name, mtu=spec.mtu, state="up")
        if spec.uplink is not None and info.uplink is None:
            await self._take_uplink(spec.name, spec.uplink, spec.mtu)
        elif info.uplink is not None:
            await nl.set_link(self.netns, info.uplink, mtu=spec.mtu)
        return await self.get_bridge(spec.name)

    async def destroy_bridge(self, name: str) -> None:
        br, links = await self._bridge(name)
        info = self._info(br, links)
        if info.vlan is not None:
            return await self.destroy_vlan(name)
        children = [lk.name for lk in links if lk.kind == "bridge" and lk.alias.startswith(f"{VLAN}:{name}:")]
        if info.ports or children:
            raise InUse("bridge", name, "still has " + ", ".join([*info.ports, *children]))
        if info.uplink is not None:
            up = next(lk for lk in links if lk.name == info.uplink)
            if up.kind == "bond":
                await self.destroy_bond(up.name)
            else:
                await nl.set_link(self.netns, up.name, master=None, ifalias="")
        await nl.delete_link(self.netns, name)

    async def get_bridge(self, name: str) -> BridgeInfo:
        br, links = await self._bridge(name)
        return self._info(br, links)

    async def list_bridges(self) -> list[BridgeInfo]:
        links = await nl.list_links(self.netns)
        return [self._info(b, links) for b in sorted(links, key=lambda x: x.name) if b.kind == "bridge"]

    # ------------------------------------------------------------ VIFs

    def _check_features(self, spec: VifSpec, info: BridgeInfo) -> int | None:
        if info.vlan is not None:
            if spec.vlan not in (None, info.vlan):
                raise InvalidArgument(f"bridge {info.name} is VLAN {info.vlan}; VIF asks for tag {spec.vlan}")
        elif spec.vlan is not None:
            self._need(Capability.VIF_TAG, "per-port VLAN tags need bridge vlan_filtering")
        if spec.locking.effective() != "unlocked":
            self._need(Capability.LOCKING, "nftables bridge family unavailable")
        if spec.rate_kbps:
            self._need(Capability.RATE_LIMIT, "nftables bridge family unavailable")
        return info.vlan

    async def attach_vif(self, spec: VifSpec) -> VifInfo:
        spec = check_vif(spec)
        info = await self.get_bridge(spec.bridge)
        tag = self._check_features(spec, info)
        if spec.device in self._vifs:
            raise AlreadyExists("vif", spec.device)
        link = await nl.get_link(self.netns, spec.device)
        if spec.create_tap:
            if link is not None:
                raise AlreadyExists("device", spec.device)
            await nl.create_tap(self.netns, spec.device)
        elif link is None:
            raise NotFound("device", spec.device)
        elif link.master is not None or link.kind == "bridge":
            raise InUse("device", spec.device, f"enslaved to {link.master}" if link.master else "a bridge")
        try:
            if spec.create_tap:
                await nl.set_link(self.netns, spec.device, ifalias=TAP)
            await nl.set_link(self.netns, spec.device, mtu=spec.mtu, master=spec.bridge, state="up")
            if nft.vif_rules(spec):
                await self._nft_apply(spec)
        except BaseException:
            await self._unplug(spec.device, spec.create_tap)
            raise
        self._vifs[spec.device] = (spec, tag)
        return vif_info(spec, tag)

    async def _attached(self, device: str) -> tuple[str, bool]:
        """(bridge, created by us) of an attached VIF; after a daemon restart, from the kernel."""
        rec = self._vifs.get(device)
        if rec is not None:
            return rec[0].bridge, rec[0].create_tap
        link = await nl.get_link(self.netns, device)
        if link is None or link.master is None or link.alias.startswith(UPLINK):
            raise NotFound("vif", device)
        return link.master, link.alias == TAP

    async def update_vif(self, spec: VifSpec) -> VifInfo:
        spec = check_vif(spec)
        bridge, created = await self._attached(spec.device)
        if bridge != spec.bridge:
            raise InvalidArgument(f"{spec.device} is on {bridge}: detach and attach to move it")
        tag = self._check_features(spec, await self.get_bridge(spec.bridge))
        await nl.set_link(self.netns, spec.device, mtu=spec.mtu)
        if Capability.LOCKING in self._caps:
            await self._nft_apply(spec)
        spec = replace(spec, create_tap=created)
        self._vifs[spec.device] = (spec, tag)
        return vif_info(spec, tag)

    async def move_vif(self, spec: VifSpec) -> VifInfo:
        spec = check_vif(spec)
        _, created = await self._attached(spec.device)
        tag = self._check_features(spec, await self.get_bridge(spec.bridge))
        # The nftables rules follow the device name, not the bridge: re-applying them is enough.
        await nl.set_link(self.netns, spec.device, master=spec.bridge, mtu=spec.mtu, state="up")
        if Capability.LOCKING in self._caps:
            await self._nft_apply(spec)
        spec = replace(spec, create_tap=created)
        self._vifs[spec.device] = (spec, tag)
        return vif_info(spec, tag)

    async def _nft_apply(self, spec: VifSpec) -> None:
        if not self._nft_ready:
            await nft.setup(self.netns)
            self._nft_ready = True
        await nft.apply(self.netns, spec)

    async def _unplug(self, device: str, created: bool | None) -> None:
        if Capability.LOCKING in self._caps:
            await nft.remove(self.netns, device)
        link = await nl.get_link(self.netns, device)
        if link is None:
            return
        if created or (created is None and link.alias == TAP):
            await nl.delete_link(self.netns, device)
        else:
            await nl.set_link(self.netns, device, master=None)

    async def detach_vif(self, device: str) -> None:
        rec = self._vifs.pop(device, None)
        if rec is None:
            # Not attached by this process (daemon restart): trust the kernel's view.
            link = await nl.get_link(self.netns, device)
            if link is None or link.master is None or link.alias.startswith(UPLINK):
                raise NotFound("vif", device)
        await self._unplug(device, rec[0].create_tap if rec else None)

    async def get_vif(self, device: str) -> VifInfo:
        rec = self._vifs.get(device)
        if rec is None:
            raise NotFound("vif", device)
        return vif_info(*rec)

    # ------------------------------------------------------------ VLANs (802.1q devices)

    async def create_vlan(self, spec: VlanSpec) -> BridgeInfo:
        self._need(Capability.VLAN, "this kernel has no 802.1q VLAN devices")
        check_ifname(spec.bridge)
        check_tag(spec.tag)
        parent = await self.get_bridge(spec.parent)
        if parent.vlan is not None:
            raise InvalidArgument(f"{spec.parent} is itself a VLAN bridge")
        if parent.uplink is None:
            raise InvalidArgument(f"{spec.parent} has no uplink to carry tagged traffic")
        alias = f"{VLAN}:{spec.parent}:{spec.tag}"
        existing = await nl.get_link(self.netns, spec.bridge)
        if existing is not None:
            if existing.alias == alias:
                return await self.get_bridge(spec.bridge)
            raise AlreadyExists("bridge", spec.bridge)
        dev = f"{parent.uplink}.{spec.tag}"
        if len(dev) > 15:
            dev = f"pyxv{zlib.crc32(dev.encode()):08x}"[:15]
        uplink = await nl.must_link(self.netns, parent.uplink)
        await nl.add_link(self.netns, dev, "vlan", link=uplink.index, vlan_id=spec.tag)
        try:
            mtu = spec.mtu or parent.mtu
            return await self._create_bridge(BridgeSpec(spec.bridge, mtu, dev), alias=alias)
        except BaseException:
            await nl.delete_link(self.netns, dev)
            raise

    async def destroy_vlan(self, bridge: str) -> None:
        info = await self.get_bridge(bridge)
        if info.vlan is None:
            raise InvalidArgument(f"{bridge} is not a VLAN bridge")
        if info.ports:
            raise InUse("bridge", bridge, "still has " + ", ".join(info.ports))
        await nl.delete_link(self.netns, bridge)
        if info.uplink is not None:
            await nl.delete_link(self.netns, info.uplink)

    # ------------------------------------------------------------ bonds (Linux bonding)

    async def create_bond(self, spec: BondSpec) -> BondInfo:
        self._need(Capability.BOND, "this kernel has no bonding driver")
        check_bond(spec)
        info = await self.get_bridge(spec.bridge)
        if info.vlan is not None:
            raise InvalidArgument(f"{spec.bridge} is a VLAN bridge")
        if info.uplink is not None:
            raise InUse("bridge", spec.bridge, f"already carries {info.uplink}")
        if await nl.get_link(self.netns, spec.name) is not None:
            raise AlreadyExists("bond", spec.name)
        members = [await nl.must_link(self.netns, m) for m in spec.members]
        for m in members:
            if m.master is not None:
                raise InUse("device", m.name, f"enslaved to {m.master}")
        mtu = spec.mtu or info.mtu
        await nl.add_link(self.netns, spec.name, "bond", bond_mode=_BOND_MODES[spec.mode])
        try:
            for m in members:
                await nl.set_link(self.netns, m.name, state="down")
                await nl.set_link(self.netns, m.name, master=spec.name, mtu=mtu, state="up")
            await self._take_uplink(spec.bridge, spec.name, mtu, f"{UPLINK}:bond:{spec.mode}")
        except BaseException:
            await nl.delete_link(self.netns, spec.name)
            raise
        return BondInfo(spec.name, spec.bridge, tuple(sorted(spec.members)), spec.mode)

    async def destroy_bond(self, name: str) -> None:
        links = await nl.list_links(self.netns)
        bond = next((lk for lk in links if lk.name == name and lk.kind == "bond"), None)
        if bond is None:
            raise NotFound("bond", name)
        for m in links:
            if m.master == name:
                await nl.set_link(self.netns, m.name, master=None)
        await nl.delete_link(self.netns, name)

    # ------------------------------------------------------------ host side

    async def list_host_nics(self) -> list[HostNic]:
        return await nl.host_nics(self.netns)

    async def set_ipv4_address(self, device: str, address: str | None, gateway: str | None = None) -> None:
        try:
            await nl.replace_ipv4(self.netns, device, address, gateway)
        except ValueError as e:
            raise InvalidArgument(str(e)) from e

    async def get_counters(self, device: str) -> Counters:
        return (await nl.must_link(self.netns, device)).counters
