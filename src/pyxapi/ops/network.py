"""network messages: create (xapi's bridge naming and checks), destroy, attach, purposes, MTU,
default locking mode, the database-only pool_introduce.

A network with no PIF on this host is host-internal: its bridge is made when something needs it
(network.attach, a VIF being plugged) and removed when the network is destroyed.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pyxapi.api.dispatch import Call, Handler
from pyxapi.drivers.network import base as net
from pyxapi.model.errors import INVALID_VALUE, ApiError
from pyxapi.ops import pif_rules as rules
from pyxapi.ops.network_setup import attach, attach_network
from pyxapi.ops.pif_realise import config_lock, runtime

log = logging.getLogger(__name__)

BRIDGE_PREFIX = "xapi"  # bridges xapi names itself: xapi0, xapi1, ...
RESERVED_PREFIXES = ("xen", "xapi", "vif", "tap", "eth")  # names a client may not pick
HIMN_KEY = "is_host_internal_management_network"
_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
INCOMPATIBLE_PURPOSES = {"nbd": ("insecure_nbd",), "insecure_nbd": ("nbd",)}


def _bridges(call: Call) -> set[str]:
    return {rec["bridge"] for _, rec in call.ctx.store.items("network")}


def choose_bridge(taken: set[str]) -> str:
    n = 0
    while f"{BRIDGE_PREFIX}{n}" in taken:
        n += 1
    return f"{BRIDGE_PREFIX}{n}"


def check_mtu(value: int) -> int:
    if not net.MTU_MIN <= value <= net.MTU_MAX:
        raise ApiError(INVALID_VALUE, "MTU", value)
    return value


def create(call: Call, record: dict[str, Any]) -> str:
    cdef = call.ctx.model.classes["network"]
    fields = {k: v for k, v in record.items() if k in cdef.fields and cdef.fields[k].qualifier in ("RW", "StaticRO")}
    mtu = int(fields.get("MTU", 1500))
    fields["MTU"] = check_mtu(1500 if mtu <= 0 else mtu)
    taken = _bridges(call)
    bridge = str(fields.get("bridge", ""))
    if bridge == "":
        bridge = choose_bridge(taken)
    else:
        if len(bridge) > 15 or bridge.startswith(RESERVED_PREFIXES) or not _IFNAME.match(bridge):
            raise ApiError(INVALID_VALUE, "bridge", bridge)
        if bridge in taken:
            raise ApiError("BRIDGE_NAME_EXISTS", bridge)
    fields["bridge"] = bridge
    return call.ctx.store.create("network", fields)


async def destroy(call: Call, self: str) -> None:
    ctx = call.ctx
    store = ctx.store
    rec = store.get("network", self)
    connected = [v for v in rec["VIFs"] if store.get("VIF", v)["currently_attached"] or store.get("VIF", v)["reserved"]]
    if connected:
        raise ApiError("NETWORK_CONTAINS_VIF", *connected)
    if rec["PIFs"]:
        raise ApiError("NETWORK_CONTAINS_PIF", *rec["PIFs"])
    if rec["other_config"].get(HIMN_KEY, "").lower() == "true":
        raise ApiError("CANNOT_DESTROY_SYSTEM_NETWORK", self)
    async with config_lock(ctx):
        if rec["managed"] and rec["bridge"]:
            try:
                await runtime(ctx).release(rec["bridge"])
            except net.NetworkError as e:  # a port nobody recorded: leave the bridge, forget the network
                log.warning("network.destroy: bridge %s stays: %s", rec["bridge"], e)
        with store.transaction():
            for vif in rec["VIFs"]:  # not attached: xapi destroys them with the network
                store.destroy("VIF", vif)
            store.destroy("network", self)


async def attach_(call: Call, network: str, host: str) -> None:
    rules.this_host(call.ctx, host)
    await attach(call.ctx, network, force=True)


async def attach_for_vm(call: Call, host: str, vm: str) -> None:
    """Every network the VM's VIFs need, attached here (before a start or migration)."""
    ctx = call.ctx
    rules.this_host(ctx, host)
    networks = {ctx.store.get("VIF", v)["network"] for v in ctx.store.get("VM", vm)["VIFs"]}
    async with config_lock(ctx):
        for network in sorted(n for n in networks if ctx.store.exists("network", n)):
            await attach_network(ctx, network)


def detach_for_vm(call: Call, host: str, vm: str) -> None:
    """Bridges stay while their network exists (cheap, and other VMs may share them)."""
    rules.this_host(call.ctx, host)
    call.ctx.store.get("VM", vm)


def pool_introduce(
    call: Call,
    name_label: str,
    name_description: str,
    MTU: int,
    other_config: dict[str, str],
    bridge: str,
    managed: bool = True,
    purpose: list[str] | None = None,
) -> str:
    """A network record only, as a joining host's database gets it."""
    fields = {
        "name_label": name_label,
        "name_description": name_description,
        "MTU": MTU,
        "other_config": other_config,
        "bridge": bridge,
        "managed": managed,
        "purpose": list(purpose or []),
    }
    return call.ctx.store.create("network", fields)


def set_default_locking_mode(call: Call, network: str, value: str) -> None:
    vifs = rules.attached_vifs(call.ctx, network)
    if vifs:
        raise ApiError("VIF_IN_USE", network, vifs[0])
    call.ctx.store.set_field("network", network, "default_locking_mode", value)


def set_MTU(call: Call, self: str, value: int) -> None:
    """Recorded now, applied when the network is next attached (as xapi: replug the PIFs)."""
    call.ctx.store.set_field("network", self, "MTU", check_mtu(value))


def add_purpose(call: Call, self: str, value: str) -> None:
    store = call.ctx.store
    current = store.get("network", self)["purpose"]
    if value in current:
        return
    conflicting = INCOMPATIBLE_PURPOSES.get(value, ())
    for _, rec in store.items("network"):
        for purpose in rec["purpose"]:
            if purpose in conflicting:
                raise ApiError("NETWORK_INCOMPATIBLE_PURPOSES", value, purpose)
    store.set_field("network", self, "purpose", [*current, value])


def remove_purpose(call: Call, self: str, value: str) -> None:
    store = call.ctx.store
    current = store.get("network", self)["purpose"]
    if value in current:
        store.set_field("network", self, "purpose", [p for p in current if p != value])


MESSAGES: dict[str, Handler] = {
    "create": create,
    "destroy": destroy,
    "attach": attach_,
    "attach_for_vm": attach_for_vm,
    "detach_for_vm": detach_for_vm,
    "pool_introduce": pool_introduce,
    "set_default_locking_mode": set_default_locking_mode,
    "set_MTU": set_MTU,
    "add_purpose": add_purpose,
    "remove_purpose": remove_purpose,
}
