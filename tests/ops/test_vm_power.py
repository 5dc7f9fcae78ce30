"""VM power lifecycle through dispatch, on the simulator (fast; the qemu run is end-to-end)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pyxapi.api.dispatch import Dispatcher
from pyxapi.context import Config, Context
from pyxapi.drivers.hypervisor.base import DomainEvent, ExitReason
from pyxapi.main import build, ensure_root_account
from pyxapi.model import ApiError
from pyxapi.ops.vm_monitor import VMMonitor

MIB = 1 << 20


class Api:
    def __init__(self, ctx: Context, dispatcher: Dispatcher) -> None:
        self.ctx, self.d = ctx, dispatcher
        self.session = ""

    async def __call__(self, method: str, *args: Any) -> Any:
        return await self.d.call(method, [self.session, *args], "json")

    async def error(self, method: str, *args: Any) -> list[str]:
        with pytest.raises(ApiError) as e:
            await self(method, *args)
        return e.value.description


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    config = Config(data_dir=tmp_path, hypervisor="sim")
    ensure_root_account(__import__("pyxapi.auth", fromlist=["AccountFile"]).AccountFile(tmp_path / "accounts.json"))
    ctx, dispatcher = build(config)
    a = Api(ctx, dispatcher)
    a.session = ctx.sessions.open("root", "pool-admin")
    monitor = VMMonitor(ctx, ctx.services["hypervisor"])
    await monitor.start()
    ctx.services["monitor"] = monitor
    yield a
    await monitor.stop()


async def new_vm(api: Api, **extra: Any) -> str:
    rec = {
        "name_label": "v",
        "memory_static_max": 256 * MIB,
        "memory_dynamic_max": 256 * MIB,
        "memory_dynamic_min": 128 * MIB,
        "memory_static_min": 64 * MIB,
        "VCPUs_max": 2,
        "VCPUs_at_startup": 1,
        "actions_after_shutdown": "destroy",
        "actions_after_reboot": "restart",
        "actions_after_crash": "destroy",
        **extra,
    }
    return str(await api("VM.create", rec))


async def test_start_shutdown_and_allowed_operations(api: Api) -> None:
    vm = await new_vm(api)
    rec = await api("VM.get_record", vm)
    assert "start" in rec["allowed_operations"] or rec["allowed_operations"] == []
    await api("VM.start", vm, False, False)
    rec = await api("VM.get_record", vm)
    assert rec["power_state"] == "Running" and rec["domid"] > 0
    assert rec["resident_on"] == api.ctx.host_ref
    assert "clean_shutdown" in rec["allowed_operations"] and "start" not in rec["allowed_operations"]
    assert rec["current_operations"] == {}
    metrics = await api("VM_metrics.get_record", rec["metrics"])
    assert metrics["VCPUs_number"] == 1 and metrics["memory_actual"] == 256 * MIB
    assert await api.error("VM.start", vm, False, False) == ["VM_BAD_POWER_STATE", vm, "halted", "running"]
    await api("VM.clean_shutdown", vm)
    rec = await api("VM.get_record", vm)
    assert rec["power_state"] == "Halted" and rec["domid"] == -1 and rec["resident_on"] == "OpaqueRef:NULL"


async def test_pause_suspend_resume_reboot(api: Api) -> None:
    vm = await new_vm(api)
    await api("VM.start", vm, True, False)
    assert await api("VM.get_power_state", vm) == "Paused"
    await api("VM.unpause", vm)
    await api("VM.suspend", vm)
    assert await api("VM.get_power_state", vm) == "Suspended"
    # the memory image is a VDI on the pool's suspend-image SR, as in xapi
    image = await api("VM.get_suspend_VDI", vm)
    assert await api("VDI.get_type", image) == "suspend"
    pool = (await api("pool.get_all"))[0]
    assert await api("VDI.get_SR", image) == await api("pool.get_suspend_image_SR", pool)
    assert await api.error("VM.start", vm, False, False) == ["VM_BAD_POWER_STATE", vm, "halted", "suspended"]
    await api("VM.resume", vm, False, False)
    assert await api("VM.get_power_state", vm) == "Running"
    assert await api("VM.get_suspend_VDI", vm) == "OpaqueRef:NULL"
    assert await api.error("VDI.get_record", image) == ["HANDLE_INVALID", "VDI", image]
    await api("VM.hard_reboot", vm)
    await api("VM.set_VCPUs_number_live", vm, 2)
    await api("VM.set_memory_dynamic_range", vm, 128 * MIB, 192 * MIB)
    assert await api("VM.get_memory_dynamic_max", vm) == 192 * MIB
    assert await api.error("VM.set_VCPUs_number_live", vm, 3) == ["INVALID_VALUE", "nvcpu", "3"]
    await api("VM.hard_shutdown", vm)
    assert await api("VM.get_power_state", vm) == "Halted"


async def test_templates_memory_and_host_limits(api: Api) -> None:
    tpl = await new_vm(api, is_a_template=True)
    assert await api.error("VM.start", tpl, False, False) == ["VM_IS_TEMPLATE", tpl]
    bad = await new_vm(api, memory_dynamic_min=512 * MIB)
    assert (await api.error("VM.start", bad, False, False))[0] == "MEMORY_CONSTRAINT_VIOLATION"
    huge = await new_vm(api, memory_static_max=1 << 50, memory_dynamic_max=1 << 50)
    assert (await api.error("VM.start", huge, False, False))[0] == "HOST_NOT_ENOUGH_FREE_MEMORY"
    assert await api("VM.get_allowed_VBD_devices", bad) == [str(i) for i in range(12)]


async def test_async_start_marks_current_operations(api: Api) -> None:
    vm = await new_vm(api)
    task = await api.d.call("Async.VM.start", [api.session, vm, False, False], "json")
    for _ in range(100):
        if api.ctx.store.get("task", task)["status"] != "pending":
            break
        await asyncio.sleep(0.01)
    assert api.ctx.store.get("task", task)["status"] == "success"
    assert await api("VM.get_power_state", vm) == "Running"


async def wait_for(api: Api, vm: str, field: str, predicate: Any, seconds: float = 5.0) -> Any:
    for _ in range(int(seconds / 0.01)):
        value = await api(f"VM.get_{field}", vm)
        if predicate(value):
            return value
        await asyncio.sleep(0.01)
    raise AssertionError(f"{field} stayed {value!r}")


async def test_unrequested_exits_apply_the_actions(api: Api) -> None:
    sim = api.ctx.services["hypervisor"]
    vm = await new_vm(api)
    uuid = await api("VM.get_uuid", vm)
    await api("VM.start", vm, False, False)
    first = await api("VM.get_domid", vm)
    # the guest rebooted itself: actions_after_reboot = restart, in a new domain
    sim.simulate_exit(uuid, ExitReason.REBOOT)
    await wait_for(api, vm, "domid", lambda d: d not in (first, -1))
    assert await api("VM.get_power_state", vm) == "Running"
    # the emulator was killed: actions_after_crash = destroy
    sim.simulate_exit(uuid, ExitReason.KILLED)
    await wait_for(api, vm, "power_state", lambda s: s == "Halted")
    # a requested exit is left to the operation that asked for it
    monitor: VMMonitor = api.ctx.services["monitor"]
    await monitor.handle_exit(DomainEvent(uuid, 1, ExitReason.POWEROFF, True, 0.0))
    assert await api("VM.get_power_state", vm) == "Halted"


async def test_reconcile_after_restart_marks_vanished_domains_halted(api: Api) -> None:
    vm = await new_vm(api)
    await api("VM.start", vm, False, False)
    driver = api.ctx.services["hypervisor"]
    await driver.shutdown(await api("VM.get_uuid", vm), clean=False)  # behind the toolstack's back
    await VMMonitor(api.ctx, driver).reconcile()
    assert await api("VM.get_power_state", vm) == "Halted"
