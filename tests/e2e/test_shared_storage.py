"""Shared storage through the XenAPI SDK against a real daemon: an nfs SR on nfs-ganesha and an iscsi SR
on tgtd, both in a namespace of the test's own, reached over a veth from the root namespace where the
daemon's storage drivers and its QEMU guests run. (Not the daemon's --netns: the daemon adopts the NICs
of its namespace as PIFs and bridges them, which would take the servers' address away.) The guests need
no network (--network sim): they are driven over the serial console. Real test guests boot with
their disk on each SR and read back, through the serial console, data written before a snapshot/clone
(nfs) or before a copy (iscsi LUNs cannot be cloned: their SM record says so). Bad device_config gets
XenServer's SR_BACKEND_FAILURE codes and leaves no SR, PBD or file behind; lvm names the missing
device-mapper."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.dom import minidom

import pytest
import XenAPI

from tests.drivers.conftest import HvGuestImage, hv_guest_image  # noqa: F401 - the fixture, shared
from tests.drivers.iscsi_target import IscsiTarget
from tests.drivers.nfs_server import NfsServer, TestNetns
from tests.e2e.test_storage_e2e import failure, new_vbd, new_vdi, serial_run, this_host, vt100
from tests.e2e.test_vm_qemu import install, qemu_pid, session, wait_task
from tests.server_harness import Daemon, new_daemon

MiB = 1 << 20
NULL = "OpaqueRef:NULL"
_marks = itertools.count(1)


@dataclass
class Shared:
    daemon: Daemon
    nfs: NfsServer
    iscsi: IscsiTarget
    iqn: str


@pytest.fixture(scope="module")
def shared(hv_guest_image: HvGuestImage) -> Iterator[Shared]:  # noqa: F811
    image = hv_guest_image
    root = Path(tempfile.mkdtemp(prefix="pyxsh-", dir="/tmp"))  # QEMU's sockets: keep the path short
    guest_dir = root / "data" / "images" / "test-guest"
    guest_dir.mkdir(parents=True)
    shutil.copy(image.kernel, guest_dir / "vmlinuz")
    shutil.copy(image.initrd, guest_dir / "initrd.img")
    net = TestNetns.create("pyxsh")
    (root / "nfs").mkdir()
    (root / "iscsi").mkdir()
    nfs = NfsServer(net, root / "nfs")
    target = IscsiTarget(net, root / "iscsi")
    daemon = new_daemon(root, hypervisor="qemu", network="sim")
    try:
        nfs.start()
        target.start()
        iqn = target.new_target(root / "iscsi", "shared")
        target.add_lun(iqn, 32 * MiB)
        daemon.start()
        yield Shared(daemon, nfs, target, iqn)
        s = session(daemon)
        for vm, rec in s.xenapi.VM.get_all_records().items():
            if rec["power_state"] != "Halted" and not rec["is_control_domain"]:
                s.xenapi.VM.hard_shutdown(vm)
    finally:
        daemon.stop()
        target.stop()
        nfs.stop()
        net.delete()
        shutil.rmtree(root, ignore_errors=True)


def create_sr(x: Any, config: dict[str, str], sr_type: str, name: str) -> str:
    return str(x.SR.create(this_host(x), config, "0", name, "", sr_type, "user", True, {}))


def boot(x: Any, name: str, vdi: str) -> str:
    vm = install(x, name)
    new_vbd(x, vm, vdi, "0", bootable=True)
    rec = wait_task(x, x.Async.VM.start(vm, False, False))
    assert rec["status"] == "success", rec["error_info"]
    return vm


async def run_in(s: XenAPI.Session, vm: str, command: str) -> str:
    location = await asyncio.to_thread(lambda: vt100(s.xenapi, vm))
    return await serial_run(location, str(s._session), command)


async def write_marker(s: XenAPI.Session, vm: str) -> str:
    mark = f"PYXMARK{next(_marks)}{uuid.uuid4().hex[:12]}"
    out = await run_in(s, vm, f"printf {mark} | dd of=/dev/vda conv=fsync 2>/dev/null; dd if=/dev/vda bs=32 count=1")
    assert mark in out, out
    return mark


async def read_disk_head(s: XenAPI.Session, vm: str) -> str:
    return await run_in(s, vm, "dd if=/dev/vda bs=32 count=1 2>/dev/null")


def datapath(shared: Shared, vm: str) -> str:
    """The block driver QEMU opened the guest's disk 0 with (from its command line)."""
    x = session(shared.daemon).xenapi
    argv = Path(f"/proc/{qemu_pid(shared.daemon, x.VM.get_uuid(vm))}/cmdline").read_bytes().split(b"\0")
    nodes = [json.loads(argv[i + 1]) for i, arg in enumerate(argv) if arg == b"-blockdev"]
    return str(next(n["driver"] for n in nodes if n["node-name"] == "disk0-file"))


