"""VIF.plug / unplug / unplug_force / move: NICs hot-plugged into running guests.

plug makes the VIF's tap on its network's bridge and asks the hypervisor to add the NIC (QEMU:
netdev_add + device_add); unplug asks the guest to release the NIC (ACPI eject), then removes the
tap. move re-attaches the tap to another network's bridge without the guest noticing, as xapi's
does. The domain spec saved for resume is kept in step with hot-plugs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from pyxapi.api.dispatch import Call, Handler
from pyxapi.context import Context
from pyxapi.drivers.hypervisor import base as hv
from pyxapi.model.errors import ApiError
from pyxapi.ops import vif_rules, vif_runtime, vm_state
from pyxapi.ops.storage_rules import marking
from pyxapi.ops.vm import driver_errors
from pyxapi.ops.vm_state import hypervisor

UNPLUG_TIMEOUT = 30.0


def _mark(call: Call, vif: str, op: str) -> contextlib.AbstractContextManager[str]:
    return marking(call.ctx.store, "VIF", vif, op, call.task_ref, vif_rules.refresh_vif)


def _save_nic(ctx: Context, vm: str, device: int, nic: hv.NicSpec | None) -> None:
    """Keep the saved domain spec in step, so a resume offers the NICs the guest has now."""
    uuid = ctx.store.get("VM", vm)["uuid"]
    spec = vm_state.load_spec(ctx, uuid)
    if spec is None:
        return
    nics = [n for n in spec.nics if n.device != device] + ([nic] if nic is not None else [])
    vm_state.save_spec(ctx, replace(spec, nics=tuple(sorted(nics, key=lambda n: n.device))))


def _set_attached(ctx: Context, vif: str, attached: bool) -> None:
    ctx.store.set_field("VIF", vif, "currently_attached", attached)


@contextlib.asynccontextmanager
async def _device_errors(vm: str) -> AsyncIterator[None]:
    """The hypervisor's errors as XenAPI errors; GuestTimeout and DeviceError pass through for
    the caller to decide (a NIC the guest will not release is not a shutdown it refused)."""
    try:
        yield
    except (hv.GuestTimeout, hv.DeviceError):
        raise
    except hv.HypervisorError as e:
        async with driver_errors(vm):
            raise e


async def plug(call: Call, vif: str) -> None:
    ctx = call.ctx
    vif_rules.check(ctx.store, vif, "plug")
    rec = ctx.store.get("VIF", vif)
    vm = rec["VM"]
    with _mark(call, vif, "plug"):
        nic = await vif_runtime.attach(ctx, vif)
        try:
            async with _device_errors(vm):
                await hypervisor(ctx).plug_nic(ctx.store.get("VM", vm)["uuid"], nic)
        except BaseException as e:
            await vif_runtime.detach(ctx, vif)
            if isinstance(e, hv.DeviceError | hv.GuestTimeout):
                raise ApiError("CANNOT_PLUG_VIF", vif) from None
            raise
        _set_attached(ctx, vif, True)
        _save_nic(ctx, vm, nic.device, nic)


async def _unplug(call: Call, vif: str, force: bool) -> None:
    ctx = call.ctx
    vif_rules.check(ctx.store, vif, "unplug")  # unplug_force is checked and marked as 'unplug', as in xapi
    rec = ctx.store.get("VIF", vif)
    vm = rec["VM"]
    device = int(rec["device"])
    with _mark(call, vif, "unplug"):
        try:
            async with _device_errors(vm):
                await hypervisor(ctx).unplug_nic(ctx.store.get("VM", vm)["uuid"], device, timeout=UNPLUG_TIMEOUT)
        except hv.GuestTimeout:
            if force:
                raise ApiError("DEVICE_DETACH_TIMEOUT", "VIF", vif) from None
            raise ApiError("DEVICE_DETACH_REJECTED", "VIF", vif, "the guest did not release the device") from None
        except hv.DeviceError:
            pass  # the domain no longer has it: finish detaching on our side
        await vif_runtime.detach(ctx, vif)
        _set_attached(ctx, vif, False)
        _save_nic(ctx, vm, device, None)


async def unplug(call: Call, vif: str) -> None:
    await _unplug(call, vif, force=False)


async def unplug_force(call: Call, vif: str) -> None:
    await _unplug(call, vif, force=True)


def device_active(ctx: Context, rec: dict[str, Any]) -> bool:
    """xapi's rule: the VIF is plugged and its VM has a domain (not suspended)."""
    vm = ctx.store.find("VM", rec["VM"])
    return bool(rec["currently_attached"]) and vm is not None and vm["power_state"] in ("Running", "Paused")


def _assert_host_can_attach(ctx: Context, network: str) -> None:
    """A network with PIFs is reachable here only through one of this host's (internal ones always)."""
    pifs = [ctx.store.find("PIF", p) for p in ctx.store.get("network", network)["PIFs"]]
    if pifs and not any(p is not None and p["host"] == ctx.host_ref for p in pifs):
        raise ApiError("HOST_CANNOT_ATTACH_NETWORK", ctx.host_ref, network)


async def move(call: Call, vif: str, network: str) -> None:
    ctx = call.ctx
    store = ctx.store
    rec = store.get("VIF", vif)
    net_rec = store.get("network", network)
    if device_active(ctx, rec):
        _assert_host_can_attach(ctx, network)
        # The tap moves first: if that fails, the VIF still names the network it is really on.
        await vif_runtime.move(ctx, vif, net_rec)
    store.set_field("VIF", vif, "network", network)


MESSAGES: dict[str, Handler] = {
    "plug": plug,
    "unplug": unplug,
    "unplug_force": unplug_force,
    "move": move,
}
