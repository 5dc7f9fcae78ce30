"""Networks attached on this host, and the host's networking at start-up.

attach_network is xapi's attach_internal: a network with PIFs here has them brought up; a
network with none is host-internal and gets its bridge (with DHCP for the pyxapi internal
network); an unmanaged network's bridge must exist already. VIF plugging and network.attach
both come through here, so a bridge exists whenever something needs it.

start_of_day runs when the daemon starts: on the first start it scans the host's NICs into
PIFs (PIF.scan), then brings up the PIFs that should be up (those recorded as attached, and
on the first start every managed physical one), as xapi does at start of day.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pyxapi.context import Context
from pyxapi.db.store import NULL_REF
from pyxapi.drivers.network import base as net
from pyxapi.model.errors import ApiError
from pyxapi.ops.pif_realise import bring_up, config_lock, driver, pif_kind, runtime
from pyxapi.ops.pif_scan import refresh_metrics, scan

if TYPE_CHECKING:
    from pyxapi.ops.network_runtime import NetworkRuntime

log = logging.getLogger(__name__)

INTERNAL_SUBNET_KEY = "pyxapi_internal_subnet"  # as ops/network_runtime.py names it


async def bridge_exists(ctx: Context, bridge: str) -> bool:
    try:
        await driver(ctx).get_bridge(bridge)
    except net.NotFound:
        return False
    return True


def local_pifs(ctx: Context, network: str) -> list[str]:
    store = ctx.store
    return [p for p in store.get("network", network)["PIFs"] if store.get("PIF", p)["host"] == ctx.host_ref]


async def attach_network(ctx: Context, network: str, force: bool = False) -> None:
    """Make ``network`` usable on this host (the caller holds config_lock)."""
    store = ctx.store
    rec = store.get("network", network)
    bridge = rec["bridge"]
    if not rec["managed"]:
        if not await bridge_exists(ctx, bridge):
            raise ApiError("BRIDGE_NOT_AVAILABLE", bridge)
        return
    pifs = local_pifs(ctx, network)
    if not pifs:
        try:
            await runtime(ctx).realise(bridge, rec["MTU"], rec["other_config"].get(INTERNAL_SUBNET_KEY))
        except net.NetworkError as e:
            raise ApiError("HOST_CANNOT_ATTACH_NETWORK", ctx.host_ref, network) from e
        return
    for pif in pifs:
        prec = store.get("PIF", pif)
        if not prec["managed"]:
            # Configured by other means (xapi says the same): only its bridge can be checked.
            if not await bridge_exists(ctx, bridge):
                raise ApiError("BRIDGE_NOT_AVAILABLE", bridge)
            continue
        if prec["bond_slave_of"] != NULL_REF:
            raise ApiError("CANNOT_PLUG_BOND_SLAVE", pif)
        if force or not prec["currently_attached"]:
            await bring_up(ctx, pif)


async def attach(ctx: Context, network: str, force: bool = False) -> None:
    """attach_network under the host's network configuration lock."""
    async with config_lock(ctx):
        await attach_network(ctx, network, force)


async def start_of_day(rt: NetworkRuntime) -> None:
    ctx = rt.ctx
    store = ctx.store
    host = ctx.host_ref
    first = not any(rec["host"] == host for _, rec in store.items("PIF"))
    new = set(await scan(ctx, host)) if first else set()
    if not first:
        await refresh_metrics(ctx, host)
    order = {"physical": 0, "bond": 1, "vlan": 2}
    wanted = []
    for ref, rec in store.items("PIF"):
        if rec["host"] != host or not rec["managed"] or rec["bond_slave_of"] != NULL_REF:
            continue
        kind = pif_kind(rec)
        if kind in order and (rec["currently_attached"] or (ref in new and kind == "physical")):
            wanted.append((order[kind], ref))
    async with config_lock(ctx):
        for _, pif in sorted(wanted):
            try:
                await bring_up(ctx, pif)
            except ApiError as e:
                log.warning("could not bring up PIF %s (%s): %s", store.get("PIF", pif)["device"], pif, e)
                store.set_field("PIF", pif, "currently_attached", False)
    # The host is reached on its management interface's address (host.management_reconfigure).
    for pif in store.get("host", host)["PIFs"]:
        rec = store.get("PIF", pif)
        if rec["management"] and rec["IP"] and store.get("host", host)["address"] != rec["IP"]:
            store.set_field("host", host, "address", rec["IP"])


async def ensure_attached(ctx: Context, network: dict[str, Any]) -> None:
    """attach for a network record (what VIF plugging has in hand)."""
    await attach(ctx, ctx.store.by_uuid("network", network["uuid"]))
