"""Storage through the XenAPI SDK against real daemons: a file SR on a temporary directory, big thin
VDIs, O(1) clones and snapshots, template provisioning onto the default SR, the real errors for bad
input; then, under QEMU, a disk hot-plugged into a running test guest, seen by the guest's kernel in
/sys/block (read over the serial console), and unplugged again."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import XenAPI

from tests.drivers.conftest import HvGuestImage, hv_guest_image  # noqa: F401 - the fixture, shared
from tests.e2e.test_console import IO_SECONDS, connect
from tests.e2e.test_vm_qemu import BOOT_SECONDS, install, qemu_daemon, session, wait_task  # noqa: F401
from tests.server_harness import Daemon

GiB = 1 << 30
MiB = 1 << 20
NULL = "OpaqueRef:NULL"


def failure(call: Any, *args: Any) -> list[str]:
    with pytest.raises(XenAPI.Failure) as e:
        call(*args)
    return list(e.value.details)


def this_host(x: Any) -> str:
    return str(x.pool.get_master(x.pool.get_all()[0]))


def new_vdi(x: Any, sr: str, size: int, name: str = "disk") -> str:
    # int64 travels as a decimal string: Python's xmlrpc refuses ints beyond 32 bits.
    return str(
        x.VDI.create(
            {"name_label": name, "name_description": "", "SR": sr, "virtual_size": str(size), "type": "user",
             "sharable": False, "read_only": False, "other_config": {}, "xenstore_data": {}, "sm_config": {},
             "tags": []}
        )
    )


def new_vbd(x: Any, vm: str, vdi: str, device: str, **extra: Any) -> str:
    return str(
        x.VBD.create(
            {"VM": vm, "VDI": vdi, "userdevice": device, "bootable": False, "mode": "RW", "type": "Disk",
             "unpluggable": True, "empty": False, "other_config": {}, "qos_algorithm_type": "",
             "qos_algorithm_params": {}, **extra}
        )
    )


def test_file_sr_vdis_clone_snapshot_and_destroy(xapi: XenAPI.Session, tmp_path: Path) -> None:
    x = xapi.xenapi
    where = tmp_path / "file-sr"
    sr = x.SR.create(this_host(x), {"location": str(where)}, "0", "e2e SR", "on a tmp dir", "file", "user", False, {})
    rec = x.SR.get_record(sr)
    assert rec["type"] == "file" and int(rec["physical_size"]) > 0 and where.is_dir()
    [pbd] = rec["PBDs"]
    assert x.PBD.get_currently_attached(pbd) is True
    vdi = new_vdi(x, sr, 10 * GiB, "ten")
    vrec = x.VDI.get_record(vdi)
    assert int(vrec["virtual_size"]) == 10 * GiB and int(vrec["physical_utilisation"]) < 10 * MiB
    assert (where / vrec["location"]).is_file()
    started = time.monotonic()
    clone = x.VDI.clone(vdi, {})
    snap = x.VDI.snapshot(vdi, {})
    assert time.monotonic() - started < 10  # linked clones: no 10 GiB copied
    assert int(x.VDI.get_physical_utilisation(clone)) < 10 * MiB
    srec = x.VDI.get_record(snap)
    assert srec["is_a_snapshot"] is True and srec["snapshot_of"] == vdi and x.VDI.get_snapshots(vdi) == [snap]
    assert set(x.SR.get_VDIs(sr)) == {vdi, clone, snap}
    assert int(x.SR.get_virtual_allocation(sr)) == 30 * GiB
    # bad input gets the real errors
    assert failure(x.SR.destroy, sr) == ["SR_HAS_PBD", sr]
    assert failure(x.VDI.resize, vdi, str(GiB)) == ["VDI_TOO_SMALL", vdi, str(10 * GiB)]
    for v in (clone, snap, vdi):
        x.VDI.destroy(v)
    x.PBD.unplug(pbd)
    x.SR.destroy(sr)
    assert not where.exists()


def test_bad_srs_and_vdis_get_real_errors(xapi: XenAPI.Session, tmp_path: Path) -> None:
    x = xapi.xenapi
    host = this_host(x)
    assert failure(x.SR.create, host, {}, "0", "x", "", "file", "user", False, {})[0] == "SR_BACKEND_FAILURE_94"
    assert failure(x.SR.create, host, {"location": "not/absolute"}, "0", "x", "", "file", "user", False, {})[0] == (
        "SR_BACKEND_FAILURE_1"
    )
    assert failure(x.SR.create, host, {"location": str(tmp_path)}, "0", "x", "", "lvmoiscsi", "user", False, {}) == [
        "SR_UNKNOWN_DRIVER", "lvmoiscsi"]
    assert failure(x.SR.create, host, {"location": str(tmp_path / "no")}, "0", "x", "", "iso", "iso", False, {})[
        0] == "SR_BACKEND_FAILURE_226"
    assert not [r for r in x.SR.get_all_records().values() if r["name_label"] == "x"]
    [iso] = x.SR.get_by_name_label("ISO library")
    sr = x.pool.get_default_SR(x.pool.get_all()[0])
    assert failure(new_vdi, x, iso, GiB) == ["SR_OPERATION_NOT_SUPPORTED", iso]
    assert failure(new_vdi, x, sr, -1)[0] == "SR_BACKEND_FAILURE_79"
    assert failure(new_vdi, x, sr, 1 << 60)[0] == "VDI_TOO_LARGE"
    assert sorted(x.SR.get_supported_types()) == ["file", "iscsi", "iso", "lvm", "nfs", "sim"]


def test_provision_other_install_media_on_the_default_sr(xapi: XenAPI.Session) -> None:
    x = xapi.xenapi
    [template] = [t for t in x.VM.get_by_name_label("Other install media") if x.VM.get_is_a_template(t)]
    vm = x.VM.clone(template, "e2e provisioned")
    x.VM.provision(vm)
    [vbd] = x.VM.get_VBDs(vm)
    vdi = x.VBD.get_VDI(vbd)
    rec = x.VDI.get_record(vdi)
    assert int(rec["virtual_size"]) == 8 * GiB and rec["type"] == "system"
    assert rec["SR"] == x.pool.get_default_SR(x.pool.get_all()[0])
    assert x.VBD.get_bootable(vbd) is True and x.VBD.get_userdevice(vbd) == "0"
    # VM.clone gives the clone its own (linked) disk
    clone = x.VM.clone(vm, "e2e provisioned clone")
    [cvbd] = x.VM.get_VBDs(clone)
    assert x.VBD.get_VDI(cvbd) not in (vdi, NULL)
    for v in (clone, vm):
        for b in x.VM.get_VBDs(v):
            disk = x.VBD.get_VDI(b)
            x.VDI.destroy(disk)
        x.VM.destroy(v)


# ------------------------------------------------------------------------------------------- QEMU

_markers = itertools.count(100)


async def serial_run(location: str, session_ref: str, command: str) -> str:
    """Run a command on the guest's serial shell over the vt100 console and return its output. The
    markers are computed by the guest's shell, so the echoed command line never matches them."""
    n = next(_markers)
    begin, end = f"@@B{n}@@", f"@@E{n}@@"
    tunnel = await connect(location, f"&session_id={session_ref}")
    try:
        assert tunnel.status == 200
        seen = ""

        def answered() -> bool:  # the first keystrokes may be lost while the shell starts: both markers
            return begin in seen and end in seen.rsplit(begin, 1)[1]

        deadline = time.monotonic() + BOOT_SECONDS
        while not answered():
            assert time.monotonic() < deadline, f"no answer from the serial shell: {seen[-500:]!r}"
            tunnel.writer.write(f"\necho @@B$(({n}+0))@@; {command}; echo @@E$(({n}+0))@@\n".encode())
            await tunnel.writer.drain()
            try:
                async with asyncio.timeout(5.0):
                    while not answered():
                        chunk = await tunnel.reader.read(4096)
                        assert chunk, "the serial console closed"
                        seen += chunk.decode(errors="replace")
            except TimeoutError:
                continue  # still booting: type it again
        return seen.rsplit(begin, 1)[1].split(end, 1)[0].replace("\r", "").strip()
    finally:
        tunnel.close()


