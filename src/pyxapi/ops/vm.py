"""VM.* power lifecycle: start, shutdown, reboot, pause, suspend/resume, vCPUs and memory.

Each handler checks the lifecycle table (through engine.operations.running), asks the
hypervisor driver, and records the result through ops.vm_state. The driver's typed errors
become the XenAPI errors xapi gives for the same situations.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from pyxapi.api.dispatch import Call, Handler
from pyxapi.context import Context
from pyxapi.drivers.hypervisor import base as hv
from pyxapi.engine.operations import refresh_vm_allowed, running
from pyxapi.engine.vm_lifecycle import VMView, check
from pyxapi.engine.vm_spec import MIB, check_memory, domain_spec
from pyxapi.model.errors import INTERNAL_ERROR, OPERATION_NOT_ALLOWED, ApiError
from pyxapi.ops import vm_state, vm_suspend
from pyxapi.ops.host import free_memory
from pyxapi.ops.vm_state import hypervisor
from pyxapi.wire.marshal import now_datetime

CLEAN_SHUTDOWN_TIMEOUT = 120.0
MAX_VBD_DEVICES = 12
MAX_VIF_DEVICES = 7


@contextlib.asynccontextmanager
async def driver_errors(vm: str) -> AsyncIterator[None]:
    """Turn the driver's typed errors into the XenAPI errors clients expect."""
    try:
        yield
    except hv.GuestTimeout:
        raise ApiError("VM_FAILED_SHUTDOWN_ACKNOWLEDGMENT", vm) from None
    except hv.GuestAgentUnavailable:
        raise ApiError("VM_MISSING_PV_DRIVERS", vm) from None
    except hv.NotSupported as e:
        raise ApiError(OPERATION_NOT_ALLOWED, str(e)) from None
    except hv.InvalidArgument as e:
        raise ApiError("VALUE_NOT_SUPPORTED", "VM", vm, str(e)) from None
    except hv.DomainNotFound:
        raise ApiError("VM_BAD_POWER_STATE", vm, "running", "halted") from None
    except hv.HypervisorError as e:
        raise ApiError(INTERNAL_ERROR, f"{type(e).__name__}: {e}") from None


def _check_can_boot(ctx: Context, vm: str) -> None:
    rec = ctx.store.get("VM", vm)
    if not ctx.store.get("host", ctx.host_ref)["enabled"]:
        raise ApiError("HOST_DISABLED", ctx.host_ref)
    check_memory(rec)
    needed, available = rec["memory_static_max"], free_memory(ctx)
    if needed > available:
        raise ApiError("HOST_NOT_ENOUGH_FREE_MEMORY", needed, available)


def _check_this_host(ctx: Context, host: str) -> None:
    if host != ctx.host_ref:
        raise ApiError("HOST_OFFLINE", host)


async def boot(ctx: Context, vm: str, paused: bool) -> None:
    """Start the VM's domain and record it; also used by the monitor to restart guests."""
    _check_can_boot(ctx, vm)
    network = ctx.services.get("network")
    storage = ctx.services.get("storage")
    disks: dict[str, hv.DiskSpec] = {}
    try:
        disks = await storage.attach_vm(vm) if storage else {}
        nics = await network.plug_vifs(vm) if network else {}
        spec = domain_spec(ctx.store, vm, disks=lambda vbd, rec: disks.get(vbd), nics=lambda vif, rec: nics.get(vif))
        async with driver_errors(vm):
            info = await hypervisor(ctx).start(spec, paused=paused)
    except BaseException:
        await release_devices(ctx, vm)
        raise
    vm_state.save_spec(ctx, spec)
    vm_state.record_running(ctx, vm, info)
    if network:
        network.mark_attached(vm, True)
    if storage:
        storage.mark_attached(vm, disks, True)


async def release_devices(ctx: Context, vm: str) -> None:
    """After a domain is gone: take its taps off the bridges and detach its disks."""
    network = ctx.services.get("network")
    if network and ctx.store.exists("VM", vm):
        await network.unplug_vifs(vm)
        network.mark_attached(vm, False)
    storage = ctx.services.get("storage")
    if storage:
        await storage.detach_vm(vm)