def halt_and_forget(x: Any, vm: str) -> None:
    if x.VM.get_power_state(vm) != "Halted":
        x.VM.hard_shutdown(vm)
    for vbd in x.VM.get_VBDs(vm):
        x.VBD.destroy(vbd)
    x.VM.destroy(vm)


def records(x: Any) -> tuple[int, int]:
    return len(x.SR.get_all()), len(x.PBD.get_all())


def test_sm_records_and_supported_types(shared: Shared) -> None:
    x = session(shared.daemon).xenapi
    assert {"nfs", "iscsi", "lvm"} <= set(x.SR.get_supported_types())
    sms = {rec["type"]: rec for rec in x.SM.get_all_records().values()}
    assert {"VDI_CREATE", "VDI_CLONE", "VDI_SNAPSHOT", "SR_PROBE"} <= set(sms["nfs"]["capabilities"])
    assert sms["nfs"]["configuration"].keys() >= {"server", "serverpath", "nfsversion"}
    assert "VDI_CREATE" not in sms["iscsi"]["capabilities"] and "VDI_ATTACH" in sms["iscsi"]["capabilities"]
    assert sms["iscsi"]["configuration"].keys() >= {"target", "targetIQN", "port", "chapuser", "SCSIid"}
    assert sms["lvm"]["features"] == {"SR_PROBE": "1"} or sms["lvm"]["features"] == {"SR_PROBE": 1}


def test_bad_device_config_answers_real_errors_and_leaves_nothing(shared: Shared, tmp_path: Path) -> None:
    x = session(shared.daemon).xenapi
    before, exported = records(x), set(shared.nfs.export.iterdir())
    server, export = shared.nfs.server, str(shared.nfs.export)
    cases: list[tuple[dict[str, str], str, str]] = [
        ({"serverpath": export}, "nfs", "SR_BACKEND_FAILURE_102"),
        ({"server": shared.nfs.netns.host_addr, "serverpath": export}, "nfs", "SR_BACKEND_FAILURE_108"),
        ({"server": "no-such-host.invalid", "serverpath": export}, "nfs", "SR_BACKEND_FAILURE_140"),
        ({"server": server, "serverpath": "/no/such/export"}, "nfs", "SR_BACKEND_FAILURE_73"),
        (
            {"target": shared.iscsi.address, "targetIQN": "iqn.2026-01.org.example:none"},
            "iscsi",
            "SR_BACKEND_FAILURE_83",
        ),
        ({"target": shared.iscsi.netns.host_addr, "targetIQN": shared.iqn}, "iscsi", "SR_BACKEND_FAILURE_141"),
    ]
    for config, sr_type, code in cases:
        details = failure(x.SR.create, this_host(x), config, "0", "bad", "", sr_type, "user", True, {})
        assert details[0] == code and len(details) == 4, (config, details)
    backing = tmp_path / "pv.img"
    backing.write_bytes(bytes(16 * MiB))
    loop = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True, capture_output=True, text=True)
    device = loop.stdout.strip()
    try:
        details = failure(x.SR.create, this_host(x), {"device": device}, "0", "lvm", "", "lvm", "user", False, {})
        assert details[0] == "SR_BACKEND_FAILURE_77" and "device-mapper" in details[2], details
    finally:
        subprocess.run(["losetup", "-d", device], check=False)
    assert records(x) == before and set(shared.nfs.export.iterdir()) == exported
    # probe without serverpath: the export list, as XML, in the error (what XenCenter shows)
    details = failure(x.SR.probe, this_host(x), {"server": server}, "nfs", {})
    assert details[0] == "SR_BACKEND_FAILURE_101"
    paths = [e.firstChild.data for e in minidom.parseString(details[3]).getElementsByTagName("Path")]
    assert paths == [export]