@pytest.fixture(scope="module")
def running_guest(qemu_daemon: Daemon) -> Iterator[tuple[XenAPI.Session, str]]:  # noqa: F811
    s = session(qemu_daemon)
    x = s.xenapi
    vm = install(x, "storage-e2e")
    rec = wait_task(x, x.Async.VM.start(vm, False, False))
    assert rec["status"] == "success", rec["error_info"]
    yield s, vm
    s("close")()
    # A test may have restarted the daemon (sessions do not survive that): clean up in a new one.
    clean = session(qemu_daemon)
    try:
        if clean.xenapi.VM.get_power_state(vm) != "Halted":
            clean.xenapi.VM.hard_shutdown(vm)
        clean.xenapi.session.logout()
    finally:
        clean("close")()


def vt100(x: Any, vm: str) -> str:
    for ref in x.VM.get_consoles(vm):
        if x.console.get_protocol(ref) == "vt100":
            return str(x.console.get_location(ref))
    raise AssertionError("no vt100 console")


async def guest_block_devices(s: XenAPI.Session, vm: str) -> dict[str, int]:
    """/sys/block/vd* as the guest's kernel sees them: name -> size in 512-byte sectors."""
    out = await asyncio.to_thread(lambda: vt100(s.xenapi, vm))
    text = await serial_run(out, str(s._session), "for d in /sys/block/vd*; do echo $d $(cat $d/size); done")
    found = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].startswith("/sys/block/vd") and parts[1].isdigit():
            found[parts[0].rsplit("/", 1)[1]] = int(parts[1])
    return found


