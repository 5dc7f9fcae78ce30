"""Disk data through HTTP against a real daemon and a real QEMU guest, with the official XenAPI SDK
for the calls and http.client / urllib for the transfers (as scripts around xapi do):

a file SR, a 10 GiB VDI filled by PUT /import_raw_vdi (a qcow2 with data at both ends), an O(1)
clone and a snapshot, the VDI hot-plugged into a running test guest whose kernel shows the device
and whose own dd reads the imported bytes back (guest agent guest-exec), unplugged, exported as VHD
and as qcow2 and each imported into a new VDI byte-identical (qemu-img compare); then an ISO made
with genisoimage inserted into the guest's CD drive, read by the guest, and ejected.

SR/VDI basics and hot-plug errors are tests/e2e/test_storage_e2e.py's; HTTP errors are covered in
process by tests/api/test_vdi_transfer_errors.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import XenAPI

from pyxapi.drivers.hypervisor.qga import qga_call
from tests.drivers.conftest import HvGuestImage, hv_guest_image  # noqa: F401 - the fixture, shared
from tests.e2e.test_vm_qemu import BOOT_SECONDS, install, qemu_daemon, session, wait_task  # noqa: F401
from tests.server_harness import Daemon

GiB = 1 << 30
MiB = 1 << 20
DISK = 10 * GiB
HEAD_OFFSET, HEAD_LEN = 0, 4 * MiB
TAIL_OFFSET, TAIL_LEN = 9 * GiB + 3 * MiB, MiB
TRANSFER_SECONDS = 300.0  # a 10 GiB (mostly empty) disk each way on a loaded 2-core machine
AGENT_SECONDS = 60.0


@dataclass
class Guest:
    daemon: Daemon
    session: XenAPI.Session
    vm: str
    uuid: str
    cd: str  # the empty CD drive the guest was started with (CDs cannot be hot-plugged)
    work: Path

    @property
    def x(self) -> Any:
        return self.session.xenapi

    @property
    def session_ref(self) -> str:
        return str(self.session._session)


@pytest.fixture(scope="module")
def guest(qemu_daemon: Daemon) -> Iterator[Guest]:  # noqa: F811
    s = session(qemu_daemon)
    x = s.xenapi
    vm = install(x, "storage-http-e2e")
    cd = x.VBD.create(
        {
            "VM": vm,
            "VDI": "OpaqueRef:NULL",
            "userdevice": "3",
            "bootable": False,
            "mode": "RO",
            "type": "CD",
            "unpluggable": True,
            "empty": True,
            "other_config": {},
            "qos_algorithm_type": "",
            "qos_algorithm_params": {},
        }
    )
    rec = wait_task(x, x.Async.VM.start(vm, False, False))
    assert rec["status"] == "success", rec["error_info"]
    work = Path(tempfile.mkdtemp(prefix="pyxh-", dir="/tmp"))
    try:
        yield Guest(qemu_daemon, s, vm, x.VM.get_uuid(vm), cd, work)
    finally:
        try:
            if x.VM.get_power_state(vm) != "Halted":
                x.VM.hard_shutdown(vm)
            x.session.logout()
        finally:
            s("close")()
            shutil.rmtree(work, ignore_errors=True)


# ---- the guest, through its agent ------------------------------------------------------------------
def guest_sh(g: Guest, command: str, check: bool = True) -> str:
    """Run a read-only shell command in the guest (qemu-guest-agent guest-exec) and return its
    stdout. The agent may still be starting, be restarted by the guest's init, or have its channel
    held by the daemon's own poll: the whole command is tried again then (bounded)."""
    sock = g.daemon.data_dir / "run" / "qemu" / g.uuid / "qga"

    async def once() -> dict[str, Any]:
        args = {"path": "/bin/sh", "arg": ["-c", command], "capture-output": True}
        started = await qga_call(sock, g.uuid, "guest-exec", args)
        while True:
            status = await qga_call(sock, g.uuid, "guest-exec-status", {"pid": started["pid"]}, timeout=30.0)
            if status.get("exited"):
                return status  # type: ignore[no-any-return]
            await asyncio.sleep(0.2)

    async def run() -> dict[str, Any]:
        deadline = time.monotonic() + AGENT_SECONDS
        while True:
            try:
                return await asyncio.wait_for(once(), AGENT_SECONDS)
            except Exception:  # the agent's errors: unavailable, lost pid, timeout
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1.0)

    status = asyncio.run(run())
    out = base64.b64decode(status.get("out-data", "")).decode(errors="replace")
    err = base64.b64decode(status.get("err-data", "")).decode(errors="replace")
    assert not check or status.get("exitcode") == 0, (command, status.get("exitcode"), out, err)
    return out


