"""Exits nobody asked for while an operation runs: who settles the VM (engine.vm_exits), and the
monitor doing it, through dispatch on the simulated hypervisor with a real file SR (qemu-img)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from pyxapi.drivers.hypervisor.base import DomainEvent, DomainNotFound, ExitReason
from pyxapi.drivers.storage.filechain import BASE_SUFFIX
from pyxapi.engine.vm_exits import POWER_CHANGING, settled_by_operation
from pyxapi.engine.vm_lifecycle import POWER_STATES
from tests.ops.test_storage_ops import new_sr, srv  # noqa: F401 - the fixture
from tests.ops.test_vm_power import Api, api  # noqa: F401 - the fixture
from tests.ops.test_vm_snapshot import guest

# Every other VM operation, named so that a new one in the lifecycle table needs a decision here.
LEAVES_POWER_STATE = frozenset(
    {
        "snapshot",
        "snapshot_with_quiesce",
        "clone",
        "copy",
        "create_template",
        "provision",
        "destroy",
        "make_into_template",
        "export",
        "metadata_export",
        "import",
        "send_sysrq",
        "send_trigger",  # the power button: what the guest does then is its own decision
        "call_plugin",
        "query_services",
        "get_boot_record",
        "changing_VCPUs_live",
        "changing_memory_live",
        "changing_dynamic_range",
        "changing_static_range",
        "changing_memory_limits",
        "changing_VCPUs",
        "changing_shadow_memory",
        "changing_shadow_memory_live",
        "changing_NVRAM",
        "create_vtpm",
        "assert_operation_valid",
        "update_allowed_operations",
        "data_source_op",
        "awaiting_memory_live",
        "csvm",
    }
)
SECONDS = 30.0  # generous: the machine is shared


def test_every_vm_operation_is_classified_once() -> None:
    assert POWER_CHANGING.isdisjoint(LEAVES_POWER_STATE)
    assert set(POWER_STATES) == POWER_CHANGING | LEAVES_POWER_STATE


@pytest.mark.parametrize(
    ("running", "deferred"),
    [
        ([], False),
        (["snapshot"], False),
        (["clone", "export"], False),
        (["changing_dynamic_range"], False),
        (["send_sysrq"], False),
        (["checkpoint"], True),
        (["snapshot", "checkpoint"], True),  # the two may overlap; the checkpoint settles it
        (["start"], True),
        (["clean_shutdown", "hard_shutdown"], True),
        (["hard_reboot"], True),
        (["pause"], True),
        (["suspend"], True),
        (["resume_on"], True),
        (["reverting"], True),
        (["pool_migrate"], True),
        (["migrate_send"], True),
    ],
)
def test_who_settles_an_unrequested_exit(running: list[str], deferred: bool) -> None:
    assert settled_by_operation(running) is deferred


async def wait_until(srv: Api, vm: str, field: str, want: Any, seconds: float = SECONDS) -> None:  # noqa: F811
    value = None
    for _ in range(int(seconds / 0.05)):
        value = await srv(f"VM.get_{field}", vm)
        if value == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"VM.{field} stayed {value!r}, wanted {want!r}")


async def attached(srv: Api, vm: str) -> list[bool]:  # noqa: F811
    return [await srv("VBD.get_currently_attached", vbd) for vbd in await srv("VM.get_VBDs", vm)]


async def test_guest_powering_off_during_a_snapshot_ends_halted(srv: Api, tmp_path: Path) -> None:  # noqa: F811
    sr = await new_sr(srv, "file", location=str(tmp_path / "sr"))
    vm, _ = await guest(srv, sr, n_disks=1, cd=False, vif=False)
    await srv("VM.start", vm, False, False)
    assert await attached(srv, vm) == [True]
    hv = srv.ctx.services["hypervisor"]
    uuid = await srv("VM.get_uuid", vm)
    during: list[tuple[dict[str, str], str]] = []
    real_switch = hv.switch_disks

    async def guest_powers_off_meanwhile(domain: str, disks: Any) -> None:
        # The snapshot is half done (its disk images exist) when the guest shuts itself down.
        hv.simulate_exit(uuid, ExitReason.POWEROFF, "guest-shutdown")
        for _ in range(int(SECONDS / 0.05)):
            await asyncio.sleep(0.05)
            if srv.ctx.store.get("VM", vm)["power_state"] == "Halted":
                break
        rec = srv.ctx.store.get("VM", vm)
        during.append((dict(rec["current_operations"]), rec["power_state"]))
        await real_switch(domain, disks)

    hv.switch_disks = guest_powers_off_meanwhile
    vdis = set(await srv("VDI.get_all"))
    # The live switch finds no domain any more: the snapshot fails as xapi's would, and leaves nothing.
    err = await srv.error("VM.snapshot", vm, "while-powering-off", [])
    assert err == ["VM_BAD_POWER_STATE", vm, "running", "halted"]
    assert await srv("VM.get_snapshots", vm) == [] and set(await srv("VDI.get_all")) == vdis
    [(ops, state)] = during
    assert list(ops.values()) == ["snapshot"] and state == "Halted"  # handled at once, not after
    assert await srv("VM.get_power_state", vm) == "Halted" and await srv("VM.get_domid", vm) == -1
    assert await attached(srv, vm) == [False]
    assert await srv("VM.get_current_operations", vm) == {}
    assert "start" in await srv("VM.get_allowed_operations", vm)
    await srv("VM.start", vm, False, False)  # and it starts again
    await srv("VM.hard_shutdown", vm)


def visible_files(sr_dir: Path) -> set[str]:
    """The file SR's image files but its hidden bases (a discarded snapshot may leave one for the
    coalescer): snapshot overlays and suspend images that survive a failure show up here."""
    return {p.name for p in sr_dir.iterdir() if not p.name.endswith(BASE_SUFFIX)}


async def checkpoint_fixture(srv: Api, tmp_path: Path) -> tuple[str, Path]:  # noqa: F811
    """A running VM with one disk on a file SR, which also takes suspend images."""
    sr_dir = tmp_path / "sr"
    sr = await new_sr(srv, "file", location=str(sr_dir))
    await srv("pool.set_suspend_image_SR", srv.ctx.pool_ref, sr)
    vm, _ = await guest(srv, sr, n_disks=1, cd=False, vif=False)
    await srv("VM.start", vm, False, False)
    return vm, sr_dir


async def assert_checkpoint_left_nothing(
    srv: Api,  # noqa: F811
    vm: str,
    sr_dir: Path,
    before: tuple[set[str], set[str], set[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    vms, vdis, files = before
    assert set(await srv("VM.get_all")) == vms and await srv("VM.get_snapshots", vm) == []
    assert set(await srv("VDI.get_all")) == vdis and visible_files(sr_dir) == files
    assert await srv("VM.get_suspend_VDI", vm) == "OpaqueRef:NULL"
    # Each VDI made was discarded exactly once: a second attempt would log HANDLE_INVALID.
    assert not [r for r in caplog.records if "HANDLE_INVALID" in r.getMessage()]
    # ... and once the checkpoint is over, the domain it left behind is gone: actions_after_crash = destroy
    await wait_until(srv, vm, "power_state", "Halted")
    assert await attached(srv, vm) == [False] and await srv("VM.get_domid", vm) == -1
    assert await srv("VM.get_current_operations", vm) == {}
    await srv("VM.start", vm, False, False)  # and it starts again
    await srv("VM.hard_shutdown", vm)


async def test_emulator_killed_during_a_checkpoint_is_handled_once_it_ends(
    srv: Api,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    vm, sr_dir = await checkpoint_fixture(srv, tmp_path)
    hv = srv.ctx.services["hypervisor"]
    uuid = await srv("VM.get_uuid", vm)
    during: list[str] = []
    real_save = hv.save_memory

    async def killed_meanwhile(domain: str, path: str, timeout: float = 300.0) -> None:
        hv.simulate_exit(uuid, ExitReason.KILLED)
        await asyncio.sleep(1.0)  # the monitor has had the event long since
        during.append(srv.ctx.store.get("VM", vm)["power_state"])
        await real_save(domain, path, timeout=timeout)

    hv.save_memory = killed_meanwhile
    before = set(await srv("VM.get_all")), set(await srv("VDI.get_all")), visible_files(sr_dir)
    # Saving the memory failed first (continuing the guest then fails too, but that is a consequence).
    assert await srv.error("VM.checkpoint", vm, "cp") == ["VM_CHECKPOINT_SUSPEND_FAILED", vm]
    assert during == ["Running"]  # the checkpoint owned the VM meanwhile: nobody raced it
    await assert_checkpoint_left_nothing(srv, vm, sr_dir, before, caplog)


async def test_emulator_killed_before_a_checkpoint_continues_the_guest(
    srv: Api,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The memory image is complete, then the domain dies before it is continued: that is xapi's
    VM_CHECKPOINT_RESUME_FAILED, and the disk snapshots and the image are discarded, once."""
    vm, sr_dir = await checkpoint_fixture(srv, tmp_path)
    hv = srv.ctx.services["hypervisor"]
    uuid = await srv("VM.get_uuid", vm)
    real_save = hv.save_memory

    async def killed_afterwards(domain: str, path: str, timeout: float = 300.0) -> None:
        await real_save(domain, path, timeout=timeout)
        hv.simulate_exit(uuid, ExitReason.KILLED)

    hv.save_memory = killed_afterwards
    before = set(await srv("VM.get_all")), set(await srv("VDI.get_all")), visible_files(sr_dir)
    assert await srv.error("VM.checkpoint", vm, "cp") == ["VM_CHECKPOINT_RESUME_FAILED", vm]
    await assert_checkpoint_left_nothing(srv, vm, sr_dir, before, caplog)


