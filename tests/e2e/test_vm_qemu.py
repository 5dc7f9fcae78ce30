"""A real guest through the API: template → clone → provision → start under QEMU (TCG here),
guest agent metrics through event.from, clean shutdown, crash handling, daemon restart."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import XenAPI

from tests.drivers.conftest import HvGuestImage, hv_guest_image  # noqa: F401 - the fixture, shared
from tests.server_harness import ROOT_PASSWORD, Daemon, new_daemon

BOOT_SECONDS = 120.0  # TCG on a shared 2-core machine: generous, but bounded


@pytest.fixture(scope="module")
def qemu_daemon(hv_guest_image: HvGuestImage) -> Iterator[Daemon]:  # noqa: F811
    image = hv_guest_image  # fails (never skips) without qemu
    # QEMU's unix sockets live under the data dir: keep its path short.
    root = Path(tempfile.mkdtemp(prefix="pyxq-", dir="/tmp"))
    guest_dir = root / "data" / "images" / "test-guest"
    guest_dir.mkdir(parents=True)
    shutil.copy(image.kernel, guest_dir / "vmlinuz")
    shutil.copy(image.initrd, guest_dir / "initrd.img")
    daemon = new_daemon(root, hypervisor="qemu")
    daemon.start()
    yield daemon
    try:
        s = session(daemon)
        for vm, rec in s.xenapi.VM.get_all_records().items():
            if rec["power_state"] != "Halted" and not rec["is_control_domain"]:
                s.xenapi.VM.hard_shutdown(vm)
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def session(daemon: Daemon) -> XenAPI.Session:
    s = XenAPI.Session(daemon.url)
    s.xenapi.login_with_password("root", ROOT_PASSWORD, "2.23", "qemu-e2e")
    return s


def wait_task(x, task: str, seconds: float = BOOT_SECONDS) -> dict:  # type: ignore[no-untyped-def, type-arg]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rec = x.task.get_record(task)
        if rec["status"] != "pending":
            return rec  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"task {task} still pending after {seconds}s")


def install(x, name: str) -> str:  # type: ignore[no-untyped-def]
    template = next(
        ref for ref in x.VM.get_by_name_label("pyxapi test guest") if x.VM.get_is_a_template(ref)
    )
    vm = x.VM.clone(template, name)
    x.VM.provision(vm)
    assert x.VM.get_is_a_template(vm) is False
    return str(vm)


def wait_guest_agent(x, vm: str) -> dict:  # type: ignore[no-untyped-def, type-arg]
    """Follow event.from until the guest agent has reported into VM_guest_metrics."""
    token = x.event_from(["vm_guest_metrics", "vm"], "", 0.0)["token"]
    deadline = time.monotonic() + BOOT_SECONDS
    while time.monotonic() < deadline:
        gm = x.VM.get_guest_metrics(vm)
        if gm != "OpaqueRef:NULL":
            rec = x.VM_guest_metrics.get_record(gm)
            if rec["os_version"]:
                return rec  # type: ignore[no-any-return]
        token = x.event_from(["vm_guest_metrics", "vm"], token, 10.0)["token"]
    raise AssertionError("the guest agent never reported")


def test_guest_boots_reports_and_shuts_down_cleanly(qemu_daemon: Daemon) -> None:
    x = session(qemu_daemon).xenapi
    vm = install(x, "qemu-e2e-1")
    rec = wait_task(x, x.Async.VM.start(vm, False, False))
    assert rec["status"] == "success", rec["error_info"]
    assert x.VM.get_power_state(vm) == "Running"
    assert int(x.VM.get_domid(vm)) > 0
    guest = wait_guest_agent(x, vm)
    assert guest["PV_drivers_detected"] is True and guest["live"] is True
    assert "uname" in guest["os_version"] or "name" in guest["os_version"]
    x.VM.pause(vm)
    assert x.VM.get_power_state(vm) == "Paused"
    x.VM.unpause(vm)
    rec = wait_task(x, x.Async.VM.clean_shutdown(vm))
    assert rec["status"] == "success", rec["error_info"]
    assert x.VM.get_power_state(vm) == "Halted" and x.VM.get_domid(vm) == "-1"


def qemu_pid(daemon: Daemon, uuid: str) -> int:
    for pid_file in (daemon.data_dir / "run" / "qemu").rglob("*.pid"):
        if uuid in str(pid_file):
            return int(pid_file.read_text().strip())
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu-system" in cmd and uuid.encode() in cmd:
                return int(entry.name)
    raise AssertionError(f"no qemu process for {uuid}")


def test_crash_halts_and_restart_readopts(qemu_daemon: Daemon) -> None:
    x = session(qemu_daemon).xenapi
    vm = install(x, "qemu-e2e-2")
    x.VM.set_actions_after_crash(vm, "destroy")
    assert wait_task(x, x.Async.VM.start(vm, False, False))["status"] == "success"
    uuid = x.VM.get_uuid(vm)
    domid = x.VM.get_domid(vm)
    # the daemon restarts: the guest keeps running and is adopted again
    qemu_daemon.stop()
    pid = qemu_pid(qemu_daemon, uuid)
    os.kill(pid, 0)  # still alive without the daemon
    qemu_daemon.start()
    x = session(qemu_daemon).xenapi
    assert x.VM.get_power_state(vm) == "Running" and x.VM.get_domid(vm) == domid
    # kill the emulator behind the toolstack's back: actions_after_crash = destroy → Halted
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while x.VM.get_power_state(vm) != "Halted" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert x.VM.get_power_state(vm) == "Halted"
