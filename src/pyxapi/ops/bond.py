"""Bond.create/destroy/set_mode/set_property with xapi's checks, errors and moves.

Creating a bond takes its members' bridges down, makes the bond master PIF (device bond<N>) on
the bond's network and brings it up: the driver makes the bond (OVS bond port, or Linux bonding)
the uplink of that network's bridge. As in xapi the primary member's IP configuration and the
management role move to the master, VLANs on the members move onto it, and halted VMs' VIFs
move to the bond's network; destroying does the reverse. VIFs of running VMs are not moved:
the bond is refused with VIF_IN_USE while the members' networks carry attached VIFs.
"""

from __future__ import annotations

import contextlib
from typing import Any

from pyxapi.api.dispatch import Call, Handler
from pyxapi.context import Context
from pyxapi.db.store import NULL_REF
from pyxapi.drivers.network import base as net
from pyxapi.drivers.network.base import Capability
from pyxapi.model.errors import INVALID_VALUE, ApiError
from pyxapi.ops import pif_rules as rules
from pyxapi.ops.network_runtime import valid_mac
from pyxapi.ops.pif_realise import (
    bring_down,
    bring_up,
    config_lock,
    driver,
    driver_error,
    pif_kind,
    require_capability,
)
from pyxapi.ops.pif_scan import new_metrics

IP_FIELDS = ("ip_configuration_mode", "IP", "netmask", "gateway", "DNS")
IP_CLEARED = {"ip_configuration_mode": "None", "IP": "", "netmask": "", "gateway": "", "DNS": ""}

# LACP's tunables with their allowed values and defaults (None: no default); other modes have none.
LACP_PROPERTIES: dict[str, tuple[Any, str | None]] = {
    "hashing_algorithm": (("src_mac", "tcpudp_ports"), "tcpudp_ports"),
    "lacp-time": (("fast", "slow"), "slow"),
    "lacp-aggregation-key": ("int", None),
    "lacp-fallback-ab": (("true", "false"), "true"),
}


def _requirements(mode: str) -> dict[str, tuple[Any, str | None]]:
    return LACP_PROPERTIES if mode == "lacp" else {}


def _valid_property(mode: str, name: str, value: str) -> bool:
    req = _requirements(mode).get(name)
    if req is None:
        return False
    allowed = req[0]
    if allowed == "int":
        return value.lstrip("-").isdigit()
    return value in allowed


def check_property(mode: str, name: str, value: str) -> None:
    if not _valid_property(mode, name, value):
        raise ApiError(INVALID_VALUE, "properties", f"{name} = {value}")


def with_defaults(mode: str, properties: dict[str, str]) -> dict[str, str]:
    out = dict(properties)
    for name, (_, default) in _requirements(mode).items():
        if default is not None:
            out.setdefault(name, default)
    return out


def choose_device(ctx: Context, host: str) -> str:
    taken = {ctx.store.get("PIF", p)["device"] for p in ctx.store.get("host", host)["PIFs"]}
    n = 0
    while f"bond{n}" in taken:
        n += 1
    return f"bond{n}"


def _primary_member(ctx: Context, members: list[str]) -> str:
    store = ctx.store
    for pif in members:
        if store.get("PIF", pif)["management"]:
            return pif
    for pif in members:
        if rules.ip_configured(store.get("PIF", pif)):
            return pif
    return members[0]


def _check_members(ctx: Context, members: list[str]) -> None:
    store = ctx.store
    for pif in members:
        rules.assert_managed(ctx, pif)
        rec = store.get("PIF", pif)
        if rec["bond_slave_of"] != NULL_REF or rec["bond_master_of"]:
            raise ApiError("PIF_ALREADY_BONDED", pif)
        if pif_kind(rec) == "vlan":
            raise ApiError("PIF_VLAN_EXISTS", rec["device_name"])
        if rec["tunnel_access_PIF_of"]:
            raise ApiError("IS_TUNNEL_ACCESS_PIF", pif)
    if len({store.get("PIF", p)["host"] for p in members}) != 1:
        raise ApiError("PIF_CANNOT_BOND_CROSS_HOST")
    if len(members) < 2:
        raise ApiError("PIF_BOND_NEEDS_MORE_MEMBERS")
    properties = [store.get("PIF", p)["properties"] for p in members]
    if any(p != properties[0] for p in properties):
        raise ApiError("INCOMPATIBLE_PIF_PROPERTIES")
    if sum(1 for p in members if rules.ip_configured(store.get("PIF", p))) > 1:
        raise ApiError("PIF_BOND_MORE_THAN_ONE_IP")


def _vlans_on(ctx: Context, pifs: list[str]) -> list[str]:
    return [v for p in pifs for v in ctx.store.get("PIF", p)["VLAN_slave_of"]]