async def test_an_exit_during_a_shutdown_is_the_shutdowns(srv: Api) -> None:  # noqa: F811
    """No double handling: the shutdown halts the VM; actions_after_shutdown=restart must not
    bring it back afterwards."""
    sr = await new_sr(srv)
    vm, _ = await guest(srv, sr, n_disks=1, cd=False, vif=False)
    await srv("VM.set_actions_after_shutdown", vm, "restart")
    await srv("VM.start", vm, False, False)
    hv = srv.ctx.services["hypervisor"]
    uuid = await srv("VM.get_uuid", vm)
    real_shutdown = hv.shutdown

    async def guest_was_quicker(domain: str, *, clean: bool, timeout: float = 60.0) -> None:
        hv.simulate_exit(uuid, ExitReason.POWEROFF, "guest-shutdown")  # unrequested, a moment earlier
        await asyncio.sleep(0.5)
        with pytest.raises(DomainNotFound):
            await real_shutdown(domain, clean=clean, timeout=timeout)

    hv.shutdown = guest_was_quicker
    await srv("VM.hard_shutdown", vm)
    await asyncio.sleep(1.0)  # several rounds of the monitor's deferred look
    assert await srv("VM.get_power_state", vm) == "Halted" and uuid not in hv.host.domains
    assert await attached(srv, vm) == [False]