async def start(call: Call, vm: str, start_paused: bool, force: bool) -> None:
    with running(call.ctx.store, vm, "start", call.task_ref):
        await boot(call.ctx, vm, start_paused)


async def start_on(call: Call, vm: str, host: str, start_paused: bool, force: bool) -> None:
    _check_this_host(call.ctx, host)
    with running(call.ctx.store, vm, "start_on", call.task_ref):
        await boot(call.ctx, vm, start_paused)


async def _stop(call: Call, vm: str, op: str, clean: bool) -> None:
    ctx = call.ctx
    with running(ctx.store, vm, op, call.task_ref):
        rec = ctx.store.get("VM", vm)
        if rec["power_state"] == "Suspended":
            await vm_suspend.discard(ctx, vm)  # halting a suspended VM throws its memory image away
        else:
            async with driver_errors(vm):
                await hypervisor(ctx).shutdown(rec["uuid"], clean=clean, timeout=CLEAN_SHUTDOWN_TIMEOUT)
        vm_state.record_halted(ctx, vm)
        await release_devices(ctx, vm)


async def clean_shutdown(call: Call, vm: str) -> None:
    await _stop(call, vm, "clean_shutdown", clean=True)


async def hard_shutdown(call: Call, vm: str) -> None:
    await _stop(call, vm, "hard_shutdown", clean=False)


async def shutdown(call: Call, vm: str) -> None:
    """Clean if the guest cooperates, hard otherwise (xapi's VM.shutdown)."""
    ctx = call.ctx
    rec = ctx.store.get("VM", vm)
    if rec["power_state"] != "Running":
        await _stop(call, vm, "shutdown", clean=False)
        return
    try:
        await _stop(call, vm, "shutdown", clean=True)
    except ApiError as e:
        if e.code not in ("VM_FAILED_SHUTDOWN_ACKNOWLEDGMENT", "VM_MISSING_PV_DRIVERS"):
            raise
        await _stop(call, vm, "shutdown", clean=False)


async def _reboot(call: Call, vm: str, op: str, clean: bool) -> None:
    ctx = call.ctx
    with running(ctx.store, vm, op, call.task_ref):
        uuid = ctx.store.get("VM", vm)["uuid"]
        async with driver_errors(vm):
            info = await hypervisor(ctx).reboot(uuid, clean=clean, timeout=CLEAN_SHUTDOWN_TIMEOUT)
        vm_state.record_running(ctx, vm, info)


async def clean_reboot(call: Call, vm: str) -> None:
    await _reboot(call, vm, "clean_reboot", clean=True)


async def hard_reboot(call: Call, vm: str) -> None:
    await _reboot(call, vm, "hard_reboot", clean=False)


async def pause(call: Call, vm: str) -> None:
    with running(call.ctx.store, vm, "pause", call.task_ref):
        async with driver_errors(vm):
            await hypervisor(call.ctx).pause(call.ctx.store.get("VM", vm)["uuid"])
        vm_state.record_paused(call.ctx, vm, True)


async def unpause(call: Call, vm: str) -> None:
    with running(call.ctx.store, vm, "unpause", call.task_ref):
        async with driver_errors(vm):
            await hypervisor(call.ctx).unpause(call.ctx.store.get("VM", vm)["uuid"])
        vm_state.record_paused(call.ctx, vm, False)


async def suspend(call: Call, vm: str) -> None:
    ctx = call.ctx
    with running(ctx.store, vm, "suspend", call.task_ref):
        uuid = ctx.store.get("VM", vm)["uuid"]
        vdi, image = await vm_suspend.new_image(ctx, vm)
        try:
            async with driver_errors(vm):
                await hypervisor(ctx).suspend(uuid, image)
        except BaseException:
            await vm_suspend.release_image(ctx, vdi)
            ctx.store.set_field("VM", vm, "suspend_VDI", vdi)
            await vm_suspend.discard(ctx, vm)
            raise
        await vm_suspend.release_image(ctx, vdi)
        ctx.store.set_field("VM", vm, "suspend_VDI", vdi)
        vm_state.record_halted(ctx, vm, keep_suspend=True)
        await release_devices(ctx, vm)


