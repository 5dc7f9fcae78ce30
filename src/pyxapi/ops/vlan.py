"""VLAN.create/destroy and the pool-wide VLAN calls, with xapi's checks and errors.

A VLAN is an untagged PIF on the VLAN's network, carried by the tagged PIF: on this host the
network's bridge becomes a VLAN bridge on the tagged PIF's bridge (an Open vSwitch fake bridge,
or an 802.1q device where the kernel has them). Backends without VLANs answer
OPENVSWITCH_NOT_ACTIVE, the error xapi gives for what needs the Open vSwitch backend.
"""

from __future__ import annotations

from pyxapi.api.dispatch import Call, Handler
from pyxapi.db.store import NULL_REF
from pyxapi.drivers.network.base import Capability
from pyxapi.model.errors import INVALID_VALUE, ApiError
from pyxapi.ops import pif_rules as rules
from pyxapi.ops.pif_realise import bring_down, bring_up, config_lock, pif_kind, require_capability

VLAN_MAC = "fe:ff:ff:ff:ff:ff"  # xapi's placeholder MAC on untagged VLAN PIFs


def _check_create(call: Call, tagged_PIF: str, tag: int, network: str) -> None:
    ctx = call.ctx
    store = ctx.store
    rules.assert_network_managed(ctx, network)
    rec = store.get("PIF", tagged_PIF)
    rules.assert_no_other_local_pifs(ctx, rec["host"], network)
    rules.assert_managed(ctx, tagged_PIF)
    if rec["bond_slave_of"] != NULL_REF:
        raise ApiError("CANNOT_ADD_VLAN_TO_BOND_SLAVE", tagged_PIF)
    if pif_kind(rec) == "vlan":
        raise ApiError("PIF_IS_VLAN", tagged_PIF)
    if rec["tunnel_access_PIF_of"]:
        raise ApiError("IS_TUNNEL_ACCESS_PIF", tagged_PIF)
    if not 0 <= tag <= 4094:  # 4095 is reserved by 802.1Q
        raise ApiError("VLAN_TAG_INVALID", tag)
    if any(store.get("VLAN", v)["tag"] == tag for v in rec["VLAN_slave_of"]):
        raise ApiError("PIF_VLAN_EXISTS", rec["device"])
    rules.this_host(ctx, rec["host"])
    require_capability(ctx, Capability.VLAN)


async def create(call: Call, tagged_PIF: str, tag: int, network: str) -> str:
    ctx = call.ctx
    store = ctx.store
    async with config_lock(ctx):
        _check_create(call, tagged_PIF, tag, network)
        base = store.get("PIF", tagged_PIF)
        with store.transaction():
            untagged = store.create(
                "PIF",
                {
                    "device": base["device"],
                    "device_name": base["device"],
                    "network": network,
                    "host": base["host"],
                    "MAC": VLAN_MAC,
                    "MTU": base["MTU"],
                    "VLAN": tag,
                    "metrics": base["metrics"],  # the tagged PIF's, as xapi shares them
                    "physical": False,
                    "currently_attached": False,
                    "ip_configuration_mode": "None",
                    "managed": True,
                    "primary_address_type": "IPv4",
                },
            )
            vlan = store.create("VLAN", {"tagged_PIF": tagged_PIF, "untagged_PIF": untagged, "tag": tag})
            store.set_field("PIF", untagged, "VLAN_master_of", vlan)
        try:
            await bring_up(ctx, untagged)
        except BaseException:
            with store.transaction():
                store.destroy("VLAN", vlan)
                store.destroy("PIF", untagged)
            raise
    return vlan


async def destroy(call: Call, self: str) -> None:
    ctx = call.ctx
    store = ctx.store
    untagged = store.get("VLAN", self)["untagged_PIF"]
    if untagged == NULL_REF or not store.exists("PIF", untagged):
        store.destroy("VLAN", self)  # an orphaned record
        return
    rules.assert_not_in_bond(ctx, untagged)
    if store.get("PIF", untagged)["VLAN"] < 0:
        raise ApiError("PIF_IS_PHYSICAL", untagged)
    # What PIF.unplug checks, since destroying unplugs.
    rules.assert_managed(ctx, untagged)
    rules.assert_not_management(ctx, untagged)
    rules.assert_network_has_no_vifs_in_use(ctx, store.get("PIF", untagged)["network"])
    rules.assert_unplug_allowed(ctx, untagged)
    async with config_lock(ctx):
        await bring_down(ctx, untagged)
        with store.transaction():
            store.destroy("VLAN", self)
            store.destroy("PIF", untagged)


def pool_introduce(
    call: Call,
    tagged_PIF: str,
    untagged_PIF: str,
    tag: int,
    other_config: dict[str, str],
) -> str:
    """A VLAN record only; the untagged PIF becomes its master."""
    store = call.ctx.store
    with store.transaction():
        vlan = store.create(
            "VLAN", {"tagged_PIF": tagged_PIF, "untagged_PIF": untagged_PIF, "tag": tag, "other_config": other_config}
        )
        store.set_field("PIF", untagged_PIF, "VLAN_master_of", vlan)
    return vlan


async def pool_create_VLAN(call: Call, device: str, network: str, VLAN: int) -> list[str]:
    """Deprecated: the VLAN on ``device`` of every host (this one); returns the new PIFs."""
    ctx = call.ctx
    if not 0 <= VLAN <= 4094:
        raise ApiError("VLAN_TAG_INVALID", VLAN)
    base = [
        ref
        for ref in ctx.store.get("host", ctx.host_ref)["PIFs"]
        if ctx.store.get("PIF", ref)["device"] == device and ctx.store.get("PIF", ref)["VLAN"] == -1
    ]
    if not base:
        raise ApiError(INVALID_VALUE, "device", device)
    vlan = await create(call, base[0], VLAN, network)
    return [str(ctx.store.get("VLAN", vlan)["untagged_PIF"])]


async def pool_create_VLAN_from_PIF(call: Call, pif: str, network: str, VLAN: int) -> list[str]:
    return await pool_create_VLAN(call, call.ctx.store.get("PIF", pif)["device"], network, VLAN)


MESSAGES: dict[str, Handler] = {"create": create, "destroy": destroy, "pool_introduce": pool_introduce}
POOL_MESSAGES: dict[str, Handler] = {
    "create_VLAN": pool_create_VLAN,
    "create_VLAN_from_PIF": pool_create_VLAN_from_PIF,
}
