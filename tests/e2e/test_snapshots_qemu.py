"""Snapshots, checkpoints and reverts of a real test guest under QEMU (TCG), through the XenAPI SDK.

The guest gets a data disk on the default (file) SR; it writes markers there with dd, run through
its guest agent (guest-exec). A live snapshot is taken while it runs, the marker changed, and a
revert brings the marker back. A checkpoint of the running guest, reverted and resumed, continues
from the checkpoint: its uptime grows on from the value it had then, and a process started before
it is alive again. Ten VMs are cloned from a template and the time is printed (a figure, not a
timed assertion; bench/snapshots.py measures it properly).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from typing import Any

import pytest
import XenAPI

from pyxapi.drivers.hypervisor.base import GuestAgentUnavailable
from pyxapi.drivers.hypervisor.qga import qga_call
from tests.drivers.conftest import HvGuestImage, hv_guest_image  # noqa: F401 - the fixture, shared
from tests.e2e.test_vm_qemu import BOOT_SECONDS, install, qemu_daemon, session, wait_task  # noqa: F401
from tests.server_harness import Daemon

MiB = 1 << 20
AGENT_SECONDS = 120.0


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def guest_sh(daemon: Daemon, uuid: str, command: str, timeout: float = AGENT_SECONDS) -> str:
    """Run a shell command in the guest through its agent (guest-exec); returns its stdout. The
    daemon polls the same agent channel, so a busy channel is simply tried again."""
    socket = daemon.data_dir / "run" / "qemu" / uuid / "qga"

    async def attempt() -> str:
        started = await qga_call(
            socket, uuid, "guest-exec", {"path": "/bin/sh", "arg": ["-c", command], "capture-output": True}, timeout=10
        )
        pid = started["pid"]
        while True:
            status = await qga_call(socket, uuid, "guest-exec-status", {"pid": pid}, timeout=10)
            if status.get("exited"):
                assert status.get("exitcode", 0) == 0, (command, status)
                return base64.b64decode(status.get("out-data", "")).decode(errors="replace")
            await asyncio.sleep(0.2)

    deadline = time.monotonic() + timeout
    while True:
        try:
            return str(run(attempt()))
        except GuestAgentUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def write_marker(daemon: Daemon, uuid: str, text: str) -> None:
    guest_sh(daemon, uuid, f"echo {text} | dd of=/dev/vda bs=512 count=1 conv=fsync 2>/dev/null; sync")


def read_marker(daemon: Daemon, uuid: str) -> str:
    # O_DIRECT: the disk itself, not what the guest's page cache remembers
    return guest_sh(daemon, uuid, "dd if=/dev/vda bs=512 count=1 iflag=direct 2>/dev/null | head -n 1").strip()


def uptime(daemon: Daemon, uuid: str) -> float:
    return float(guest_sh(daemon, uuid, "cut -d' ' -f1 /proc/uptime"))


def new_disk(x: Any, vm: str, size: int) -> str:
    sr = x.pool.get_default_SR(x.pool.get_all()[0])
    vdi = x.VDI.create(
        {
            "name_label": "data",
            "name_description": "",
            "SR": sr,
            "virtual_size": str(size),
            "type": "user",
            "sharable": False,
            "read_only": False,
            "other_config": {},
            "xenstore_data": {},
            "sm_config": {},
            "tags": [],
        }
    )
    x.VBD.create(
        {
            "VM": vm,
            "VDI": vdi,
            "userdevice": "1",
            "bootable": False,
            "mode": "RW",
            "type": "Disk",
            "unpluggable": True,
            "empty": False,
            "other_config": {},
            "qos_algorithm_type": "",
            "qos_algorithm_params": {},
        }
    )
    return str(vdi)


def ok(x: Any, task: str, seconds: float = BOOT_SECONDS) -> dict[str, Any]:
    rec = wait_task(x, task, seconds)
    assert rec["status"] == "success", rec["error_info"]
    return rec


def result_ref(rec: dict[str, Any]) -> str:
    return str(rec["result"]).replace("<value>", "").replace("</value>", "")


@pytest.fixture(scope="module")
def guest(qemu_daemon: Daemon) -> Iterator[tuple[Any, str, str, str]]:  # noqa: F811
    """A running test guest with a 64 MiB data disk: (xenapi, VM, its uuid, the data VDI)."""
    x = session(qemu_daemon).xenapi
    vm = install(x, "snapshot-guest")
    vdi = new_disk(x, vm, 64 * MiB)
    ok(x, x.Async.VM.start(vm, False, False))
    uuid = x.VM.get_uuid(vm)
    guest_sh(qemu_daemon, uuid, "true")  # the agent answers: the guest is up
    yield x, vm, uuid, vdi
    if x.VM.get_power_state(vm) != "Halted":
        x.VM.hard_shutdown(vm)


def test_snapshot_change_revert_and_the_marker_is_back(qemu_daemon: Daemon, guest: Any) -> None:  # noqa: F811
    x, vm, uuid, vdi = guest
    write_marker(qemu_daemon, uuid, "MARKER-BEFORE")
    snap = result_ref(ok(x, x.Async.VM.snapshot(vm, "before the change", [])))
    assert x.VM.get_power_state(vm) == "Running"  # taken live
    assert x.VM.get_snapshot_info(snap)["power-state-at-snapshot"] == "Running"
    assert read_marker(qemu_daemon, uuid) == "MARKER-BEFORE"  # the guest kept its disk...
    write_marker(qemu_daemon, uuid, "MARKER-CHANGED")  # ...and keeps writing it
    assert read_marker(qemu_daemon, uuid) == "MARKER-CHANGED"
    # grown while in use: the guest sees the new size at once
    x.VDI.resize_online(vdi, str(128 * MiB))
    assert int(guest_sh(qemu_daemon, uuid, "cat /sys/block/vda/size")) * 512 == 128 * MiB
    ok(x, x.Async.VM.revert(snap))
    assert x.VM.get_power_state(vm) == "Halted" and x.VM.get_parent(vm) == snap
    ok(x, x.Async.VM.start(vm, False, False))
    assert read_marker(qemu_daemon, uuid) == "MARKER-BEFORE"
    assert int(guest_sh(qemu_daemon, uuid, "cat /sys/block/vda/size")) * 512 == 64 * MiB


def test_checkpoint_revert_resume_and_the_guest_continues(qemu_daemon: Daemon, guest: Any) -> None:  # noqa: F811
    x, vm, uuid, _ = guest
    write_marker(qemu_daemon, uuid, "AT-CHECKPOINT")
    pid = guest_sh(qemu_daemon, uuid, "sleep 100000 >/dev/null 2>&1 & echo $!").strip()
    before = uptime(qemu_daemon, uuid)
    cp = result_ref(ok(x, x.Async.VM.checkpoint(vm, "checkpoint")))
    rec = x.VM.get_record(cp)
    assert rec["power_state"] == "Suspended" and rec["suspend_VDI"] != "OpaqueRef:NULL"
    assert int(x.VDI.get_physical_utilisation(rec["suspend_VDI"])) > 0
    # the guest was only paused for the checkpoint: it runs on, and changes things
    assert x.VM.get_power_state(vm) == "Running"
    time.sleep(3)
    write_marker(qemu_daemon, uuid, "AFTER-CHECKPOINT")
    guest_sh(qemu_daemon, uuid, f"kill {pid}")
    later = uptime(qemu_daemon, uuid)
    assert later > before + 2
    ok(x, x.Async.VM.revert(cp))
    assert x.VM.get_power_state(vm) == "Suspended"
    ok(x, x.Async.VM.resume(vm, False, False))
    assert x.VM.get_power_state(vm) == "Running"
    resumed = uptime(qemu_daemon, uuid)
    assert before <= resumed < later, (before, resumed, later)  # on from the checkpoint, not from boot
    guest_sh(qemu_daemon, uuid, f"kill -0 {pid}")  # the process started before is alive again
    assert read_marker(qemu_daemon, uuid) == "AT-CHECKPOINT"
    time.sleep(1)
    assert uptime(qemu_daemon, uuid) > resumed  # and time goes on


def test_clone_ten_vms_from_a_template(qemu_daemon: Daemon) -> None:  # noqa: F811
    x = session(qemu_daemon).xenapi
    template = install(x, "fleet template")
    new_disk(x, template, 20 << 30)
    x.VM.set_is_a_template(template, True)
    started = time.monotonic()
    clones = [x.VM.clone(template, f"fleet-{i}") for i in range(10)]
    elapsed = time.monotonic() - started
    print(f"\nVM.clone x10 of a template with a 20 GiB disk: {elapsed * 1000:.0f} ms in total")
    assert len(set(clones)) == 10
    for clone in clones:
        [vbd] = [b for b in x.VM.get_VBDs(clone) if x.VBD.get_type(b) == "Disk"]
        assert int(x.VDI.get_physical_utilisation(x.VBD.get_VDI(vbd))) < 2 * MiB  # linked, nothing copied
    x.VM.set_is_a_template(clones[0], False)
    ok(x, x.Async.VM.start(clones[0], False, False))  # a clone boots
    guest_sh(qemu_daemon, x.VM.get_uuid(clones[0]), "true")
    x.VM.hard_shutdown(clones[0])
    with pytest.raises(XenAPI.Failure) as e:
        x.VM.start(clones[1], False, False)
    assert e.value.details == ["VM_IS_TEMPLATE", clones[1]]