def _vlan_networks(ctx: Context, vlans: list[str]) -> list[str]:
    return [ctx.store.get("PIF", ctx.store.get("VLAN", v)["untagged_PIF"])["network"] for v in vlans]


def _assert_movable(ctx: Context, networks: list[str]) -> None:
    """VIFs of running guests would need a live move: refused (see the module's docstring)."""
    for network in networks:
        rules.assert_network_has_no_vifs_in_use(ctx, network)


async def create(
    call: Call,
    network: str,
    members: list[str],
    MAC: str,
    mode: str = "balance-slb",
    properties: dict[str, str] | None = None,
) -> str:
    ctx = call.ctx
    store = ctx.store
    rules.assert_network_managed(ctx, network)
    if not members:
        raise ApiError("PIF_BOND_NEEDS_MORE_MEMBERS")
    host = store.get("PIF", members[0])["host"]
    rules.assert_no_other_local_pifs(ctx, host, network)
    if MAC and not valid_mac(MAC):
        raise ApiError("MAC_INVALID", MAC)
    for name, value in (properties or {}).items():
        check_property(mode, name, value)
    props = with_defaults(mode, properties or {})
    members = list(dict.fromkeys(members))  # a PIF given twice counts once
    async with config_lock(ctx):
        _check_members(ctx, members)
        primary = _primary_member(ctx, members)
        address_type = store.get("PIF", primary)["primary_address_type"]
        for pif in members:
            if store.get("PIF", pif)["primary_address_type"] != address_type:
                raise ApiError("PIF_INCOMPATIBLE_PRIMARY_ADDRESS_TYPE", pif)
        rules.this_host(ctx, host)
        require_capability(ctx, Capability.BOND)
        vlans = _vlans_on(ctx, members)
        moved_networks = [store.get("PIF", p)["network"] for p in members]
        _assert_movable(ctx, moved_networks + _vlan_networks(ctx, vlans))
        return await _create(ctx, host, network, members, primary, MAC, mode, props, vlans)


async def _create(
    ctx: Context,
    host: str,
    network: str,
    members: list[str],
    primary: str,
    mac: str,
    mode: str,
    props: dict[str, str],
    vlans: list[str],
) -> str:
    store = ctx.store
    prim = store.get("PIF", primary)
    plugged_vlans = [v for v in vlans if store.get("PIF", store.get("VLAN", v)["untagged_PIF"])["currently_attached"]]
    for v in plugged_vlans:
        await bring_down(ctx, store.get("VLAN", v)["untagged_PIF"])
    for pif in members:
        if store.get("PIF", pif)["currently_attached"]:
            await bring_down(ctx, pif)
    with store.transaction():
        master = store.create(
            "PIF",
            {
                "device": choose_device(ctx, host),
                "network": network,
                "host": host,
                "MAC": mac or prim["MAC"],
                "MTU": store.get("network", network)["MTU"],
                "VLAN": -1,
                "metrics": new_metrics(ctx),
                "physical": False,
                "currently_attached": False,
                "managed": True,
                "primary_address_type": prim["primary_address_type"],
                "properties": dict(prim["properties"]),
                **{f: prim[f] for f in IP_FIELDS},
            },
        )
        store.set_field("PIF", master, "device_name", store.get("PIF", master)["device"])
        bond = store.create(
            "Bond",
            {"master": master, "primary_slave": primary, "mode": mode, "properties": props, "auto_update_mac": not mac},
        )
        for pif in members:
            store.update("PIF", pif, {"bond_slave_of": bond, **IP_CLEARED})
        if any(store.get("PIF", p)["disallow_unplug"] for p in members):
            store.set_field("PIF", master, "disallow_unplug", True)
            for pif in members:
                store.set_field("PIF", pif, "disallow_unplug", False)
        _move_management(ctx, members, master)
        _move_vlans_and_vifs(ctx, vlans, master, [store.get("PIF", p)["network"] for p in members], network)
    try:
        await bring_up(ctx, master)
        for v in plugged_vlans:
            await bring_up(ctx, store.get("VLAN", v)["untagged_PIF"])
    except BaseException:
        await _undo_create(ctx, bond, members, plugged_vlans)
        raise
    _links_up(ctx, bond)
    return bond


async def _undo_create(ctx: Context, bond: str, members: list[str], plugged_vlans: list[str]) -> None:
    """The bond could not be made: records back as they were, members up again (best effort)."""
    with contextlib.suppress(ApiError):  # the master may never have come up
        await _dismantle(ctx, bond)
    for pif in members:
        with contextlib.suppress(ApiError):
            await bring_up(ctx, pif)
    for v in plugged_vlans:
        with contextlib.suppress(ApiError):
            await bring_up(ctx, ctx.store.get("VLAN", v)["untagged_PIF"])