async def wait_devices(s: XenAPI.Session, vm: str, predicate: Any, what: str) -> dict[str, int]:
    deadline = time.monotonic() + IO_SECONDS
    while True:
        devices = await guest_block_devices(s, vm)
        if predicate(devices):
            return devices
        assert time.monotonic() < deadline, f"{what}: the guest sees {devices}"
        await asyncio.sleep(1.0)


async def test_hotplugged_disk_is_seen_by_the_guest(running_guest: tuple[XenAPI.Session, str]) -> None:
    s, vm = running_guest
    x = s.xenapi
    assert await wait_devices(s, vm, lambda d: d == {}, "no disk at first") == {}
    sr = x.pool.get_default_SR(x.pool.get_all()[0])
    vdi = new_vdi(x, sr, 96 * MiB, "hot")
    vbd = new_vbd(x, vm, vdi, "1")
    assert x.VBD.get_currently_attached(vbd) is False
    assert wait_task(x, x.Async.VBD.plug(vbd))["status"] == "success"
    assert x.VBD.get_currently_attached(vbd) is True and x.VBD.get_device(vbd) == "xvdb"
    seen = await wait_devices(s, vm, lambda d: len(d) == 1, "the hot-plugged disk")
    assert list(seen.values()) == [96 * MiB // 512]
    # a disk in use cannot be destroyed, its VBD not removed, its SR not unplugged
    assert failure(x.VDI.destroy, vdi) == ["VDI_IN_USE", vdi, "destroy"]
    assert failure(x.VBD.destroy, vbd)[0] == "OPERATION_NOT_ALLOWED"
    [pbd] = x.SR.get_PBDs(sr)
    assert failure(x.PBD.unplug, pbd) == ["VDI_IN_USE", vdi, "unplug"]
    # nor attached read-write to a second VM while this one writes it
    other = install(x, "storage-e2e-2")
    new_vbd(x, other, vdi, "0")
    assert failure(x.VM.start, other, False, False) == ["VDI_IN_USE", vdi, "attach"]
    x.VBD.set_unpluggable(vbd, False)
    assert failure(x.VBD.unplug, vbd) == ["VBD_NOT_UNPLUGGABLE", vbd]
    x.VBD.set_unpluggable(vbd, True)
    x.VBD.unplug(vbd)
    assert x.VBD.get_currently_attached(vbd) is False
    await wait_devices(s, vm, lambda d: d == {}, "the unplugged disk to go")
    assert failure(x.VBD.unplug, vbd) == ["DEVICE_ALREADY_DETACHED", vbd]
    x.VBD.destroy(vbd)
    for b in x.VM.get_VBDs(other):
        x.VBD.destroy(b)
    x.VM.destroy(other)
    x.VDI.destroy(vdi)


async def test_a_guest_boots_with_its_disk_and_keeps_it_across_a_daemon_restart(qemu_daemon: Daemon) -> None:  # noqa: F811
    s = session(qemu_daemon)
    x = s.xenapi
    vm = install(x, "storage-e2e-boot")
    sr = x.pool.get_default_SR(x.pool.get_all()[0])
    vdi = new_vdi(x, sr, 32 * MiB, "boot disk")
    vbd = new_vbd(x, vm, vdi, "0")
    rec = wait_task(x, x.Async.VM.start(vm, False, False))
    assert rec["status"] == "success", rec["error_info"]
    assert x.VBD.get_currently_attached(vbd) is True and x.VBD.get_device(vbd) == "xvda"
    seen = await wait_devices(s, vm, lambda d: len(d) == 1, "the disk it booted with")
    assert list(seen.values()) == [32 * MiB // 512]
    s("close")()
    # the guest outlives the daemon; the new one knows the disk is still in use and can unplug it
    await asyncio.to_thread(qemu_daemon.stop)
    await asyncio.to_thread(qemu_daemon.start)
    s = session(qemu_daemon)
    x = s.xenapi
    try:
        assert x.VM.get_power_state(vm) == "Running" and x.VBD.get_currently_attached(vbd) is True
        assert failure(x.VDI.destroy, vdi) == ["VDI_IN_USE", vdi, "destroy"]
        x.VBD.unplug(vbd)
        await wait_devices(s, vm, lambda d: d == {}, "the unplugged disk to go")
        x.VBD.plug(vbd)
        await wait_devices(s, vm, lambda d: len(d) == 1, "the disk plugged back")
        x.VM.hard_shutdown(vm)
        assert x.VBD.get_currently_attached(vbd) is False
        x.VDI.destroy(vdi)
        assert x.VM.get_VBDs(vm) == []
        x.VM.destroy(vm)
    finally:
        s("close")()
