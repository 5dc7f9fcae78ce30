"""VIF locking (set_locking_mode, ipv4_allowed / ipv6_allowed) and QoS rate limits, applied live.

As in xapi (xapi_vif.ml), each change is written to the VIF and then, when the VIF is active (plugged
into a VM that has a domain), its filtering rules are refreshed through the network driver: nftables
rules on a Linux bridge, OpenFlow flows and meters on Open vSwitch. Unlike xapi, a change the driver
refuses is undone, so the record never claims a lock that is not in force.

QoS follows xapi's VIF convention: qos_algorithm_type 'ratelimit' with qos_algorithm_params:kbps
limits what the guest sends. xapi applies it at the next plug; here the setters apply it live too.
"""

from __future__ import annotations

import contextlib
import ipaddress
from typing import Any

from pyxapi.api.dispatch import Call, Handler
from pyxapi.model.errors import MAP_DUPLICATE_KEY, ApiError
from pyxapi.ops import vif_runtime
from pyxapi.ops.vif_hotplug import device_active


def _valid_ip(value: str, version: int) -> bool:
    if "%" in value:  # a scoped IPv6 address is no filter address
        return False
    try:
        return ipaddress.ip_address(value).version == version
    except ValueError:
        return False


def checked_addresses(values: list[str], version: int) -> list[str]:
    """xapi's setify and assert_is_valid_ip: each address once, in order; a bad one is refused."""
    out: list[str] = []
    for value in values:
        if not _valid_ip(value, version):
            raise ApiError("INVALID_IP_ADDRESS_SPECIFIED", f"ipv{version}_allowed")
        if value not in out:
            out.append(value)
    return out


async def _change(call: Call, vif: str, changes: dict[str, Any]) -> None:
    """Write the changes, then refresh the VIF's rules if it is active; undo both if the driver fails."""
    ctx = call.ctx
    store = ctx.store
    rec = store.get("VIF", vif)
    before = {k: rec[k] for k in changes}
    if before == changes:
        return
    store.update("VIF", vif, changes)
    if not device_active(ctx, rec):
        return
    try:
        await vif_runtime.refresh(ctx, vif)
    except BaseException:
        if store.exists("VIF", vif):
            store.update("VIF", vif, before)
            with contextlib.suppress(ApiError):
                await vif_runtime.refresh(ctx, vif)  # the rules that were in force before
        raise


async def set_locking_mode(call: Call, vif: str, value: str) -> None:
    await _change(call, vif, {"locking_mode": value})


def _allowed(version: int) -> tuple[Handler, Handler, Handler]:
    field = f"ipv{version}_allowed"

    async def set_allowed(call: Call, vif: str, value: list[str]) -> None:
        await _change(call, vif, {field: checked_addresses(value, version)})

    async def add_allowed(call: Call, vif: str, value: str) -> None:
        current = call.ctx.store.get("VIF", vif)[field]
        await _change(call, vif, {field: checked_addresses([*current, value], version)})

    async def remove_allowed(call: Call, vif: str, value: str) -> None:
        current = call.ctx.store.get("VIF", vif)[field]
        await _change(call, vif, {field: [a for a in current if a != value]})

    return set_allowed, add_allowed, remove_allowed


set_ipv4_allowed, add_ipv4_allowed, remove_ipv4_allowed = _allowed(4)
set_ipv6_allowed, add_ipv6_allowed, remove_ipv6_allowed = _allowed(6)


async def set_qos_algorithm_type(call: Call, vif: str, value: str) -> None:
    await _change(call, vif, {"qos_algorithm_type": value})


async def set_qos_algorithm_params(call: Call, vif: str, value: dict[str, str]) -> None:
    await _change(call, vif, {"qos_algorithm_params": dict(value)})


async def add_to_qos_algorithm_params(call: Call, vif: str, key: str, value: str) -> None:
    rec = call.ctx.store.get("VIF", vif)
    current = rec["qos_algorithm_params"]
    if key in current:
        raise ApiError(MAP_DUPLICATE_KEY, "VIF", "qos_algorithm_params", rec["uuid"], key)
    await _change(call, vif, {"qos_algorithm_params": {**current, key: value}})


async def remove_from_qos_algorithm_params(call: Call, vif: str, key: str) -> None:
    current = call.ctx.store.get("VIF", vif)["qos_algorithm_params"]
    await _change(call, vif, {"qos_algorithm_params": {k: v for k, v in current.items() if k != key}})


MESSAGES: dict[str, Handler] = {
    "set_locking_mode": set_locking_mode,
    "set_ipv4_allowed": set_ipv4_allowed,
    "add_ipv4_allowed": add_ipv4_allowed,
    "remove_ipv4_allowed": remove_ipv4_allowed,
    "set_ipv6_allowed": set_ipv6_allowed,
    "add_ipv6_allowed": add_ipv6_allowed,
    "remove_ipv6_allowed": remove_ipv6_allowed,
    "set_qos_algorithm_type": set_qos_algorithm_type,
    "set_qos_algorithm_params": set_qos_algorithm_params,
    "add_to_qos_algorithm_params": add_to_qos_algorithm_params,
    "remove_from_qos_algorithm_params": remove_from_qos_algorithm_params,
}