def _move_management(ctx: Context, from_pifs: list[str], to_pif: str) -> None:
    store = ctx.store
    for pif in from_pifs:
        if store.get("PIF", pif)["management"]:
            store.set_field("PIF", pif, "management", False)
            store.set_field("PIF", to_pif, "management", True)


def _move_vlans_and_vifs(
    ctx: Context, vlans: list[str], to_pif: str, from_networks: list[str], to_network: str
) -> None:
    store = ctx.store
    for v in vlans:  # the VLAN's untagged PIF and network stay; its carrier changes
        store.set_field("VLAN", v, "tagged_PIF", to_pif)
        store.set_field("PIF", store.get("VLAN", v)["untagged_PIF"], "device", store.get("PIF", to_pif)["device"])
    for network in from_networks:
        for vif in list(store.get("network", network)["VIFs"]):
            if not store.get("VIF", vif)["currently_attached"]:
                store.set_field("VIF", vif, "network", to_network)


def _links_up(ctx: Context, bond: str) -> None:
    store = ctx.store
    up = 0
    for pif in store.get("Bond", bond)["slaves"]:
        metrics = store.get("PIF", pif)["metrics"]
        if metrics != NULL_REF and store.exists("PIF_metrics", metrics):
            up += 1 if store.get("PIF_metrics", metrics)["carrier"] else 0
    store.set_field("Bond", bond, "links_up", up)


async def _dismantle(ctx: Context, bond: str) -> list[str]:
    """Master down, configuration and roles back to the primary member, Bond and master gone.
    Returns the VLANs that were up on the master (now on the primary member, down)."""
    store = ctx.store
    rec = store.get("Bond", bond)
    master = rec["master"]
    members = list(rec["slaves"])
    primary = rec["primary_slave"] if rec["primary_slave"] in members else members[0]
    mrec = store.get("PIF", master)
    vlans = list(mrec["VLAN_slave_of"])
    plugged = [v for v in vlans if store.get("PIF", store.get("VLAN", v)["untagged_PIF"])["currently_attached"]]
    for v in plugged:
        await bring_down(ctx, store.get("VLAN", v)["untagged_PIF"])
    await bring_down(ctx, master)
    with store.transaction():
        store.update("PIF", primary, {f: mrec[f] for f in IP_FIELDS})
        if mrec["disallow_unplug"]:
            store.set_field("PIF", primary, "disallow_unplug", True)
        _move_management(ctx, [master], primary)
        _move_vlans_and_vifs(ctx, vlans, primary, [mrec["network"]], store.get("PIF", primary)["network"])
        for pif in members:
            store.set_field("PIF", pif, "bond_slave_of", NULL_REF)
        store.destroy("Bond", bond)
        if mrec["metrics"] != NULL_REF and store.exists("PIF_metrics", mrec["metrics"]):
            store.destroy("PIF_metrics", mrec["metrics"])
        store.destroy("PIF", master)
    return plugged


async def destroy(call: Call, self: str) -> None:
    ctx = call.ctx
    store = ctx.store
    async with config_lock(ctx):
        rec = store.get("Bond", self)
        master = store.get("PIF", rec["master"])
        _assert_movable(ctx, [master["network"], *_vlan_networks(ctx, master["VLAN_slave_of"])])
        was_plugged = master["currently_attached"]
        members = list(rec["slaves"])
        replug_vlans = await _dismantle(ctx, self)
        if was_plugged:
            for pif in members:
                await bring_up(ctx, pif)
            for v in replug_vlans:
                await bring_up(ctx, store.get("VLAN", v)["untagged_PIF"])


async def set_mode(call: Call, self: str, value: str) -> None:
    ctx = call.ctx
    store = ctx.store
    async with config_lock(ctx):
        rec = store.get("Bond", self)
        props = {k: v for k, v in rec["properties"].items() if _valid_property(value, k, v)}
        master = rec["master"]
        if store.get("PIF", master)["currently_attached"] and value != rec["mode"]:
            # The bond is made again in the new mode; the bridge, its VIFs and VLANs stay.
            try:
                await driver(ctx).destroy_bond(store.get("PIF", master)["device"])
            except net.NotFound:
                pass
            except net.NetworkError as e:
                raise driver_error(master, e) from None
            store.set_field("Bond", self, "mode", value)
            try:
                await bring_up(ctx, master)
            except BaseException:
                store.set_field("Bond", self, "mode", rec["mode"])
                await bring_up(ctx, master)
                raise
        store.update("Bond", self, {"mode": value, "properties": with_defaults(value, props)})


def set_property(call: Call, self: str, name: str, value: str) -> None:
    store = call.ctx.store
    rec = store.get("Bond", self)
    check_property(rec["mode"], name, value)
    store.set_field("Bond", self, "properties", {**rec["properties"], name: value})


MESSAGES: dict[str, Handler] = {
    "create": create,
    "destroy": destroy,
    "set_mode": set_mode,
    "set_property": set_property,
}
