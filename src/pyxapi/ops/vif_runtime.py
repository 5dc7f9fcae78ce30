"""One VIF's host side while its VM runs: its tap on the network's bridge, made, changed or removed.

VM start plugs all of a VM's VIFs at once (NetworkRuntime.plug_vifs); these are the per-VIF steps
that hot-plug, unplug, move and live locking / QoS changes need. Like xapi attaching networks on
demand, a network whose bridge does not exist yet gets it made here first.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from pyxapi.context import Context
from pyxapi.drivers.hypervisor.base import NicSpec
from pyxapi.drivers.network import base as net
from pyxapi.model.errors import INTERNAL_ERROR, OPERATION_NOT_ALLOWED, ApiError
from pyxapi.ops.network_runtime import NetworkRuntime, tap_name
from pyxapi.ops.vif_spec import driver_spec, network_of, nic_spec

log = logging.getLogger(__name__)


def runtime(ctx: Context) -> NetworkRuntime:
    rt = ctx.services.get("network")
    if rt is None:
        raise ApiError(INTERNAL_ERROR, "no network runtime configured")
    assert isinstance(rt, NetworkRuntime)
    return rt


def tap_of(ctx: Context, vif: str) -> str:
    rec = ctx.store.get("VIF", vif)
    return tap_name(ctx.store.get("VM", rec["VM"])["uuid"], rec["device"])


def network_error(e: net.NetworkError) -> ApiError:
    """The driver's typed errors as the XenAPI errors xapi gives for the same situations."""
    if isinstance(e, net.NotSupported):
        return ApiError(OPERATION_NOT_ALLOWED, f"the network driver cannot do this: {e}")
    return ApiError(INTERNAL_ERROR, f"network: {e}")


def _spec(ctx: Context, vif: str, network: dict[str, Any] | None = None) -> net.VifSpec:
    rec = ctx.store.get("VIF", vif)
    network = network or network_of(ctx.store, rec)
    if network is None or not network["bridge"]:
        raise ApiError("CANNOT_PLUG_VIF", vif)
    return driver_spec(rec, network, tap_of(ctx, vif))


async def attach(ctx: Context, vif: str) -> NicSpec:
    """Make the VIF's tap and put it on its network's bridge; returns what the hypervisor opens."""
    rt = runtime(ctx)
    spec = _spec(ctx, vif)
    network = network_of(ctx.store, ctx.store.get("VIF", vif))
    assert network is not None
    try:
        await rt.ensure_bridge(network)
        with contextlib.suppress(net.NotFound):
            await rt.driver.detach_vif(spec.device)  # a leftover from a crash
        await rt.driver.attach_vif(spec)
    except net.NetworkError as e:
        raise network_error(e) from None
    return nic_spec(ctx.store.get("VIF", vif), spec.device, rt.driver.capabilities)


async def detach(ctx: Context, vif: str) -> None:
    """Take the VIF's tap off its bridge and delete it (nothing to do if it is not there)."""
    device = tap_of(ctx, vif)
    try:
        await runtime(ctx).driver.detach_vif(device)
    except net.NotFound:
        pass
    except net.NetworkError as e:
        log.warning("detach %s: %s", device, e)


async def refresh(ctx: Context, vif: str) -> None:
    """Re-apply locking and rate limit to an attached VIF (xapi's refresh_filtering_rules)."""
    try:
        await runtime(ctx).driver.update_vif(_spec(ctx, vif))
    except net.NetworkError as e:
        raise network_error(e) from None


async def move(ctx: Context, vif: str, network: dict[str, Any]) -> None:
    """Put an attached VIF's tap on another network's bridge; the guest's NIC stays as it is."""
    rt = runtime(ctx)
    spec = _spec(ctx, vif, network)
    try:
        await rt.ensure_bridge(network)
        await rt.driver.move_vif(spec)
    except net.NetworkError as e:
        raise network_error(e) from None
