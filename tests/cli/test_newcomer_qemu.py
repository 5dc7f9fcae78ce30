"""The README's newcomer flow, with xe only, on a real QEMU guest (TCG here): install from
"pyxapi test guest", give it a network interface and a disk, start it, read its IP address with
vm-param-get, use its serial console, snapshot it, shut it down, export it and import it back."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import XE_SCRIPT, Xe
from tests.drivers.conftest import HvGuestImage, hv_guest_image  # noqa: F401 - the fixture, shared
from tests.server_harness import Daemon, new_daemon

BOOT_SECONDS = 180.0  # TCG on a shared 2-core machine: generous, but bounded


@pytest.fixture(scope="module")
def qemu_xe(hv_guest_image: HvGuestImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Xe]:  # noqa: F811
    image = hv_guest_image  # fails (never skips) without qemu
    root = Path(tempfile.mkdtemp(prefix="pyxe-", dir="/tmp"))  # QEMU's sockets need a short path
    guest_dir = root / "data" / "images" / "test-guest"
    guest_dir.mkdir(parents=True)
    shutil.copy(image.kernel, guest_dir / "vmlinuz")
    shutil.copy(image.initrd, guest_dir / "initrd.img")
    netns = f"pyxecli-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
    daemon: Daemon = new_daemon(root, hypervisor="qemu", network="bridge", netns=netns)
    try:
        daemon.start()
        xe = Xe(daemon, tmp_path_factory.mktemp("home"))
        yield xe
        for vm in xe.one("vm-list", "power-state=running", "is-control-domain=false", "--minimal").split(","):
            if vm:
                xe("vm-shutdown", f"uuid={vm}", "--force")
    finally:
        daemon.stop()
        subprocess.run(["ip", "netns", "del", netns], check=False)
        shutil.rmtree(root, ignore_errors=True)


def wait_for_ip(xe: Xe, vm: str) -> str:
    deadline = time.monotonic() + BOOT_SECONDS
    while time.monotonic() < deadline:
        r = xe("vm-param-get", f"uuid={vm}", "param-name=networks", "param-key=0/ip")
        if r.rc == 0 and r.out.strip():
            return r.out.strip()
        time.sleep(1.0)
    listing = xe("vm-param-list", f"uuid={vm}").out
    raise AssertionError(f"no IP address from the guest agent within {BOOT_SECONDS}s:\n{listing}")


def test_newcomer_flow(qemu_xe: Xe, tmp_path: Path) -> None:
    xe = qemu_xe
    vm = xe.one("vm-install", "template=pyxapi test guest", "new-name-label=my-first-vm")
    network = xe.one("network-list", "name-label=pyxapi internal network", "--minimal")
    xe.one("vif-create", f"vm-uuid={vm}", f"network-uuid={network}", "device=0")
    xe.ok("vm-disk-add", "vm=my-first-vm", "disk-size=64MiB", "device=1")
    xe.ok("vm-start", "vm=my-first-vm")
    assert xe.one("vm-param-get", f"uuid={vm}", "param-name=power-state") == "running"
    ip = wait_for_ip(xe, vm)
    assert ip.startswith("10.213.0."), ip
    networks = xe.one("vm-param-get", f"uuid={vm}", "param-name=networks")
    assert f"0/ip: {ip}" in networks
    # the serial console: a shell in the guest, left with Ctrl-]
    console = subprocess.Popen(
        [str(XE_SCRIPT), "console", "vm=my-first-vm"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **xe.env},
    )
    assert console.stdin is not None
    console.stdin.write(b"\necho console-$((40+2))\n")
    console.stdin.flush()
    time.sleep(5)
    console.stdin.write(b"\x1d")
    console.stdin.flush()
    out, err = console.communicate(timeout=60)
    assert console.returncode == 0, err
    assert out.startswith(b"Connecting to console on VM my-first-vm. Press Ctrl + ']' to quit.\n")
    assert b"console-42" in out
    snapshot = xe.one("vm-snapshot", "vm=my-first-vm", "new-name-label=before-changes")
    assert xe.one("snapshot-list", f"snapshot-of={vm}", "--minimal") == snapshot
    xe.ok("vm-shutdown", "vm=my-first-vm")
    assert xe.one("vm-param-get", f"uuid={vm}", "param-name=power-state") == "halted"
    xva = tmp_path / "my-first-vm.xva"
    assert xe.ok("vm-export", "vm=my-first-vm", f"filename={xva}") == "Export succeeded\n"
    copy = xe.one("vm-import", f"filename={xva}")
    assert copy != vm
    assert "Disk 0 VDI:" in xe.ok("vm-disk-list", f"uuid={copy}")  # the disk travelled too
    assert xe.one("vm-param-get", f"uuid={copy}", "param-name=name-label") == "my-first-vm"
    assert xe.one("vm-param-get", f"uuid={copy}", "param-name=power-state") == "halted"
    xe.ok("snapshot-revert", f"snapshot-uuid={snapshot}")
