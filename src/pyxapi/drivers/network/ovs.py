"""Open vSwitch driver: ovs-vsctl / ovs-ofctl as async subprocesses, pyroute2 for the kernel side.

VLAN networks are OVS "fake bridges" (a tagged internal port on the parent bridge): a VIF
added to one gets the tag. Locking and rate limits are OpenFlow flows and meters on the
real (parent) bridge. What the driver made is marked in OVSDB external_ids, so a restarted
daemon still tells uplinks, bonds and its own taps apart.

The datapath is the kernel one ('system') when the openvswitch module is there, else the
user-space 'netdev' datapath, which is what this project's test machines have.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Literal

from . import netlink as nl
from . import ovs_flows
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
    NetworkError,
    NotFound,
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
from .ovs_tools import Ovs, scalar

ROLE = "pyxapi-role"  # Port external_ids: uplink | vif
BOND_MODE = "pyxapi-bond-mode"
CREATED = "pyxapi-tap"  # Port external_ids: the driver created this tap

DatapathChoice = Literal["auto", "system", "netdev"]

_BOND_ARGS: dict[BondMode, list[str]] = {
    "balance-slb": ["bond_mode=balance-slb"],
    "active-backup": ["bond_mode=active-backup"],
    # As XenServer does: LACP with hashing on L4, falling back to active-backup without a partner.
    "lacp": ["bond_mode=balance-tcp", "lacp=active", "other_config:lacp-fallback-ab=true"],
}


def random_mac() -> str:
    return "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))


def kernel_datapath_available() -> bool:
    """The openvswitch kernel module registers the generic netlink family 'ovs_datapath'."""
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.generic import GenericNetlinkSocket

    sock = GenericNetlinkSocket()
    try:
        sock.discovery("ovs_datapath")
        return True
    except NetlinkError:
        return False
    finally:
        sock.close()


class OvsNetworkDriver:
    name = "ovs"

    def __init__(
        self,
        netns: str | None = None,
        run_dir: str | Path | None = None,
        datapath_type: DatapathChoice = "auto",
        timeout: float = 20.0,
    ) -> None:
        self.netns = netns
        self.ovs = Ovs(netns, run_dir, timeout=timeout)
        self._dp_choice = datapath_type
        self.datapath_type = "netdev"
        self._vifs: dict[str, tuple[VifSpec, int | None]] = {}

    @property
    def capabilities(self) -> frozenset[Capability]:
        if self.datapath_type == "system":
            return frozenset(Capability)
        # The user-space datapath reads frames off taps with plain packet sockets: a guest's
        # unfinished checksums and 64 KiB TSO frames would reach the other side as they are.
        return frozenset(Capability) - {Capability.GUEST_OFFLOAD}

    async def start(self) -> None:
        await self.ovs.start()
        if self._dp_choice == "auto":
            system = await asyncio.to_thread(kernel_datapath_available)
            self.datapath_type = "system" if system else "netdev"
        else:
            self.datapath_type = self._dp_choice

    async def stop(self) -> None:
        await self.ovs.stop()

    # ------------------------------------------------------------ OVSDB helpers

    async def _port_bridge(self, port: str) -> str | None:
        res = await self.ovs.vsctl("port-to-br", port, check=False)
        return res.stdout.strip() if res.returncode == 0 else None

    async def _iface_bridge(self, iface: str) -> str | None:
        # Unlike port-to-br, this also finds bond members (interfaces of a port named otherwise).
        res = await self.ovs.vsctl("iface-to-br", iface, check=False)
        return res.stdout.strip() if res.returncode == 0 else None

    async def _port_ids(self, port: str) -> dict[str, str]:
        rows = await self.ovs.table("Port", ["external_ids"], port)
        return rows[0]["external_ids"] if rows else {}

    async def _ofport(self, device: str) -> int:
        rows = await self.ovs.table("Interface", ["ofport", "error"], device)
        ofport = scalar(rows[0]["ofport"]) if rows else None
        if not isinstance(ofport, int) or ofport < 0:
            err = scalar(rows[0]["error"]) if rows else "no such interface"
            raise NetworkError(f"Open vSwitch could not open {device}: {err}")
        return ofport

    async def _bring_up(self, device: str) -> None:
        # The bridge's internal port appears once vswitchd has reconfigured; ovs-vsctl waited for that.
        for _ in range(50):
            if await nl.get_link(self.netns, device) is not None:
                await nl.set_link(self.netns, device, state="up")
                return
            await asyncio.sleep(0.05)
        raise NetworkError(f"internal port {device} did not appear")

    # ------------------------------------------------------------ bridges

    async def get_bridge(self, name: str) -> BridgeInfo:
        check_ifname(name)
        # One call, three answers, one per line: parent, VLAN tag (0 for a real bridge), then its ports.
        cmds = ["br-to-parent", name, "--", "br-to-vlan", name, "--", "list-ports", name]
        res = await self.ovs.vsctl(*cmds, check=False)
        if res.returncode != 0:
            raise NotFound("bridge", name)
        lines = res.stdout.split()
        parent, vlan, ports = lines[0], int(lines[1]), lines[2:]
        roles = {r["name"]: r["external_ids"].get(ROLE) for r in await self.ovs.table("Port", ["name", "external_ids"])}
        uplink = next((p for p in ports if roles.get(p) == "uplink"), None)
        vifs = sorted(p for p in ports if roles.get(p) != "uplink")
        link = await nl.get_link(self.netns, name)
        mtu = link.mtu if link is not None else 0
        if parent == name:
            return BridgeInfo(name, mtu, uplink, tuple(vifs))
        return BridgeInfo(name, mtu, None, tuple(vifs), vlan, parent)

    async def list_bridges(self) -> list[BridgeInfo]:
        res = await self.ovs.vsctl("list-br")
        return [await self.get_bridge(b) for b in sorted(res.stdout.split())]

    async def _check_uplink(self, uplink: str, bridge: str) -> None:
        link = await nl.must_link(self.netns, uplink)
        owner = await self._iface_bridge(uplink)
        if owner not in (None, bridge) or (owner is None and link.master is not None):
            raise InUse("device", uplink, f"on {owner or link.master}")

    def _uplink_cmds(self, bridge: str, uplink: str) -> list[str]:
        role = ["--", "set", "port", uplink, f"external_ids:{ROLE}=uplink"]
        return ["--", "--may-exist", "add-port", bridge, uplink, *role]

    async def create_bridge(self, spec: BridgeSpec) -> BridgeInfo:
        check_ifname(spec.name)
        check_mtu(spec.mtu)
        if spec.uplink is not None:
            check_ifname(spec.uplink)
            await self._check_uplink(spec.uplink, spec.name)
            await nl.set_link(self.netns, spec.uplink, mtu=spec.mtu, state="up")
        try:
            info: BridgeInfo | None = await self.get_bridge(spec.name)
        except NotFound:
            info = None
        mtu_cmd = ["--", "set", "interface", spec.name, f"mtu_request={spec.mtu}"]
        if info is None:
            if await nl.get_link(self.netns, spec.name) is not None:
                raise AlreadyExists("device", spec.name, "not an Open vSwitch bridge")
            # Pin the bridge MAC (the uplink's, as XenServer does): otherwise OVS follows the
            # lowest port MAC and the host's address changes as VIFs come and go.
            mac = (await nl.must_link(self.netns, spec.uplink)).mac if spec.uplink else random_mac()
            cmd = ["add-br", spec.name, "--", "set", "bridge", spec.name, f"datapath_type={self.datapath_type}"]
            cmd += ["protocols=OpenFlow10,OpenFlow13", f'other_config:hwaddr="{mac}"']
            cmd += mtu_cmd
            if spec.uplink:
                cmd += self._uplink_cmds(spec.name, spec.uplink)
            await self.ovs.vsctl(*cmd)
            await self._bring_up(spec.name)
            return await self.get_bridge(spec.name)
        if info.vlan is not None:
            raise AlreadyExists("bridge", spec.name, "it is a VLAN bridge")
        if spec.uplink is not None and info.uplink not in (None, spec.uplink):
            raise AlreadyExists("bridge", spec.name, f"carries {info.uplink}")
        cmd = mtu_cmd[1:]
        if spec.uplink is not None and info.uplink is None:
            cmd += self._uplink_cmds(spec.name, spec.uplink)
        await self.ovs.vsctl(*cmd)
        if info.uplink is not None:
            await nl.set_link(self.netns, info.uplink, mtu=spec.mtu)
        return await self.get_bridge(spec.name)

    async def destroy_bridge(self, name: str) -> None:
        info = await self.get_bridge(name)
        if info.vlan is not None:
            return await self.destroy_vlan(name)
        children = [b.name for b in await self.list_bridges() if b.parent == name]
        if info.ports or children:
            raise InUse("bridge", name, "still has " + ", ".join([*info.ports, *children]))
        await self.ovs.vsctl("del-br", name)

    # ------------------------------------------------------------ VIFs

    def _tag(self, spec: VifSpec, info: BridgeInfo) -> int | None:
        if info.vlan is not None and spec.vlan not in (None, info.vlan):
            raise InvalidArgument(f"bridge {info.name} is VLAN {info.vlan}; VIF asks for tag {spec.vlan}")
        return info.vlan if info.vlan is not None else spec.vlan

    async def _apply_flows(self, spec: VifSpec, bridge: BridgeInfo) -> None:
        real = bridge.parent or bridge.name
        ofport = await self._ofport(spec.device)
        await self._clear_flows(real, spec.device, ofport)
        meter = ovs_flows.meter(spec, ofport)
        if meter is not None:
            await self.ovs.ofctl("add-meter", real, meter)
        flows = ovs_flows.flows(spec, ofport, ofport)
        if flows:
            await self.ovs.ofctl("add-flows", real, "-", stdin="\n".join(flows) + "\n")
        # no-forward: NORMAL skips the port, so nothing reaches a disabled guest.
        fwd = "no-forward" if spec.locking.effective() == "disabled" else "forward"
        await self.ovs.ofctl("mod-port", real, spec.device, fwd)

    async def _clear_flows(self, real: str, device: str, ofport: int) -> None:
        await self.ovs.ofctl("del-flows", real, f"cookie={ovs_flows.cookie(device):#x}/-1")
        with contextlib.suppress(CommandFailed):  # no meter: nothing to delete
            await self.ovs.ofctl("del-meter", real, f"meter={ofport}")

    async def attach_vif(self, spec: VifSpec) -> VifInfo:
        spec = check_vif(spec)
        info = await self.get_bridge(spec.bridge)
        tag = self._tag(spec, info)
        if spec.device in self._vifs or await self._port_bridge(spec.device) is not None:
            raise AlreadyExists("vif", spec.device)
        link = await nl.get_link(self.netns, spec.device)
        if spec.create_tap:
            if link is not None:
                raise AlreadyExists("device", spec.device)
            await nl.create_tap(self.netns, spec.device)
        elif link is None:
            raise NotFound("device", spec.device)
        elif link.master is not None:
            raise InUse("device", spec.device, f"enslaved to {link.master}")
        try:
            await nl.set_link(self.netns, spec.device, mtu=spec.mtu, state="up")
            cmd = ["add-port", spec.bridge, spec.device]
            if info.vlan is None and spec.vlan is not None:
                cmd.append(f"tag={spec.vlan}")
            cmd += ["--", "set", "port", spec.device, f"external_ids:{ROLE}=vif"]
            cmd.append(f'external_ids:attached-mac="{spec.mac}"')
            if spec.create_tap:
                cmd.append(f"external_ids:{CREATED}=true")
            await self.ovs.vsctl(*cmd)
            await self._apply_flows(spec, info)
        except BaseException:
            await self.ovs.vsctl("--if-exists", "del-port", spec.device, check=False)
            if spec.create_tap:
                await nl.delete_link(self.netns, spec.device)
            raise
        self._vifs[spec.device] = (spec, tag)
        return vif_info(spec, tag)

    async def _attached(self, device: str) -> tuple[str, bool]:
        """(bridge, created by us) of an attached VIF; after a daemon restart, from OVSDB."""
        rec = self._vifs.get(device)
        if rec is not None:
            return rec[0].bridge, rec[0].create_tap
        bridge = await self._port_bridge(device)
        ids = await self._port_ids(device) if bridge is not None else {}
        if bridge is None or ids.get(ROLE) != "vif":
            raise NotFound("vif", device)
        return bridge, ids.get(CREATED) == "true"

    async def move_vif(self, spec: VifSpec) -> VifInfo:
        spec = check_vif(spec)
        old_bridge, created = await self._attached(spec.device)
        info = await self.get_bridge(spec.bridge)
        tag = self._tag(spec, info)
        old = await self.get_bridge(old_bridge)
        with contextlib.suppress(NetworkError):
            await self._clear_flows(old.parent or old.name, spec.device, await self._ofport(spec.device))
        await nl.set_link(self.netns, spec.device, mtu=spec.mtu, state="up")
        # One OVSDB transaction: the port leaves the old bridge and joins the new one, device untouched.
        cmd = ["del-port", spec.device, "--", "add-port", spec.bridge, spec.device]
        if info.vlan is None and spec.vlan is not None:
            cmd.append(f"tag={spec.vlan}")
        cmd += ["--", "set", "port", spec.device, f"external_ids:{ROLE}=vif", f'external_ids:attached-mac="{spec.mac}"']
        if created:
            cmd.append(f"external_ids:{CREATED}=true")
        await self.ovs.vsctl(*cmd)
        await self._apply_flows(spec, info)
        spec = replace(spec, create_tap=created)
        self._vifs[spec.device] = (spec, tag)
        return vif_info(spec, tag)

    async def update_vif(self, spec: VifSpec) -> VifInfo:
        spec = check_vif(spec)
        bridge, created = await self._attached(spec.device)
        if bridge != spec.bridge:
            raise InvalidArgument(f"{spec.device} is on {bridge}: detach and attach to move it")
        info = await self.get_bridge(spec.bridge)
        tag = self._tag(spec, info)
        await nl.set_link(self.netns, spec.device, mtu=spec.mtu)
        if info.vlan is None:
            if spec.vlan is None:
                await self.ovs.vsctl("clear", "port", spec.device, "tag")
            else:
                await self.ovs.vsctl("set", "port", spec.device, f"tag={spec.vlan}")
        await self._apply_flows(spec, info)
        spec = replace(spec, create_tap=created)
        self._vifs[spec.device] = (spec, tag)
        return vif_info(spec, tag)

    async def detach_vif(self, device: str) -> None:
        rec = self._vifs.pop(device, None)
        bridge = await self._port_bridge(device)
        ids: dict[str, str] = {}
        if bridge is None:
            if rec is None:
                raise NotFound("vif", device)
        else:
            ids = await self._port_ids(device)
            if rec is None and ids.get(ROLE) != "vif":
                raise NotFound("vif", device)  # an uplink or someone else's port: not ours to remove
            info = await self.get_bridge(bridge)
            # The device may be gone already (qemu exited): then its port has no flows left to match.
            with contextlib.suppress(NetworkError):
                await self._clear_flows(info.parent or info.name, device, await self._ofport(device))
            await self.ovs.vsctl("--if-exists", "del-port", device)
        created = rec[0].create_tap if rec else ids.get(CREATED) == "true"
        if created and await nl.get_link(self.netns, device) is not None:
            await nl.delete_link(self.netns, device)

    async def get_vif(self, device: str) -> VifInfo:
        rec = self._vifs.get(device)
        if rec is None:
            raise NotFound("vif", device)
        return vif_info(*rec)

    # ------------------------------------------------------------ VLANs (fake bridges)

    async def create_vlan(self, spec: VlanSpec) -> BridgeInfo:
        check_ifname(spec.bridge)
        check_tag(spec.tag)
        parent = await self.get_bridge(spec.parent)
        if parent.vlan is not None:
            raise InvalidArgument(f"{spec.parent} is itself a VLAN bridge")
        for b in await self.list_bridges():
            if b.name == spec.bridge:
                if b.parent == spec.parent and b.vlan == spec.tag:
                    return b
                raise AlreadyExists("bridge", spec.bridge)
            if b.parent == spec.parent and b.vlan == spec.tag:
                raise AlreadyExists("vlan", f"{spec.parent}.{spec.tag}", f"bridge {b.name}")
        if await nl.get_link(self.netns, spec.bridge) is not None:
            raise AlreadyExists("device", spec.bridge)
        mtu = spec.mtu if spec.mtu is not None else parent.mtu
        check_mtu(mtu)
        mtu_cmd = ["set", "interface", spec.bridge, f"mtu_request={mtu}"]
        await self.ovs.vsctl("add-br", spec.bridge, spec.parent, str(spec.tag), "--", *mtu_cmd)
        await self._bring_up(spec.bridge)
        return await self.get_bridge(spec.bridge)

    async def destroy_vlan(self, bridge: str) -> None:
        info = await self.get_bridge(bridge)
        if info.vlan is None:
            raise InvalidArgument(f"{bridge} is not a VLAN bridge")
        if info.ports:
            raise InUse("bridge", bridge, "still has " + ", ".join(info.ports))
        await self.ovs.vsctl("del-br", bridge)

    # ------------------------------------------------------------ bonds

    async def create_bond(self, spec: BondSpec) -> BondInfo:
        check_bond(spec)
        info = await self.get_bridge(spec.bridge)
        if info.vlan is not None:
            raise InvalidArgument(f"{spec.bridge} is a VLAN bridge")
        if info.uplink is not None:
            raise InUse("bridge", spec.bridge, f"already carries {info.uplink}")
        if await self._port_bridge(spec.name) is not None or await nl.get_link(self.netns, spec.name) is not None:
            raise AlreadyExists("bond", spec.name)
        for m in spec.members:
            await self._check_uplink(m, "")
        mtu = spec.mtu or info.mtu
        for m in spec.members:
            await nl.set_link(self.netns, m, mtu=mtu, state="up")
        await self.ovs.vsctl(
            "add-bond", spec.bridge, spec.name, *spec.members, *_BOND_ARGS[spec.mode],
            "--", "set", "port", spec.name, f"external_ids:{ROLE}=uplink", f"external_ids:{BOND_MODE}={spec.mode}",
        )  # fmt: skip
        return BondInfo(spec.name, spec.bridge, tuple(sorted(spec.members)), spec.mode)

    async def destroy_bond(self, name: str) -> None:
        if await self._port_bridge(name) is None or BOND_MODE not in await self._port_ids(name):
            raise NotFound("bond", name)
        await self.ovs.vsctl("del-port", name)

    # ------------------------------------------------------------ host side

    async def list_host_nics(self) -> list[HostNic]:
        nics = await nl.host_nics(self.netns)
        # The kernel does not see OVS ports as enslaved: say which bond, else which bridge, carries each NIC.
        ifaces = {r["_uuid"]: r["name"] for r in await self.ovs.table("Interface", ["_uuid", "name"])}
        owner: dict[str, str] = {}
        for row in await self.ovs.table("Port", ["name", "interfaces"]):
            members = row["interfaces"] if isinstance(row["interfaces"], list) else [row["interfaces"]]
            for uuid in members:
                owner[ifaces.get(uuid, "")] = row["name"]
        out = []
        for n in nics:
            port = owner.get(n.name)
            if port is not None and port == n.name:
                port = await self._port_bridge(port)
            out.append(replace(n, master=n.master or port))
        return out

    async def set_ipv4_address(self, device: str, address: str | None, gateway: str | None = None) -> None:
        try:
            await nl.replace_ipv4(self.netns, device, address, gateway)
        except ValueError as e:
            raise InvalidArgument(str(e)) from e

    async def get_counters(self, device: str) -> Counters:
        return (await nl.must_link(self.netns, device)).counters