async def _resume(call: Call, vm: str, op: str, paused: bool) -> None:
    ctx = call.ctx
    with running(ctx.store, vm, op, call.task_ref):
        uuid = ctx.store.get("VM", vm)["uuid"]
        spec = vm_state.load_spec(ctx, uuid)
        if spec is None:
            raise ApiError("VM_HAS_NO_SUSPEND_VDI", vm)
        _check_can_boot(ctx, vm)
        vdi, image = await vm_suspend.open_image(ctx, vm)
        network = ctx.services.get("network")
        storage = ctx.services.get("storage")
        disks: dict[str, hv.DiskSpec] = {}
        try:
            # The disks the domain was saved with, locked again (the saved spec has their paths).
            disks = await storage.attach_vm(vm, {d.device for d in spec.disks}) if storage else {}
            # The images as attached now: after a revert to a checkpoint they are fresh clones.
            attached = {d.device: d for d in disks.values()}
            spec = replace(spec, disks=tuple(attached.get(d.device, d) for d in spec.disks))
            if network:
                await network.plug_vifs(vm)  # the same tap names the suspended spec opens
            async with driver_errors(vm):
                info = await hypervisor(ctx).resume(spec, image, paused=paused)
        except BaseException:
            await vm_suspend.release_image(ctx, vdi)
            await release_devices(ctx, vm)
            raise
        await vm_suspend.release_image(ctx, vdi)
        await vm_suspend.discard(ctx, vm)
        vm_state.record_running(ctx, vm, info)
        if network:
            network.mark_attached(vm, True)
        if storage:
            storage.mark_attached(vm, disks, True)


async def resume(call: Call, vm: str, start_paused: bool, force: bool) -> None:
    await _resume(call, vm, "resume", start_paused)


async def resume_on(call: Call, vm: str, host: str, start_paused: bool, force: bool) -> None:
    _check_this_host(call.ctx, host)
    await _resume(call, vm, "resume_on", start_paused)


async def power_state_reset(call: Call, vm: str) -> None:
    """Force the record to Halted when it disagrees with reality (no domain is touched)."""
    ctx = call.ctx
    rec = ctx.store.get("VM", vm)
    if rec["power_state"] in ("Running", "Paused"):
        with contextlib.suppress(hv.HypervisorError):
            if await hypervisor(ctx).state(rec["uuid"]):
                raise ApiError("VM_BAD_POWER_STATE", vm, "halted", rec["power_state"].lower())
    await vm_suspend.discard(ctx, vm)
    vm_state.record_halted(ctx, vm)
    await release_devices(ctx, vm)


async def set_VCPUs_number_live(call: Call, vm: str, nvcpu: int) -> None:
    ctx = call.ctx
    rec = ctx.store.get("VM", vm)
    if not 1 <= nvcpu <= rec["VCPUs_max"]:
        raise ApiError("INVALID_VALUE", "nvcpu", str(nvcpu))
    with running(ctx.store, vm, "changing_VCPUs_live", call.task_ref):
        async with driver_errors(vm):
            await hypervisor(ctx).set_vcpus(rec["uuid"], nvcpu)
        ctx.store.update("VM_metrics", rec["metrics"], {"VCPUs_number": nvcpu})


async def set_memory_dynamic_range(call: Call, vm: str, min: int, max: int) -> None:
    ctx = call.ctx
    rec = ctx.store.get("VM", vm)
    check_memory({**rec, "memory_dynamic_min": min, "memory_dynamic_max": max})
    with running(ctx.store, vm, "changing_dynamic_range", call.task_ref):
        if rec["power_state"] == "Running":
            target = max // MIB * MIB
            async with driver_errors(vm):
                await hypervisor(ctx).set_memory_target(rec["uuid"], target)
            ctx.store.update("VM_metrics", rec["metrics"], {"memory_actual": target})
            ctx.store.set_field("VM", vm, "memory_target", target)
        ctx.store.update("VM", vm, {"memory_dynamic_min": min, "memory_dynamic_max": max})


