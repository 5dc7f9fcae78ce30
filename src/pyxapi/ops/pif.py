"""PIF messages: scan, introduce, forget, plug, unplug, the database-only calls, the deprecated ones.

The checks are xapi's (ops/pif_rules.py); bringing a PIF up or down is ops/pif_realise.py.
IP configuration is ops/pif_ip.py.
"""

from __future__ import annotations

from typing import Any

from pyxapi.api.dispatch import Call, Handler
from pyxapi.db.store import NULL_REF
from pyxapi.model.errors import INVALID_VALUE, ApiError
from pyxapi.ops import pif_rules as rules
from pyxapi.ops import vlan
from pyxapi.ops.network_runtime import valid_mac
from pyxapi.ops.pif_realise import bring_down, bring_up, config_lock, pif_kind
from pyxapi.ops.pif_scan import DEFAULT_PROPERTIES, host_nics, introduce_physical, new_metrics, physical_pifs
from pyxapi.ops.pif_scan import scan as scan_nics


async def scan(call: Call, host: str) -> None:
    rules.this_host(call.ctx, host)
    async with config_lock(call.ctx):
        await scan_nics(call.ctx, host)


async def introduce(call: Call, host: str, MAC: str, device: str, managed: bool = True) -> str:
    ctx = call.ctx
    rules.this_host(ctx, host)
    async with config_lock(ctx):
        nics = {n.name: n for n in await host_nics(ctx)}
        mac = MAC.lower() or (nics[device].mac if device in nics else "")
        if not valid_mac(mac):
            raise ApiError("MAC_INVALID", mac)
        if device in physical_pifs(ctx, host):
            raise ApiError("DUPLICATE_PIF_DEVICE_NAME", device)
        nic = nics.get(device)
        if nic is None or nic.mac != mac:
            raise ApiError("COULD_NOT_FIND_NETWORK_INTERFACE_WITH_SPECIFIED_DEVICE_NAME_AND_MAC_ADDRESS", device, mac)
        with ctx.store.transaction():
            return introduce_physical(ctx, host, nic, managed)


async def forget(call: Call, self: str) -> None:
    ctx = call.ctx
    rules.assert_not_management(ctx, self)
    rules.assert_not_in_bond(ctx, self)
    rules.assert_no_vlans(ctx, self)
    rules.assert_no_tunnels(ctx, self)
    async with config_lock(ctx):
        rec = ctx.store.get("PIF", self)
        if rec["managed"] and rec["currently_attached"]:
            await bring_down(ctx, self)
        with ctx.store.transaction():
            if rec["metrics"] != NULL_REF and ctx.store.exists("PIF_metrics", rec["metrics"]):
                ctx.store.destroy("PIF_metrics", rec["metrics"])
            ctx.store.destroy("PIF", self)


async def plug(call: Call, self: str) -> None:
    ctx = call.ctx
    rules.assert_managed(ctx, self)
    rec = ctx.store.get("PIF", self)
    if pif_kind(rec) == "physical" and rec["bond_slave_of"] != NULL_REF:
        raise ApiError("CANNOT_PLUG_BOND_SLAVE", self)
    async with config_lock(ctx):
        await bring_up(ctx, self)


async def unplug(call: Call, self: str) -> None:
    ctx = call.ctx
    rules.assert_managed(ctx, self)
    rules.assert_not_management(ctx, self)
    rec = ctx.store.get("PIF", self)
    on_top = [p for p in rules.vlan_pifs_on(ctx, self) if ctx.store.get("PIF", p)["currently_attached"]]
    for pif in (self, *on_top):
        rules.assert_network_has_no_vifs_in_use(ctx, ctx.store.get("PIF", pif)["network"])
    rules.assert_unplug_allowed(ctx, self)
    if rec["bond_slave_of"] != NULL_REF:
        return  # the bond master carries it: unplugging the master brings it down
    async with config_lock(ctx):
        for pif in on_top:  # a VLAN cannot outlive the carrier of its tagged traffic
            await bring_down(ctx, pif)
        await bring_down(ctx, self)


def db_introduce(
    call: Call,
    device: str,
    network: str,
    host: str,
    MAC: str,
    MTU: int,
    VLAN: int,
    physical: bool,
    ip_configuration_mode: str,
    IP: str,
    netmask: str,
    gateway: str,
    DNS: str,
    bond_slave_of: str,
    VLAN_master_of: str,
    management: bool,
    other_config: dict[str, str],
    disallow_unplug: bool,
    ipv6_configuration_mode: str = "None",
    IPv6: list[str] | None = None,
    ipv6_gateway: str = "",
    primary_address_type: str = "IPv4",
    managed: bool = True,
    properties: dict[str, str] | None = None,
) -> str:
    """A PIF record only, as a joining host's database gets it (nothing is configured)."""
    store = call.ctx.store
    fields: dict[str, Any] = {
        "device": device,
        "device_name": device,
        "network": network,
        "host": host,
        "MAC": MAC,
        "MTU": MTU,
        "VLAN": VLAN,
        "physical": physical,
        "currently_attached": False,
        "ip_configuration_mode": ip_configuration_mode,
        "IP": IP,
        "netmask": netmask,
        "gateway": gateway,
        "DNS": DNS,
        "VLAN_master_of": VLAN_master_of,
        "management": management,
        "other_config": other_config,
        "disallow_unplug": disallow_unplug,
        "ipv6_configuration_mode": ipv6_configuration_mode,
        "IPv6": list(IPv6 or []),
        "ipv6_gateway": ipv6_gateway,
        "primary_address_type": primary_address_type,
        "managed": managed,
        "properties": dict(DEFAULT_PROPERTIES) if properties is None else properties,
    }
    with store.transaction():
        fields["metrics"] = new_metrics(call.ctx)
        return store.create("PIF", fields)


def db_forget(call: Call, self: str) -> None:
    call.ctx.store.destroy("PIF", self)


async def destroy(call: Call, self: str) -> None:
    """Deprecated: VLAN.destroy of the VLAN this PIF is the untagged end of."""
    rec = call.ctx.store.get("PIF", self)
    if rec["VLAN"] < 0:
        raise ApiError("PIF_IS_PHYSICAL", self)
    await vlan.destroy(call, rec["VLAN_master_of"])


async def create_VLAN(call: Call, device: str, network: str, host: str, VLAN: int) -> str:
    """Deprecated: VLAN.create on the host's untagged PIF for ``device``; returns the new PIF."""
    ctx = call.ctx
    rules.this_host(ctx, host)
    base = [
        ref
        for ref in ctx.store.get("host", host)["PIFs"]
        if ctx.store.get("PIF", ref)["device"] == device and ctx.store.get("PIF", ref)["VLAN"] == -1
    ]
    if not base:
        raise ApiError(INVALID_VALUE, "device", device)
    created = await vlan.create(call, base[0], VLAN, network)
    return str(ctx.store.get("VLAN", created)["untagged_PIF"])


MESSAGES: dict[str, Handler] = {
    "scan": scan,
    "introduce": introduce,
    "forget": forget,
    "plug": plug,
    "unplug": unplug,
    "db_introduce": db_introduce,
    "pool_introduce": db_introduce,
    "db_forget": db_forget,
    "destroy": destroy,
    "create_VLAN": create_VLAN,
}
