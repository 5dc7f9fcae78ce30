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
from pyxapi.drivers.network.dhcp_client import ClientLease, request_lease
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
    runtime(ctx).keep_lease(pif, None)
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
    runtime(ctx).keep_lease(pif, None)  # whatever the new configuration, the old lease is let go
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
    rt.keep_lease(pif, keep_lease(ctx, pif, bridge, lease))
    if lease is None:
        log.warning("PIF %s: no DHCP offer on %s; it stays without an address for now", pif, bridge)
        return lease_fields(None)
    await drv.set_ipv4_address(bridge, lease.cidr, lease.router or None)
    return lease_fields(lease)


def lease_fields(lease: ClientLease | None) -> dict[str, str]:
    """What xapi records of a DHCP lease on the PIF: its IP, netmask, gateway and DNS."""
    if lease is None:
        return {"IP": "", "netmask": "", "gateway": ""}
    fields = {"IP": lease.ip, "netmask": lease.netmask, "gateway": lease.router}
    return fields | ({"DNS": ",".join(lease.dns)} if lease.dns else {})


# ------------------------------------------------------------ keeping a DHCP lease

RENEW_MIN_SECONDS = 2.0
"""Never ask a DHCP server more often than this, however short its leases."""

RETRY_MAX_SECONDS = 60.0
"""Without a lease, ask again at most this long after the last try."""


async def keep_lease(ctx: Context, pif: str, bridge: str, lease: ClientLease | None) -> None:
    """A DHCP client's life after the first lease, as dhclient does it for xapi: renew at half the
    lease time (T1), retry at half the time left while the server is silent, take the address
    away when the lease runs out, and keep asking, so that a server that comes back (or one
    that answers only later) gives the PIF an address again. An address the server changes is
    applied to the bridge and recorded on the PIF. Stops when the PIF is no longer a plugged
    DHCP PIF on this bridge; the network runtime cancels it when the PIF is reconfigured."""
    rt = runtime(ctx)
    loop = asyncio.get_running_loop()
    held, expires = lease, loop.time() + (lease.seconds if lease else 0)
    period = min(RETRY_MAX_SECONDS, lease.seconds / 2) if lease else RETRY_MAX_SECONDS
    wait = period
    while True:
        await asyncio.sleep(max(RENEW_MIN_SECONDS, wait))
        try:
            requested = held.ip if held is not None else None
            offer = await request_lease(bridge, rt.run_dir / "dhcp-client", rt.netns, requested=requested)
            now = loop.time()
            if offer is not None:
                if not await _record_lease(ctx, pif, bridge, offer):
                    return
                held, expires = offer, now + offer.seconds
                wait = offer.seconds / 2  # T1
                period = min(RETRY_MAX_SECONDS, wait)
            elif held is not None and now >= expires:
                log.warning("PIF %s: the DHCP lease of %s ran out on %s", pif, held.ip, bridge)
                if not await _record_lease(ctx, pif, bridge, None):
                    return
                held, wait = None, period
            else:
                wait = (expires - now) / 2 if held is not None else period
        except net.NetworkError as e:
            log.warning("PIF %s: keeping the DHCP lease on %s: %s", pif, bridge, e)
            wait = period


async def _record_lease(ctx: Context, pif: str, bridge: str, lease: ClientLease | None) -> bool:
    """Apply a renewed (or lost) lease if it changes anything; False when the PIF is no longer a
    plugged DHCP PIF on `bridge` (then nothing is touched)."""
    async with config_lock(ctx):
        rec = ctx.store.find("PIF", pif)
        if rec is None or rec["ip_configuration_mode"] != "DHCP" or not rec["currently_attached"]:
            return False
        if bridge_of(ctx, pif) != bridge:
            return False
        fields = lease_fields(lease)
        if all(rec[k] == v for k, v in fields.items()):
            return True  # renewed as it was
        if lease is None:
            await driver(ctx).set_ipv4_address(bridge, None)
        else:
            await driver(ctx).set_ipv4_address(bridge, lease.cidr, lease.router or None)
        ctx.store.update("PIF", pif, fields)
        log.info("PIF %s: DHCP address on %s is now %s", pif, bridge, lease.cidr if lease else "none")
        return True
