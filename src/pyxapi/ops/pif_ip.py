"""A PIF's IP configuration and properties: reconfigure_ip, reconfigure_ipv6,
set_primary_address_type and set_property, validated as xapi validates them.

An attached PIF gets its new IPv4 configuration on its bridge at once: a static address and
default route, or what a one-shot DHCP request gets (recorded as the PIF's IP, netmask, gateway
and DNS, as xapi records what dhclient got). The driver change comes first, the records after:
a failure leaves both as they were.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pyxapi.api.dispatch import Call, Handler
from pyxapi.db.store import NULL_REF
from pyxapi.drivers.network import base as net
from pyxapi.model.errors import INVALID_VALUE, ApiError
from pyxapi.ops import pif_rules as rules
from pyxapi.ops.pif_realise import apply_ip, config_lock, driver_error

PROPERTIES = {"gro": ("on", "off")}  # the PIF properties xapi knows, with their values


def valid_ip(version: int, text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def assert_valid_ip(version: int, field: str, text: str) -> None:
    if not valid_ip(version, text):
        raise ApiError("INVALID_IP_ADDRESS_SPECIFIED", field)


def assert_valid_netmask(text: str) -> None:
    assert_valid_ip(4, "netmask", text)
    try:
        ipaddress.IPv4Network(f"0.0.0.0/{text}")
    except ValueError:  # not a contiguous mask: no prefix length to configure
        raise ApiError("INVALID_IP_ADDRESS_SPECIFIED", "netmask") from None


def assert_valid_cidr(version: int, field: str, text: str) -> None:
    address, sep, prefix = text.partition("/")
    limit = 32 if version == 4 else 128
    if not sep or not prefix.isdigit() or int(prefix) > limit or not valid_ip(version, address):
        raise ApiError("INVALID_CIDR_ADDRESS_SPECIFIED", field)


def _assert_dns(version: int, dns: str) -> None:
    if dns:
        for address in dns.split(","):
            assert_valid_ip(version, "DNS", address)


async def reconfigure_ip(
    call: Call,
    self: str,
    mode: str,
    IP: str,
    netmask: str,
    gateway: str,
    DNS: str,
) -> None:
    ctx = call.ctx
    rules.assert_managed(ctx, self)
    if mode == "Static":
        assert_valid_ip(4, "IP", IP)
        assert_valid_netmask(netmask)
    for field, value in (("IP", IP), ("netmask", netmask), ("gateway", gateway)):
        if value:
            assert_valid_ip(4, field, value)
    if netmask:
        assert_valid_netmask(netmask)
    _assert_dns(4, DNS)
    rec = ctx.store.get("PIF", self)
    if rec["management"] and mode == "None" and rec["primary_address_type"] == "IPv4":
        raise ApiError("PIF_IS_MANAGEMENT_INTERFACE", self)
    changes = {"ip_configuration_mode": mode, "IP": IP, "netmask": netmask, "gateway": gateway, "DNS": DNS}
    async with config_lock(ctx):
        await _apply(ctx, self, changes)


async def _apply(ctx: Any, pif: str, changes: dict[str, Any]) -> None:
    rec = ctx.store.get("PIF", pif)
    if rec["currently_attached"] and rec["bond_slave_of"] == NULL_REF:
        try:
            changes = changes | await apply_ip(ctx, pif, {**rec, **changes})
        except net.NetworkError as e:
            raise driver_error(pif, e) from None
    ctx.store.update("PIF", pif, changes)


async def reconfigure_ipv6(call: Call, self: str, mode: str, IPv6: str, gateway: str, DNS: str) -> None:
    ctx = call.ctx
    rules.assert_managed(ctx, self)
    if gateway:
        assert_valid_ip(6, "gateway", gateway)
    if IPv6:
        assert_valid_cidr(6, "IPv6", IPv6)
    _assert_dns(6, DNS)
    rec = ctx.store.get("PIF", self)
    if rec["management"] and mode == "None" and rec["primary_address_type"] == "IPv6":
        raise ApiError("PIF_IS_MANAGEMENT_INTERFACE", self)
    changes: dict[str, Any] = {"ipv6_configuration_mode": mode, "ipv6_gateway": gateway, "IPv6": [IPv6] if IPv6 else []}
    if DNS:
        changes["DNS"] = DNS
    # The network drivers configure IPv4 only: the IPv6 configuration is recorded.
    ctx.store.update("PIF", self, changes)


def set_primary_address_type(call: Call, self: str, primary_address_type: str) -> None:
    ctx = call.ctx
    rules.assert_not_management(ctx, self)
    ctx.store.set_field("PIF", self, "primary_address_type", primary_address_type)


def set_property(call: Call, self: str, name: str, value: str) -> None:
    ctx = call.ctx
    store = ctx.store
    if value not in PROPERTIES.get(name, ()):
        raise ApiError(INVALID_VALUE, "properties", f"{name} = {value}")
    rec = store.get("PIF", self)
    # Only bond masters and physical PIFs that are not bond members have properties.
    if not (rec["bond_master_of"] or rec["physical"]) or rec["bond_slave_of"] != NULL_REF:
        raise ApiError("CANNOT_CHANGE_PIF_PROPERTIES", self)
    properties = {**rec["properties"], name: value}
    with store.transaction():
        store.set_field("PIF", self, "properties", properties)
        for bond in rec["bond_master_of"]:  # a bond's members follow it
            for member in store.get("Bond", bond)["slaves"]:
                store.set_field("PIF", member, "properties", properties)


MESSAGES: dict[str, Handler] = {
    "reconfigure_ip": reconfigure_ip,
    "reconfigure_ipv6": reconfigure_ipv6,
    "set_primary_address_type": set_primary_address_type,
    "set_property": set_property,
}