def guest_disks(g: Guest) -> dict[str, int]:
    """/sys/block/vd* as the guest's kernel sees them: name -> size in 512-byte sectors."""
    out = guest_sh(g, "for d in /sys/block/vd*; do [ -e $d ] && echo ${d##*/} $(cat $d/size); done; true")
    return {name: int(size) for name, size in (line.split() for line in out.splitlines() if line.strip())}


def wait_disks(g: Guest, predicate: Any, what: str) -> dict[str, int]:
    deadline = time.monotonic() + AGENT_SECONDS
    while True:
        disks = guest_disks(g)
        if predicate(disks):
            return disks
        assert time.monotonic() < deadline, f"{what}: the guest sees {disks}"
        time.sleep(1.0)


def guest_sha256(g: Guest, device: str, offset: int, length: int) -> str:
    out = guest_sh(
        g, f"dd if=/dev/{device} bs={MiB} skip={offset // MiB} count={length // MiB} 2>/dev/null | sha256sum"
    )
    return out.split()[0]


# ---- HTTP transfers, the way a script around xapi does them -----------------------------------------
def put_image(g: Guest, query: str, path: Path, task: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", g.daemon.port, timeout=TRANSFER_SECONDS)
    with open(path, "rb") as body:
        conn.request(
            "PUT",
            f"/import_raw_vdi?session_id={g.session_ref}&task_id={task}&{query}",
            body,
            {"Content-Length": str(path.stat().st_size), "Content-Type": "application/octet-stream"},
        )
        reply = conn.getresponse()
        reply.read()
    conn.close()
    return reply


def import_file(g: Guest, vdi: str, path: Path, fmt: str) -> dict[str, Any]:
    x = g.x
    task = x.task.create(f"import {path.name}", "")
    reply = put_image(g, f"vdi={vdi}&format={fmt}", path, task)
    assert reply.status == 200 and reply.getheader("task-id") == task
    rec = wait_task(x, task, TRANSFER_SECONDS)
    assert rec["status"] == "success", rec["error_info"]
    assert rec["result"] == f"<value>{vdi}</value>" and float(rec["progress"]) == 1.0
    x.task.destroy(task)
    return rec  # type: ignore[no-any-return]


def export_file(g: Guest, vdi: str, fmt: str, dest: Path) -> None:
    url = f"{g.daemon.url}export_raw_vdi?session_id={g.session_ref}&vdi={vdi}&format={fmt}"
    with urllib.request.urlopen(url, timeout=TRANSFER_SECONDS) as reply, open(dest, "wb") as out:
        assert reply.status == 200
        length = int(reply.headers["Content-Length"])
        shutil.copyfileobj(reply, out, MiB)
        task = reply.headers["task-id"]
    assert dest.stat().st_size == length
    rec = wait_task(g.x, task, TRANSFER_SECONDS)
    assert rec["status"] == "success", rec["error_info"]


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=TRANSFER_SECONDS, check=False)


def identical(a: Path, a_fmt: str, b: Path, b_fmt: str) -> None:
    qfmt = {"vhd": "vpc"}
    res = qemu_img("compare", "-f", qfmt.get(a_fmt, a_fmt), "-F", qfmt.get(b_fmt, b_fmt), str(a), str(b))
    assert res.returncode == 0, f"{a} and {b} differ: {res.stdout} {res.stderr}"
    sizes = [
        json.loads(qemu_img("info", "--output=json", "-f", qfmt.get(f, f), str(p)).stdout)["virtual-size"]
        for p, f in ((a, a_fmt), (b, b_fmt))
    ]
    assert sizes == [DISK, DISK]


def new_vdi(x: Any, sr: str, name: str) -> str:
    return str(
        x.VDI.create(
            {
                "name_label": name,
                "name_description": "",
                "SR": sr,
                "virtual_size": str(DISK),
                "type": "user",
                "sharable": False,
                "read_only": False,
                "other_config": {},
                "xenstore_data": {},
                "sm_config": {},
                "tags": [],
            }
        )
    )


