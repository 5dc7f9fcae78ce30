"""PIFs made real on this host: a PIF's bridge (with its NIC, VLAN or bond) brought up or down.

This is what xapi's network manager (Nm.bring_pif_up/down) does for it: the ops modules check
the XenAPI rules first, these functions ask the network driver and record currently_attached.
Driver failures become PIF_CONFIGURATION_ERROR, as xapi turns networkd failures into it.

Host NICs are only reconfigured where that cannot hurt the machine: inside the daemon's own
network namespace (--netns), in the simulator, or when the operator allows it explicitly
(Config.manage_host_nics, `--manage-host-nics`). Otherwise the host's real uplink is left alone.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import TYPE_CHECKING, Any

from pyxapi.context import Context
from pyxapi.db.store import NULL_REF
from pyxapi.drivers.network import base as net
from pyxapi.drivers.network.dhcp_client import request_lease
from pyxapi.model.errors import OPERATION_NOT_ALLOWED, ApiError

if TYPE_CHECKING:
    from pyxapi.ops.network_runtime import NetworkRuntime

log = logging.getLogger(__name__)

LOCK_KEY = "network_config_lock"


def runtime(ctx: Context) -> NetworkRuntime:
    return ctx.services["network"]  # type: ignore[no-any-return]


def driver(ctx: Context) -> net.NetworkDriver:
    return runtime(ctx).driver


def config_lock(ctx: Context) -> asyncio.Lock:
    """One host network change at a time (checks, driver steps and records stay consistent)."""
    lock = ctx.services.get(LOCK_KEY)
    if lock is None:
        lock = ctx.services[LOCK_KEY] = asyncio.Lock()
    return lock  # type: ignore[no-any-return]


def host_nics_sandboxed(ctx: Context) -> bool:
    """Host NICs the driver sees cannot be the machine's own uplink: a namespace, or the simulator."""
    return ctx.config.netns is not None or ctx.config.network == "sim"


def may_manage_host_nics(ctx: Context) -> bool:
    return host_nics_sandboxed(ctx) or ctx.config.manage_host_nics


def guard_host_nic(ctx: Context, device: str) -> None:
    if not may_manage_host_nics(ctx):
        raise ApiError(
            OPERATION_NOT_ALLOWED,
            f"pyxapi does not reconfigure the host's own NIC {device} outside a network namespace "
            "(serve with --netns, or with --manage-host-nics to allow it)",
        )


def driver_error(pif: str, e: net.NetworkError) -> ApiError:
    if isinstance(e, net.NotSupported) and e.feature in (net.Capability.VLAN.value, net.Capability.BOND.value):
        return ApiError("OPENVSWITCH_NOT_ACTIVE")
    return ApiError("PIF_CONFIGURATION_ERROR", pif, str(e))


def require_capability(ctx: Context, cap: net.Capability) -> None:
    """VLANs and bonds need a backend that has them; on this project's hosts that is Open vSwitch."""
    if cap not in driver(ctx).capabilities:
        raise ApiError("OPENVSWITCH_NOT_ACTIVE")


# ------------------------------------------------------------ PIF topology


def pif_kind(rec: dict[str, Any]) -> str:
    """xapi's PIF types, the ones pyxapi has: vlan, bond (master), physical, other."""
    if rec["VLAN_master_of"] != NULL_REF:
        return "vlan"
    if rec["bond_master_of"]:
        return "bond"
    if rec["physical"]:
        return "physical"
    return "other"


def bridge_of(ctx: Context, pif: str) -> str:
    return str(ctx.store.get("network", ctx.store.get("PIF", pif)["network"])["bridge"])


def prefix_of(netmask: str) -> int:
    return ipaddress.IPv4Network(f"0.0.0.0/{netmask}").prefixlen


# ------------------------------------------------------------ bring up / down