async def test_nfs_sr_guest_reads_its_data_through_snapshot_and_clone(shared: Shared) -> None:
    s = session(shared.daemon)
    x = s.xenapi
    sr = create_sr(x, shared.nfs.device_config(), "nfs", "nfs e2e")
    [pbd] = x.SR.get_PBDs(sr)
    assert x.PBD.get_currently_attached(pbd) is True and x.SR.get_shared(sr) is True
    assert int(x.SR.get_physical_size(sr)) > 0 and x.SR.get_type(sr) == "nfs"
    sr_uuid = x.SR.get_uuid(sr)
    assert (shared.nfs.export / sr_uuid).is_dir()  # <serverpath>/<sr-uuid>, as XenServer
    assert x.SR.probe(this_host(x), shared.nfs.device_config(), "nfs", {}).count(sr_uuid) == 1
    vdi = new_vdi(x, sr, 64 * MiB, "nfs boot disk")
    vm = boot(x, "nfs-writer", vdi)
    assert datapath(shared, vm) == "nfs"  # QEMU's own NFS client, no mount anywhere
    mark = await write_marker(s, vm)
    x.VM.hard_shutdown(vm)  # the marker was fsynced through QEMU's nfs driver
    snap = x.VDI.snapshot(vdi, {})
    assert x.VDI.get_is_a_snapshot(snap) is True and x.VDI.get_snapshot_of(snap) == vdi
    clone = x.VDI.clone(snap, {})
    assert int(x.VDI.get_physical_utilisation(clone)) < MiB  # O(1): an empty overlay on the export
    reader = boot(x, "nfs-reader", clone)
    assert mark in await read_disk_head(s, reader)
    # the original keeps its own life: overwritten now, the snapshot still reads the old data
    x.VM.hard_shutdown(reader)
    x.VM.start(vm, False, False)
    second = await write_marker(s, vm)
    x.VM.hard_shutdown(vm)
    x.VBD.destroy(x.VM.get_VBDs(reader)[0])
    new_vbd(x, reader, snap, "0", bootable=True, mode="RO")
    x.VM.start(reader, False, False)
    head = await read_disk_head(s, reader)
    assert mark in head and second not in head
    for v in (reader, vm):
        halt_and_forget(x, v)
    for disk in (clone, snap, vdi):
        x.VDI.destroy(disk)
    x.PBD.unplug(pbd)
    x.SR.destroy(sr)
    assert not (shared.nfs.export / sr_uuid).exists()


async def test_iscsi_sr_guest_boots_from_a_lun_and_a_copy_keeps_its_data(shared: Shared) -> None:
    s = session(shared.daemon)
    x = s.xenapi
    sr = create_sr(x, shared.iscsi.device_config(shared.iqn), "iscsi", "iscsi e2e")
    [lun] = x.SR.get_VDIs(sr)
    assert x.VDI.get_location(lun) == "LUN1" and int(x.VDI.get_virtual_size(lun)) == 32 * MiB
    assert x.VDI.get_sm_config(lun)["targetIQN"] == shared.iqn
    assert failure(x.VDI.clone, lun, {}) == ["SR_OPERATION_NOT_SUPPORTED", sr]
    assert failure(new_vdi, x, sr, MiB)[0] == "SR_OPERATION_NOT_SUPPORTED"
    vm = boot(x, "iscsi-writer", lun)
    assert datapath(shared, vm) == "iscsi"
    mark = await write_marker(s, vm)
    x.VM.hard_shutdown(vm)
    local = x.pool.get_default_SR(x.pool.get_all()[0])
    copy = x.VDI.copy(lun, local)  # out of the LUN through export, into the local SR
    assert x.VDI.get_SR(copy) == local and int(x.VDI.get_virtual_size(copy)) == 32 * MiB
    reader = boot(x, "iscsi-reader", copy)
    assert mark in await read_disk_head(s, reader)
    for v in (reader, vm):
        halt_and_forget(x, v)
    x.VDI.destroy(copy)
    [pbd] = x.SR.get_PBDs(sr)
    x.PBD.unplug(pbd)
    x.SR.forget(sr)