async def test_a_domain_alive_after_the_operation_is_left_running(srv: Api) -> None:  # noqa: F811
    """The guest resets itself just as VM.hard_reboot restarts it in place: the reset's exit notice
    comes while the reboot runs, and once it is over the domain is alive, so actions_after_reboot
    (destroy here) must not halt it."""
    sr = await new_sr(srv)
    vm, _ = await guest(srv, sr, n_disks=1, cd=False, vif=False)
    await srv("VM.set_actions_after_reboot", vm, "destroy")
    await srv("VM.start", vm, False, False)
    hv = srv.ctx.services["hypervisor"]
    uuid = await srv("VM.get_uuid", vm)
    domid = await srv("VM.get_domid", vm)
    real_reboot = hv.reboot

    async def reset_meanwhile(domain: str, *, clean: bool, timeout: float = 60.0) -> Any:
        hv._hub.publish(DomainEvent(domain, domid, ExitReason.REBOOT, False, time.time(), "guest-reset"))
        await asyncio.sleep(0.5)
        return await real_reboot(domain, clean=clean, timeout=timeout)

    hv.reboot = reset_meanwhile
    await srv("VM.hard_reboot", vm)
    await asyncio.sleep(1.0)  # several rounds of the monitor's deferred look
    assert await srv("VM.get_power_state", vm) == "Running" and uuid in hv.host.domains
    assert await attached(srv, vm) == [True]
    await srv("VM.hard_shutdown", vm)
