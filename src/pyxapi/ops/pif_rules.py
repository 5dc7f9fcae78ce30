"""xapi's checks on PIFs, shared by PIF, VLAN, Bond and host management messages.

Each raises the error xapi raises for the same situation, with the catalogue's parameters.
"""

from __future__ import annotations

from typing import Any

from pyxapi.context import Context
from pyxapi.db.store import NULL_REF
from pyxapi.model.errors import ApiError


def this_host(ctx: Context, host: str) -> None:
    """pyxapi is one host: another host's work cannot be forwarded anywhere."""
    if host != ctx.host_ref:
        raise ApiError("HOST_OFFLINE", host)


def assert_managed(ctx: Context, pif: str) -> None:
    if not ctx.store.get("PIF", pif)["managed"]:
        raise ApiError("PIF_UNMANAGED", pif)


def assert_network_managed(ctx: Context, network: str) -> None:
    if not ctx.store.get("network", network)["managed"]:
        raise ApiError("NETWORK_UNMANAGED", network)


def assert_not_management(ctx: Context, pif: str) -> None:
    if ctx.store.get("PIF", pif)["management"]:
        raise ApiError("PIF_IS_MANAGEMENT_INTERFACE", pif)


def assert_not_in_bond(ctx: Context, pif: str) -> None:
    rec = ctx.store.get("PIF", pif)
    if (rec["bond_slave_of"] != NULL_REF and ctx.store.exists("Bond", rec["bond_slave_of"])) or rec["bond_master_of"]:
        raise ApiError("PIF_ALREADY_BONDED", pif)


def assert_no_vlans(ctx: Context, pif: str) -> None:
    rec = ctx.store.get("PIF", pif)
    if rec["VLAN_slave_of"] or rec["VLAN"] != -1:
        raise ApiError("PIF_VLAN_STILL_EXISTS", pif)


def assert_no_tunnels(ctx: Context, pif: str) -> None:
    rec = ctx.store.get("PIF", pif)
    if rec["tunnel_transport_PIF_of"] or rec["tunnel_access_PIF_of"]:
        raise ApiError("PIF_TUNNEL_STILL_EXISTS", pif)


def assert_no_other_local_pifs(ctx: Context, host: str, network: str) -> None:
    for pif in ctx.store.get("network", network)["PIFs"]:
        if ctx.store.get("PIF", pif)["host"] == host:
            raise ApiError("NETWORK_ALREADY_CONNECTED", network, pif)


def attached_vifs(ctx: Context, network: str) -> list[str]:
    store = ctx.store
    return [v for v in store.get("network", network)["VIFs"] if store.get("VIF", v)["currently_attached"]]


def assert_network_has_no_vifs_in_use(ctx: Context, network: str) -> None:
    vifs = attached_vifs(ctx, network)
    if vifs:
        raise ApiError("VIF_IN_USE", network, vifs[0])


def assert_unplug_allowed(ctx: Context, pif: str) -> None:
    if ctx.store.get("PIF", pif)["disallow_unplug"]:
        raise ApiError("PIF_DOES_NOT_ALLOW_UNPLUG", pif)


def vlan_pifs_on(ctx: Context, pif: str) -> list[str]:
    """The untagged PIFs of the VLANs whose tagged PIF is ``pif``."""
    store = ctx.store
    return [store.get("VLAN", v)["untagged_PIF"] for v in store.get("PIF", pif)["VLAN_slave_of"]]


def ip_configured(rec: dict[str, Any]) -> bool:
    if rec["primary_address_type"] == "IPv6":
        return bool(rec["ipv6_configuration_mode"] != "None")
    return bool(rec["ip_configuration_mode"] != "None")