async def set_memory_target_live(call: Call, vm: str, target: int) -> None:
    rec = call.ctx.store.get("VM", vm)
    await set_memory_dynamic_range(call, vm, min(rec["memory_dynamic_min"], target), target)


def _static_change(call: Call, vm: str, changes: dict[str, Any]) -> None:
    store = call.ctx.store
    rec = store.get("VM", vm)
    check_memory({**rec, **changes})
    with running(store, vm, "changing_static_range", call.task_ref):
        store.update("VM", vm, changes)


def set_memory_static_range(call: Call, vm: str, min: int, max: int) -> None:
    _static_change(call, vm, {"memory_static_min": min, "memory_static_max": max})


def set_memory_limits(
    call: Call, vm: str, static_min: int, static_max: int, dynamic_min: int, dynamic_max: int
) -> None:
    _static_change(
        call,
        vm,
        {
            "memory_static_min": static_min,
            "memory_static_max": static_max,
            "memory_dynamic_min": dynamic_min,
            "memory_dynamic_max": dynamic_max,
        },
    )


def set_memory(call: Call, vm: str, value: int) -> None:
    set_memory_limits(call, vm, min(call.ctx.store.get("VM", vm)["memory_static_min"], value), value, value, value)


async def send_sysrq(call: Call, vm: str, key: str) -> None:
    with running(call.ctx.store, vm, "send_sysrq", call.task_ref):
        async with driver_errors(vm):
            await hypervisor(call.ctx).send_sysrq(call.ctx.store.get("VM", vm)["uuid"], key)


async def send_trigger(call: Call, vm: str, trigger: str) -> None:
    with running(call.ctx.store, vm, "send_trigger", call.task_ref):
        if trigger != "power":
            raise ApiError("INVALID_VALUE", "trigger", trigger)
        # The ACPI power button: the guest decides what to do with it.
        async with driver_errors(vm):
            await hypervisor(call.ctx).shutdown(call.ctx.store.get("VM", vm)["uuid"], clean=True, timeout=0.0)


def assert_can_boot_here(call: Call, vm: str, host: str) -> None:
    _check_this_host(call.ctx, host)
    rec = call.ctx.store.get("VM", vm)
    if rec["is_a_template"]:
        raise ApiError("VM_IS_TEMPLATE", vm)
    _check_can_boot(call.ctx, vm)


def get_boot_record(call: Call, vm: str) -> dict[str, Any]:
    return call.ctx.store.get("VM", vm)


def _free_devices(call: Call, vm: str, cls: str, field: str, limit: int) -> list[str]:
    store = call.ctx.store
    used = {store.get(cls, ref)["userdevice" if cls == "VBD" else "device"] for ref in store.get("VM", vm)[field]}
    return [str(i) for i in range(limit) if str(i) not in used]


def get_allowed_VBD_devices(call: Call, vm: str) -> list[str]:
    return _free_devices(call, vm, "VBD", "VBDs", MAX_VBD_DEVICES)


def get_allowed_VIF_devices(call: Call, vm: str) -> list[str]:
    return _free_devices(call, vm, "VIF", "VIFs", MAX_VIF_DEVICES)