async def bring_up(ctx: Context, pif: str) -> None:
    """Make the PIF's bridge carry its NIC, VLAN or bond, with its IP configuration."""
    store = ctx.store
    rec = store.get("PIF", pif)
    network = store.get("network", rec["network"])
    bridge, mtu = network["bridge"], network["MTU"]
    drv = driver(ctx)
    kind = pif_kind(rec)
    try:
        if kind == "vlan":
            tagged = store.get("VLAN", rec["VLAN_master_of"])["tagged_PIF"]
            if not store.get("PIF", tagged)["currently_attached"]:
                await bring_up(ctx, tagged)  # the tagged traffic needs its carrier first
            await _drop_plain_bridge(ctx, pif, bridge)
            await drv.create_vlan(net.VlanSpec(bridge, bridge_of(ctx, tagged), rec["VLAN"], mtu))
        elif kind == "bond":
            bond = store.get("Bond", rec["bond_master_of"][0])
            members = tuple(store.get("PIF", m)["device"] for m in bond["slaves"])
            for device in members:
                guard_host_nic(ctx, device)
            info = await drv.create_bridge(net.BridgeSpec(bridge, mtu))
            if info.uplink != rec["device"]:
                await drv.create_bond(net.BondSpec(rec["device"], bridge, members, bond["mode"], mtu))
        elif kind == "physical":
            guard_host_nic(ctx, rec["device"])
            await drv.create_bridge(net.BridgeSpec(bridge, mtu, uplink=rec["device"]))
            if rec["ip_configuration_mode"] != "None":
                await drv.set_ipv4_address(rec["device"], None)  # the address moves to the bridge
        else:
            raise ApiError("PIF_CONFIGURATION_ERROR", pif, "pyxapi cannot realise this kind of PIF")
        learned = await apply_ip(ctx, pif)
    except net.NetworkError as e:
        raise driver_error(pif, e) from None
    with store.transaction():
        store.update("PIF", pif, {"currently_attached": True, "MTU": mtu, **learned})
        if kind == "bond":
            for member in store.get("Bond", rec["bond_master_of"][0])["slaves"]:
                store.set_field("PIF", member, "currently_attached", True)


async def _drop_plain_bridge(ctx: Context, pif: str, bridge: str) -> None:
    """A network used host-internally so far becomes a VLAN network: its empty bridge goes."""
    try:
        info = await driver(ctx).get_bridge(bridge)
    except net.NotFound:
        return
    if info.vlan is not None:
        return
    if info.ports:
        raise ApiError("PIF_CONFIGURATION_ERROR", pif, f"bridge {bridge} still carries {', '.join(info.ports)}")
    await runtime(ctx).release(bridge)


async def bring_down(ctx: Context, pif: str) -> None:
    """Take the PIF's bridge (and what it carries) away; currently_attached becomes false."""
    store = ctx.store
    rec = store.get("PIF", pif)
    bridge = bridge_of(ctx, pif)
    kind = pif_kind(rec)
    drv = driver(ctx)
    try:
        if kind == "vlan":
            await drv.destroy_vlan(bridge)
        elif kind in ("bond", "physical"):
            if kind == "physical":
                guard_host_nic(ctx, rec["device"])
            await drv.destroy_bridge(bridge)
    except net.NotFound:
        pass  # already gone (a daemon restart on the simulator, or removed by hand)
    except net.NetworkError as e:
        raise driver_error(pif, e) from None
    with store.transaction():
        store.set_field("PIF", pif, "currently_attached", False)
        if kind == "bond":
            for member in store.get("Bond", rec["bond_master_of"][0])["slaves"]:
                store.set_field("PIF", member, "currently_attached", False)


async def apply_ip(ctx: Context, pif: str, rec: dict[str, Any] | None = None) -> dict[str, str]:
    """The PIF's IPv4 configuration (``rec``, or its record) on its bridge. For DHCP, returns the
    address fields the lease gave (xapi records them as the PIF's IP, netmask, gateway, DNS)."""
    rec = rec or ctx.store.get("PIF", pif)
    bridge = bridge_of(ctx, pif)
    drv = driver(ctx)
    if rec["physical"] or rec["bond_master_of"]:
        guard_host_nic(ctx, rec["device"])
    if rec["ip_configuration_mode"] == "Static":
        address = f"{rec['IP']}/{prefix_of(rec['netmask'])}"
        await drv.set_ipv4_address(bridge, address, rec["gateway"] or None)
        return {}
    await drv.set_ipv4_address(bridge, None)
    if rec["ip_configuration_mode"] != "DHCP" or drv.name == "sim":
        return {}  # the simulator has no wire for a DHCP server to answer on
    rt = runtime(ctx)
    lease = await request_lease(bridge, rt.run_dir / "dhcp-client", rt.netns)
    if lease is None:
        log.warning("PIF %s: no DHCP offer on %s; it stays without an address", pif, bridge)
        return {"IP": "", "netmask": "", "gateway": ""}
    await drv.set_ipv4_address(bridge, lease.cidr, lease.router or None)
    fields = {"IP": lease.ip, "netmask": lease.netmask, "gateway": lease.router}
    return fields | ({"DNS": ",".join(lease.dns)} if lease.dns else {})
