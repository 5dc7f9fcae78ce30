"""From a VIF's records to what the drivers take: the network driver's VifSpec and the NicSpec
the hypervisor opens. Pure functions of the store, shared by VM start and VIF hot-plug, so a VIF
plugged either way gets the same MTU, locking and rate limit."""

from __future__ import annotations

from typing import Any, Literal

from pyxapi.db.store import NULL_REF, Store
from pyxapi.drivers.hypervisor.base import NicSpec
from pyxapi.drivers.network import base as net

RATELIMIT = "ratelimit"  # the one qos_algorithm_type xapi implements for VIFs


def rate_kbps(rec: dict[str, Any]) -> int | None:
    """xapi's rule: 'ratelimit' with a positive integer qos_algorithm_params:kbps limits what the
    guest sends; anything else (no type, another type, a missing or malformed kbps) is no limit."""
    if rec["qos_algorithm_type"] != RATELIMIT:
        return None
    try:
        kbps = int(str(rec["qos_algorithm_params"].get("kbps", "")).strip())
    except ValueError:
        return None
    return kbps if kbps > 0 else None


def network_of(store: Store, rec: dict[str, Any]) -> dict[str, Any] | None:
    net_ref = rec["network"]
    if net_ref == NULL_REF:
        return None
    return store.find("network", net_ref)


def locking(rec: dict[str, Any], network: dict[str, Any]) -> net.VifLocking:
    default: Literal["unlocked", "disabled"] = (
        "disabled" if network["default_locking_mode"] == "disabled" else "unlocked"
    )
    return net.VifLocking(
        mode=rec["locking_mode"],
        ipv4_allowed=tuple(rec["ipv4_allowed"]),
        ipv6_allowed=tuple(rec["ipv6_allowed"]),
        network_default=default,
    )


def driver_spec(rec: dict[str, Any], network: dict[str, Any], tap: str) -> net.VifSpec:
    return net.VifSpec(
        device=tap,
        bridge=network["bridge"],
        mac=rec["MAC"],
        mtu=rec["MTU"] or network["MTU"],
        locking=locking(rec, network),
        rate_kbps=rate_kbps(rec),
    )


def nic_spec(rec: dict[str, Any], tap: str, capabilities: frozenset[net.Capability]) -> NicSpec:
    """What the hypervisor opens; offloads only where the network driver's data path keeps them whole."""
    offload = net.Capability.GUEST_OFFLOAD in capabilities
    return NicSpec(device=int(rec["device"]), mac=rec["MAC"], tap=tap, mtu=rec["MTU"] or None, offload=offload)
