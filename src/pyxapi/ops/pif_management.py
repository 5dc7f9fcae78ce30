"""The management interface: host.management_reconfigure/disable, get_management_interface,
pool.management_reconfigure.

The management flag says which PIF the host is administered through; moving it brings the new
PIF up and points host.address at its IPv4 address. The daemon keeps serving where it was told
to listen (--host): pyxapi never rebinds its API socket behind an operator's back.
"""

from __future__ import annotations

from pyxapi.api.dispatch import Call, Handler
from pyxapi.context import Context
from pyxapi.db.store import NULL_REF
from pyxapi.model.errors import INTERNAL_ERROR, ApiError
from pyxapi.ops import pif_rules as rules
from pyxapi.ops.network_setup import attach_network
from pyxapi.ops.pif_realise import config_lock


def management_pif(ctx: Context, host: str) -> str | None:
    for ref in ctx.store.get("host", host)["PIFs"]:
        if ctx.store.get("PIF", ref)["management"]:
            return ref
    return None


def _assert_usable_for_management(ctx: Context, pif: str) -> None:
    rec = ctx.store.get("PIF", pif)
    if rec["bond_slave_of"] != NULL_REF:
        raise ApiError("CANNOT_PLUG_BOND_SLAVE", pif)
    if rec["primary_address_type"] == "IPv4" and rec["ip_configuration_mode"] == "None":
        raise ApiError("PIF_HAS_NO_NETWORK_CONFIGURATION", pif)
    if rec["primary_address_type"] == "IPv6" and rec["ipv6_configuration_mode"] == "None":
        raise ApiError("PIF_HAS_NO_V6_NETWORK_CONFIGURATION", pif)
    current = management_pif(ctx, rec["host"])
    if current is not None and ctx.store.get("PIF", current)["primary_address_type"] != rec["primary_address_type"]:
        raise ApiError("PIF_INCOMPATIBLE_PRIMARY_ADDRESS_TYPE", pif)


async def management_reconfigure(call: Call, pif: str) -> None:
    ctx = call.ctx
    store = ctx.store
    rec = store.get("PIF", pif)
    rules.this_host(ctx, rec["host"])
    if rec["managed"]:
        _assert_usable_for_management(ctx, pif)
    if rec["management"]:
        return  # already the management interface: nothing to do, as in xapi
    async with config_lock(ctx):
        if rec["managed"]:  # an unmanaged one is configured by other means (xapi only logs it)
            await attach_network(ctx, rec["network"], force=True)
        with store.transaction():
            for other in store.get("host", rec["host"])["PIFs"]:
                if other != pif and store.get("PIF", other)["management"]:
                    store.set_field("PIF", other, "management", False)
            store.set_field("PIF", pif, "management", True)
            address = store.get("PIF", pif)["IP"]
            if address:
                store.set_field("host", rec["host"], "address", address)


def management_disable(call: Call) -> None:
    ctx = call.ctx
    with ctx.store.transaction():
        for pif in ctx.store.get("host", ctx.host_ref)["PIFs"]:
            if ctx.store.get("PIF", pif)["management"]:
                ctx.store.set_field("PIF", pif, "management", False)


def get_management_interface(call: Call, host: str) -> str:
    pif = management_pif(call.ctx, host)
    if pif is None:
        raise ApiError(INTERNAL_ERROR, "Not_found")  # what xapi answers for a host without one
    return pif


def local_management_reconfigure(call: Call, interface: str) -> None:
    """Only for a pool member cut off from its coordinator; a lone host never is."""
    raise ApiError("NOT_IN_EMERGENCY_MODE")


async def pool_management_reconfigure(call: Call, network: str) -> None:
    ctx = call.ctx
    store = ctx.store
    for host in store.refs("host"):
        if not any(store.get("PIF", p)["host"] == host for p in store.get("network", network)["PIFs"]):
            raise ApiError("PIF_NOT_PRESENT", host, network)
    for pif in list(store.get("network", network)["PIFs"]):
        await management_reconfigure(call, pif)


HOST_MESSAGES: dict[str, Handler] = {
    "management_reconfigure": management_reconfigure,
    "management_disable": management_disable,
    "get_management_interface": get_management_interface,
    "local_management_reconfigure": local_management_reconfigure,
}
POOL_MESSAGES: dict[str, Handler] = {"management_reconfigure": pool_management_reconfigure}