# ---- the flow -----------------------------------------------------------------------------------------
def test_import_clone_snapshot_hotplug_export_and_back(guest: Guest) -> None:
    g, x = guest, guest.x
    host = x.pool.get_master(x.pool.get_all()[0])
    where = g.work / "sr"
    sr = x.SR.create(host, {"location": str(where)}, "0", "http e2e SR", "", "file", "user", False, {})
    vdi = new_vdi(x, sr, "ten")
    # the source: a 10 GiB qcow2 with recognisable data at its start and past the 9 GiB mark
    head, tail = os.urandom(HEAD_LEN), os.urandom(TAIL_LEN)
    (g.work / "head").write_bytes(head)
    (g.work / "tail").write_bytes(tail)
    source = g.work / "source.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(source), str(DISK)).returncode == 0
    for name, offset, length in (("head", HEAD_OFFSET, HEAD_LEN), ("tail", TAIL_OFFSET, TAIL_LEN)):
        res = subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", f"write -s {g.work / name} {offset} {length}", str(source)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert res.returncode == 0, res.stderr
    import_file(g, vdi, source, "qcow2")
    location = where / x.VDI.get_location(vdi)
    identical(location, "qcow2", source, "qcow2")

    # O(1) clone and a snapshot of the 10 GiB disk
    started = time.monotonic()
    clone = x.VDI.clone(vdi, {})
    took = time.monotonic() - started
    assert took < 10.0 and int(x.VDI.get_physical_utilisation(clone)) < 16 * MiB
    snap = x.VDI.snapshot(vdi, {})
    assert x.VDI.get_is_a_snapshot(snap) is True and x.VDI.get_snapshot_of(snap) == vdi
    identical(where / x.VDI.get_location(clone), "qcow2", source, "qcow2")

    # hot-plug into the running guest: its kernel has the device and reads the imported bytes
    before = wait_disks(g, lambda d: True, "a first look")
    vbd = x.VBD.create(
        {
            "VM": g.vm,
            "VDI": vdi,
            "userdevice": "autodetect",
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
    rec = wait_task(x, x.Async.VBD.plug(vbd))
    assert rec["status"] == "success", rec["error_info"]
    seen = wait_disks(g, lambda d: len(d) == len(before) + 1, "the hot-plugged disk")
    [device] = set(seen) - set(before)
    assert seen[device] == DISK // 512
    assert guest_sha256(g, device, HEAD_OFFSET, HEAD_LEN) == hashlib.sha256(head).hexdigest()
    assert guest_sha256(g, device, TAIL_OFFSET - 3 * MiB, 4 * MiB) == hashlib.sha256(bytes(3 * MiB) + tail).hexdigest()
    # the guest holds it read-write: no export or import meanwhile
    assert http_status(g, f"/export_raw_vdi?session_id={g.session_ref}&vdi={vdi}") == 500
    x.VBD.unplug(vbd)
    wait_disks(g, lambda d: device not in d, "the unplugged disk to go")
    x.VBD.destroy(vbd)

    # out as VHD and as qcow2, and each back into a new VDI, byte-identical
    for fmt in ("vhd", "qcow2"):
        exported = g.work / f"export.{fmt}"
        export_file(g, vdi, fmt, exported)
        identical(exported, fmt, source, "qcow2")
        back = new_vdi(x, sr, f"back from {fmt}")
        import_file(g, back, exported, fmt)
        identical(where / x.VDI.get_location(back), "qcow2", location, "qcow2")
        exported.unlink()
        x.VDI.destroy(back)
    for v in (snap, clone, vdi):
        x.VDI.destroy(v)
    [pbd] = x.SR.get_PBDs(sr)
    x.PBD.unplug(pbd)
    x.SR.destroy(sr)


def http_status(g: Guest, target: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", g.daemon.port, timeout=60)
    conn.request("GET", target)
    reply = conn.getresponse()
    reply.read()
    conn.close()
    return reply.status


def test_insert_and_eject_an_iso(guest: Guest) -> None:
    g, x = guest, guest.x
    tree = g.work / "iso-tree"
    tree.mkdir()
    (tree / "hello.txt").write_text("hello from an ISO\n")
    library = g.daemon.data_dir / "iso"
    made = subprocess.run(
        ["genisoimage", "-quiet", "-r", "-V", "PYXAPI", "-o", str(library / "e2e.iso"), str(tree)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    [iso_sr] = x.SR.get_by_name_label("ISO library")
    x.SR.scan(iso_sr)
    [iso] = x.VDI.get_by_name_label("e2e.iso")
    x.VBD.insert(g.cd, iso)
    assert x.VBD.get_empty(g.cd) is False and x.VBD.get_VDI(g.cd) == iso
    # the guest's kernel notices the new medium when the drive is next opened
    read_file = (
        "mkdir -p /media/cd && mount -t iso9660 -o ro /dev/sr0 /media/cd && cat /media/cd/hello.txt; umount /media/cd"
    )
    assert guest_until(g, read_file, lambda out: out == "hello from an ISO\n") == "hello from an ISO\n"
    x.VBD.eject(g.cd)
    assert x.VBD.get_empty(g.cd) is True and x.VBD.get_VDI(g.cd) == "OpaqueRef:NULL"
    probe = "dd if=/dev/sr0 of=/dev/null bs=2048 count=1 2>/dev/null && echo medium || echo none"
    assert guest_until(g, probe, lambda out: out.strip() == "none").strip() == "none"


def guest_until(g: Guest, command: str, done: Any) -> str:
    deadline = time.monotonic() + AGENT_SECONDS
    while True:
        out = guest_sh(g, command, check=False)
        if done(out) or time.monotonic() > deadline:
            return out
        time.sleep(1.0)