def memory_overhead(static_max: int, vcpus: int) -> int:
    # QEMU's own footprint: a fixed part plus page tables, as a rough per-MiB share.
    return int(32 * MIB + static_max // 128 + vcpus * MIB)


def compute_memory_overhead(call: Call, vm: str) -> int:
    rec = call.ctx.store.get("VM", vm)
    return memory_overhead(rec["memory_static_max"], rec["VCPUs_max"])


APPROXIMATE_VCPUS = 64
"""maximise_memory(approximate=true) leaves room for this many vCPUs, as xapi does, so that the
answer still holds after the VM's vCPU count changes."""


def maximise_memory(call: Call, vm: str, total: int, approximate: bool) -> int:
    """The largest memory_static_max whose memory plus overhead fits in `total` bytes, in whole MiB."""
    rec = call.ctx.store.get("VM", vm)
    vcpus = APPROXIMATE_VCPUS if approximate else rec["VCPUs_max"]
    low, high = 0, max(0, total)  # the overhead grows with the memory: bisect on "fits"
    while low < high:
        mid = (low + high + 1) // 2
        if mid + memory_overhead(mid, vcpus) <= total:
            low = mid
        else:
            high = mid - 1
    return low // MIB * MIB


def assert_operation_valid(call: Call, vm: str, op: str) -> None:
    check(VMView.of(vm, call.ctx.store.get("VM", vm)), op)


def update_allowed_operations(call: Call, vm: str) -> None:
    store = call.ctx.store
    store.get("VM", vm)
    with store.transaction():
        refresh_vm_allowed(store, vm)


def get_possible_hosts(call: Call, vm: str) -> list[str]:
    """The hosts where the VM could start now: this one, if assert_can_boot_here passes."""
    try:
        assert_can_boot_here(call, vm, call.ctx.host_ref)
    except ApiError:
        return []
    return [call.ctx.host_ref]


def get_cooperative(call: Call, vm: str) -> bool:
    call.ctx.store.get("VM", vm)
    return True  # deprecated in xapi, which answers true for every VM


def create(call: Call, record: dict[str, Any]) -> str:
    """VM.create: the record (defaults filled in) plus its VM_metrics, as xapi makes them."""
    store = call.ctx.store
    cdef = call.ctx.model.classes["VM"]
    fields = {k: v for k, v in record.items() if cdef.fields[k].qualifier in ("RW", "StaticRO")}
    with store.transaction():
        vm = store.create("VM", fields)
        store.set_field("VM", vm, "metrics", store.create("VM_metrics", {"last_updated": now_datetime()}))
        refresh_vm_allowed(store, vm)
    return vm


def destroy(call: Call, vm: str) -> None:
    """VM.destroy: the VM with its VBDs, VIFs, metrics and consoles (its disks stay, as in xapi)."""
    store = call.ctx.store
    with running(store, vm, "destroy", call.task_ref):
        rec = store.get("VM", vm)
        with store.transaction():
            for child in rec["children"]:  # the snapshot tree closes over the gap, as in xapi
                if store.exists("VM", child):
                    store.set_field("VM", child, "parent", rec["parent"])
            for cls, field in (("VBD", "VBDs"), ("VIF", "VIFs"), ("console", "consoles")):
                for ref in rec[field]:
                    if store.exists(cls, ref):
                        store.destroy(cls, ref)
            for cls, field in (("VM_metrics", "metrics"), ("VM_guest_metrics", "guest_metrics")):
                if store.exists(cls, rec[field]):
                    store.destroy(cls, rec[field])
            store.destroy("VM", vm)
    vm_state.spec_path(call.ctx, rec["uuid"]).unlink(missing_ok=True)


MESSAGES: dict[str, Handler] = {
    "create": create,
    "destroy": destroy,
    "start": start,
    "start_on": start_on,
    "clean_shutdown": clean_shutdown,
    "hard_shutdown": hard_shutdown,
    "shutdown": shutdown,
    "clean_reboot": clean_reboot,
    "hard_reboot": hard_reboot,
    "pause": pause,
    "unpause": unpause,
    "suspend": suspend,
    "resume": resume,
    "resume_on": resume_on,
    "power_state_reset": power_state_reset,
    "set_VCPUs_number_live": set_VCPUs_number_live,
    "set_memory_dynamic_range": set_memory_dynamic_range,
    "set_memory_target_live": set_memory_target_live,
    "set_memory_static_range": set_memory_static_range,
    "set_memory_limits": set_memory_limits,
    "set_memory": set_memory,
    "send_sysrq": send_sysrq,
    "send_trigger": send_trigger,
    "assert_can_boot_here": assert_can_boot_here,
    "get_boot_record": get_boot_record,
    "get_allowed_VBD_devices": get_allowed_VBD_devices,
    "get_allowed_VIF_devices": get_allowed_VIF_devices,
    "compute_memory_overhead": compute_memory_overhead,
    "maximise_memory": maximise_memory,
    "assert_operation_valid": assert_operation_valid,
    "update_allowed_operations": update_allowed_operations,
    "get_possible_hosts": get_possible_hosts,
    "get_cooperative": get_cooperative,
}
