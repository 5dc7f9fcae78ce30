"""XVA import/export against a real daemon (simulated hypervisor, real file SR, qemu-img/qemu-nbd):
a hand-built archive following the format description imports; exports import back identical,
compressed or not; metadata-only archives; VM.import from a URL; and every kind of bad archive fails
with xapi's error, leaving no VM, VDI or file behind."""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import XenAPI
import xxhash

from tests.server_harness import READER, ROOT_PASSWORD, Daemon, new_daemon

MiB = 1 << 20
NULL = "OpaqueRef:NULL"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = new_daemon(tmp_path_factory.mktemp("xva"))
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def x(daemon: Daemon) -> Iterator[Any]:
    s = XenAPI.Session(daemon.url)
    s.xenapi.login_with_password("root", ROOT_PASSWORD, "2.23", "xva-e2e")
    yield s.xenapi
    s.xenapi.session.logout()


# ----------------------------------------------------------------------------------------- helpers


def request(
    daemon: Daemon, method: str, path: str, body: bytes | None = None, chunked: bool = False, timeout: float = 300.0
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=timeout)
    try:
        if chunked:
            conn.request(method, path, body=iter([body or b""]), encode_chunked=True)
        else:
            conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def session_ref(daemon: Daemon) -> tuple[Any, str]:
    s = XenAPI.Session(daemon.url)
    s.xenapi.login_with_password("root", ROOT_PASSWORD, "2.23", "xva-e2e")
    return s.xenapi, str(s._session)


def default_sr(x: Any) -> str:
    return str(x.pool.get_default_SR(x.pool.get_all()[0]))


def sr_dir(daemon: Daemon, x: Any, sr: str) -> Path:
    for pbd in x.SR.get_PBDs(sr):
        location = x.PBD.get_device_config(pbd).get("location")
        if location:
            return Path(location)
    return daemon.data_dir / "sr" / x.SR.get_uuid(sr)


def new_vm(x: Any, name: str, disks: list[int], nic: bool = True) -> tuple[str, list[str]]:
    vm = x.VM.create(
        {
            "name_label": name,
            "memory_static_max": str(128 * MiB),
            "memory_dynamic_max": str(128 * MiB),
            "memory_dynamic_min": str(128 * MiB),
            "memory_static_min": str(16 * MiB),
            "VCPUs_max": "1",
            "VCPUs_at_startup": "1",
            "other_config": {"note": "xva e2e"},
        }
    )
    vdis = []
    for n, size in enumerate(disks):
        vdi = x.VDI.create(
            {
                "name_label": f"{name} disk {n}",
                "name_description": "",
                "SR": default_sr(x),
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
                "userdevice": str(n),
                "bootable": n == 0,
                "mode": "RW",
                "type": "Disk",
                "unpluggable": True,
                "empty": False,
                "other_config": {},
                "qos_algorithm_type": "",
                "qos_algorithm_params": {},
            }
        )
        vdis.append(vdi)
    if nic:
        [net] = x.network.get_by_name_label("pyxapi internal network")
        x.VIF.create(
            {
                "VM": vm,
                "network": net,
                "device": "0",
                "MAC": "",
                "MTU": "1500",
                "other_config": {},
                "qos_algorithm_type": "",
                "qos_algorithm_params": {},
            }
        )
    return vm, vdis


def vdi_path(daemon: Daemon, x: Any, vdi: str) -> Path:
    return sr_dir(daemon, x, x.VDI.get_SR(vdi)) / x.VDI.get_location(vdi)


def write_pattern(path: Path, *writes: str) -> None:
    fmt = "qcow2" if path.suffix == ".qcow2" else "raw"
    args = ["qemu-io", "-f", fmt]
    for w in writes:
        args += ["-c", w]
    subprocess.run([*args, str(path)], check=True, capture_output=True)


def raw_bytes(path: Path) -> bytes:
    fmt = "qcow2" if path.suffix == ".qcow2" else "raw"
    out = path.parent / f".{path.name}.cmp.raw"
    try:
        subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", str(path), str(out)], check=True)
        return out.read_bytes()
    finally:
        out.unlink(missing_ok=True)


def member_names(archive: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as t:
        return [m.name for m in t.getmembers()]


def task_of(x: Any, headers: dict[str, str]) -> dict[str, Any]:
    return dict(x.task.get_record(headers["task-id"]))


def vm_refs(result: str) -> list[str]:
    return [part.split("</value>")[0] for part in result.split("<value>") if part.startswith("OpaqueRef:")]


def counts(x: Any, daemon: Daemon) -> tuple[int, int, int, int, list[str]]:
    files = sorted(p.name for p in sr_dir(daemon, x, default_sr(x)).iterdir())
    return len(x.VM.get_all()), len(x.VDI.get_all()), len(x.VBD.get_all()), len(x.network.get_all()), files


def scratch_is_empty(daemon: Daemon) -> bool:
    tmp = daemon.data_dir / "tmp"
    return not tmp.exists() or not [p for p in tmp.rglob("*") if p.is_file()]


# ------------------------------------------------------------------------------- a hand-built XVA


def hand_built_xva(
    disk: bytes, *, xxhash_for: frozenset[int] = frozenset(), vsn: str = "2", size: int | None = None
) -> bytes:
    """An XVA written from the format description alone (tarfile, hashlib, xxhash): one VM, one disk
    with a hole, one NIC on a network called 'pyxapi internal network'."""
    size = len(disk) if size is None else size
    ova = f"""<?xml version="1.0"?>
<value><struct>
<member><name>version</name><value><struct>
<member><name>hostname</name><value>handmade</value></member><member><name>date</name><value>2024-05-01</value></member>
<member><name>product_version</name><value>8.2.1</value></member>
<member><name>product_brand</name><value>XCP-ng</value></member>
<member><name>build_number</name><value>x</value></member>
<member><name>xapi_major</name><value>1</value></member><member><name>xapi_minor</name><value>249</value></member>
<member><name>export_vsn</name><value>{vsn}</value></member></struct></value></member>
<member><name>objects</name><value><array><data>
<value><struct><member><name>class</name><value>VM</value></member><member><name>id</name><value>Ref:1</value></member>
<member><name>snapshot</name><value><struct>
<member><name>uuid</name><value>0b4b9f6a-1111-2222-3333-444455556666</value></member>
<member><name>name_label</name><value>handmade VM</value></member>
<member><name>name_description</name><value>built by a test from the format description</value></member>
<member><name>power_state</name><value>Halted</value></member>
<member><name>memory_static_max</name><value>134217728</value></member>
<member><name>memory_dynamic_max</name><value>134217728</value></member>
<member><name>memory_dynamic_min</name><value>134217728</value></member>
<member><name>memory_static_min</name><value>16777216</value></member>
<member><name>VCPUs_max</name><value>1</value></member><member><name>VCPUs_at_startup</name><value>1</value></member>
<member><name>is_a_template</name><value><boolean>0</boolean></value></member>
<member><name>other_config</name><value><struct><member><name>mac_seed</name><value>aaaa</value></member>
</struct></value></member>
<member><name>VBDs</name><value><array><data><value>Ref:2</value></data></array></value></member>
<member><name>VIFs</name><value><array><data><value>Ref:5</value></data></array></value></member>
<member><name>some_future_field</name><value>ignored</value></member>
</struct></value></member></struct></value>
<value><struct><member><name>class</name><value>VBD</value></member><member><name>id</name><value>Ref:2</value></member>
<member><name>snapshot</name><value><struct>
<member><name>VM</name><value>Ref:1</value></member><member><name>VDI</name><value>Ref:3</value></member>
<member><name>userdevice</name><value>0</value></member><member><name>bootable</name><value><boolean>1</boolean></value></member>
<member><name>mode</name><value>RW</value></member><member><name>type</name><value>Disk</value></member>
<member><name>currently_attached</name><value><boolean>0</boolean></value></member>
</struct></value></member></struct></value>
<value><struct><member><name>class</name><value>VDI</value></member><member><name>id</name><value>Ref:3</value></member>
<member><name>snapshot</name><value><struct>
<member><name>name_label</name><value>handmade disk</value></member>
<member><name>SR</name><value>Ref:4</value></member><member><name>virtual_size</name><value>{size}</value></member>
<member><name>type</name><value>system</value></member><member><name>location</name><value>elsewhere.vhd</value></member>
</struct></value></member></struct></value>
<value><struct><member><name>class</name><value>SR</value></member><member><name>id</name><value>Ref:4</value></member>
<member><name>snapshot</name><value><struct><member><name>uuid</name><value>7f000000-0000-0000-0000-000000000001</value></member>
<member><name>content_type</name><value>user</value></member></struct></value></member></struct></value>
<value><struct><member><name>class</name><value>VIF</value></member><member><name>id</name><value>Ref:5</value></member>
<member><name>snapshot</name><value><struct>
<member><name>VM</name><value>Ref:1</value></member><member><name>network</name><value>Ref:6</value></member>
<member><name>device</name><value>0</value></member><member><name>MAC</name><value>aa:bb:cc:00:11:22</value></member>
<member><name>MTU</name><value>1500</value></member></struct></value></member></struct></value>
<value><struct><member><name>class</name><value>network</value></member><member><name>id</name><value>Ref:6</value></member>
<member><name>snapshot</name><value><struct>
<member><name>name_label</name><value>pyxapi internal network</value></member>
<member><name>bridge</name><value>xenbr0</value></member></struct></value></member></struct></value>
</data></array></value></member></struct></value>
""".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))

        add("ova.xml", ova)
        count = (len(disk) + MiB - 1) // MiB
        for n in range(count):
            chunk = disk[n * MiB : (n + 1) * MiB]
            if n not in (0, count - 1) and not chunk.strip(b"\0"):
                continue  # sparse: all-zero chunks are left out
            add(f"Ref:3/{n:08d}", chunk)
            if n in xxhash_for:
                add(f"Ref:3/{n:08d}.xxhash", xxhash.xxh64(chunk).hexdigest().upper().encode())
            else:
                add(f"Ref:3/{n:08d}.checksum", hashlib.sha1(chunk).hexdigest().encode())
    return buf.getvalue()


def sample_disk() -> bytes:
    disk = bytearray(5 * MiB)
    disk[0:16] = b"first chunk here"
    disk[3 * MiB + 100 : 3 * MiB + 100 + 64 * 1024] = os.urandom(64 * 1024)
    disk[-8:] = b"the end!"
    return bytes(disk)


def test_hand_built_xva_imports(daemon: Daemon, x: Any) -> None:
    disk = sample_disk()
    xva = hand_built_xva(disk, xxhash_for=frozenset({3}))
    _, session = session_ref(daemon)
    status, headers, body = request(daemon, "PUT", f"/import?session_id={session}", xva)
    assert status == 200, body
    task = task_of(x, headers)
    assert task["status"] == "success" and task["result"] == body.decode()
    [vm] = vm_refs(task["result"])
    rec = x.VM.get_record(vm)
    assert rec["name_label"] == "handmade VM" and rec["power_state"] == "Halted"
    assert rec["uuid"] != "0b4b9f6a-1111-2222-3333-444455556666"  # a new VM, not a restore
    assert rec["other_config"]["mac_seed"] != "aaaa" and rec["current_operations"] == {}
    assert "start" in rec["allowed_operations"]
    [vbd] = rec["VBDs"]
    vdi = x.VBD.get_VDI(vbd)
    assert x.VDI.get_SR(vdi) == default_sr(x) and int(x.VDI.get_virtual_size(vdi)) == len(disk)
    assert x.VDI.get_type(vdi) == "system" and x.VBD.get_bootable(vbd) is True
    assert raw_bytes(vdi_path(daemon, x, vdi)) == disk
    [vif] = rec["VIFs"]
    assert x.network.get_name_label(x.VIF.get_network(vif)) == "pyxapi internal network"
    assert x.VIF.get_MAC(vif) != "aa:bb:cc:00:11:22"  # regenerated unless restoring
    # restore=true keeps the identity (uuid, MAC) — the VM above has a new uuid, so nothing clashes
    status, headers, body = request(daemon, "PUT", f"/import?session_id={session}&restore=true", xva)
    assert status == 200, body
    [restored] = vm_refs(body.decode())
    assert x.VM.get_uuid(restored) == "0b4b9f6a-1111-2222-3333-444455556666"
    assert x.VIF.get_MAC(x.VM.get_VIFs(restored)[0]) == "aa:bb:cc:00:11:22"
    for v in (vm, restored):
        drop_vm(x, v)


def drop_vm(x: Any, vm: str) -> None:
    vdis = [x.VBD.get_VDI(b) for b in x.VM.get_VBDs(vm) if x.VBD.get_type(b) == "Disk"]
    x.VM.destroy(vm)
    for vdi in vdis:
        x.VDI.destroy(vdi)


# --------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("compression", ["", "gzip", "zstd", "true"])
def test_export_then_import_is_identical(daemon: Daemon, x: Any, compression: str) -> None:
    vm, vdis = new_vm(x, f"rt-{compression or 'plain'}", [9 * MiB, 3 * MiB + 512])
    write_pattern(vdi_path(daemon, x, vdis[0]), "write -P 0xab 1M 1M", "write -P 0x3c 8M 4k")
    write_pattern(vdi_path(daemon, x, vdis[1]), "write -P 0x77 3M 512")
    _, session = session_ref(daemon)
    query = f"&use_compression={compression}" if compression else ""
    status, headers, xva = request(daemon, "GET", f"/export?uuid={x.VM.get_uuid(vm)}&session_id={session}{query}")
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    assert task_of(x, headers)["status"] == "success"
    assert x.VM.get_current_operations(vm) == {} and "export" in x.VM.get_allowed_operations(vm)
    magic = {"gzip": b"\x1f\x8b", "true": b"\x1f\x8b", "zstd": b"\x28\xb5\x2f\xfd"}.get(compression)
    if magic:
        assert xva.startswith(magic)
    else:  # plain: a tar with ova.xml first and sparse chunks (the zero ones are not there)
        names = member_names(xva)
        assert names[0] == "ova.xml" and all(n.startswith("Ref:") for n in names[1:])
        chunk_numbers = sorted(int(n.rsplit("/", 1)[1]) for n in names[1:] if not n.endswith(".checksum"))
        assert chunk_numbers == [0, 0, 1, 3, 8]  # disk 0: 0, 1 (data), 8 (data, last); disk 1: 0, 3 (last)
        assert sum(1 for n in names if n.endswith(".checksum")) == (len(names) - 1) // 2
    status, headers, body = request(daemon, "PUT", f"/import?session_id={session}", xva)
    assert status == 200, body
    [copy] = vm_refs(body.decode())
    assert x.VM.get_name_label(copy) == x.VM.get_name_label(vm)
    copied = {x.VBD.get_userdevice(b): x.VBD.get_VDI(b) for b in x.VM.get_VBDs(copy)}
    for n, vdi in enumerate(vdis):
        assert raw_bytes(vdi_path(daemon, x, copied[str(n)])) == raw_bytes(vdi_path(daemon, x, vdi))
    assert len(x.VM.get_VIFs(copy)) == 1
    drop_vm(x, copy)
    drop_vm(x, vm)


def test_running_vm_is_refused_and_snapshots_export(daemon: Daemon, x: Any) -> None:
    vm, _ = new_vm(x, "running", [MiB], nic=False)
    x.VM.start(vm, False, False)
    _, session = session_ref(daemon)
    status, headers, body = request(daemon, "GET", f"/export?ref={vm}&session_id={session}")
    assert status == 500 and body.decode().split() == ["VM_BAD_POWER_STATE", vm, "halted", "running"]
    assert task_of(x, headers)["error_info"] == ["VM_BAD_POWER_STATE", vm, "halted", "running"]
    assert x.VM.get_current_operations(vm) == {}
    x.VM.hard_shutdown(vm)
    status, _, body = request(daemon, "GET", f"/export?uuid=no-such-uuid&session_id={session}")
    assert status == 404 and body.decode().split() == ["UUID_INVALID", "VM", "no-such-uuid"]
    status, _, _ = request(daemon, "GET", f"/export?ref={vm}")
    assert status == 401
    reader = XenAPI.Session(daemon.url)
    reader.xenapi.login_with_password(*READER)
    status, _, _ = request(daemon, "GET", f"/export?ref={vm}&session_id={reader._session}")
    assert status == 403
    drop_vm(x, vm)


def test_client_task_reports_progress_and_result(daemon: Daemon, x: Any) -> None:
    vm, _ = new_vm(x, "with task", [2 * MiB], nic=False)
    x2, session = session_ref(daemon)
    task = x2.task.create("my export", "")
    status, headers, xva = request(daemon, "GET", f"/export?ref={vm}&session_id={session}&task_id={task}")
    assert status == 200 and headers["task-id"] == task
    rec = x2.task.get_record(task)
    assert rec["status"] == "success" and rec["progress"] == 1.0
    task2 = x2.task.create("my import", "")
    status, _, body = request(
        daemon, "PUT", f"/import?session_id={session}&task_id={task2}&sr_uuid={x.SR.get_uuid(default_sr(x))}", xva
    )
    assert status == 200
    result = x2.task.get_result(task2)
    assert result.startswith("<value><array><data><value>OpaqueRef:") and vm_refs(result) == vm_refs(body.decode())
    drop_vm(x, vm_refs(result)[0])
    drop_vm(x, vm)


# --------------------------------------------------------------------------- metadata and URLs


def test_metadata_export_and_import(daemon: Daemon, x: Any) -> None:
    vm, [vdi] = new_vm(x, "meta", [MiB])
    _, session = session_ref(daemon)
    status, _, data = request(daemon, "GET", f"/export_metadata?uuid={x.VM.get_uuid(vm)}&session_id={session}")
    assert status == 200
    names = member_names(data)
    assert names == ["ova.xml"]
    before = counts(x, daemon)
    status, _, body = request(daemon, "PUT", f"/import_metadata?session_id={session}&dry_run=true", data)
    assert status == 200 and counts(x, daemon) == before
    status, _, body = request(daemon, "PUT", f"/import_metadata?session_id={session}", data)
    assert status == 200, body
    [again] = vm_refs(body.decode())
    [vbd] = x.VM.get_VBDs(again)
    assert x.VBD.get_VDI(vbd) == vdi  # the same disk, found by SR and location
    x.VM.destroy(again)
    drop_vm(x, vm)


def test_vm_import_from_a_url(daemon: Daemon, x: Any, tmp_path: Path) -> None:
    (tmp_path / "vm.xva").write_bytes(hand_built_xva(sample_disk()))
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/vm.xva"
        vm_import = getattr(x.VM, "import")  # `import` is a Python keyword
        [vm] = vm_import(url, default_sr(x), False, False)
        assert x.VM.get_name_label(vm) == "handmade VM"
        failure = fails(lambda: vm_import(url + ".missing", default_sr(x), False, False))
        assert failure[0] == "IMPORT_ERROR" and "404" in failure[1]
        drop_vm(x, vm)
    finally:
        server.shutdown()


def fails(call: Any) -> list[str]:
    with pytest.raises(XenAPI.Failure) as e:
        call()
    return list(e.value.details)


# ------------------------------------------------------------------------------------ bad input


def evil(kind: str) -> bytes:
    good = hand_built_xva(sample_disk())
    buf = io.BytesIO()
    with (
        tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t,
        tarfile.open(fileobj=io.BytesIO(good)) as src,
    ):
        members = src.getmembers()
        t.addfile(members[0], src.extractfile(members[0]))
        info = tarfile.TarInfo({"absolute": "/etc/cron.d/evil", "dotdot": "Ref:3/../../../evil"}.get(kind, "Ref:3/0"))
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, "/etc/shadow"
        elif kind == "device":
            info.type, info.devmajor, info.devminor = tarfile.BLKTYPE, 8, 0
        t.addfile(info, io.BytesIO(b"") if info.type == tarfile.REGTYPE else None)
    return buf.getvalue()


def pax_bomb() -> bytes:
    """A pax header claiming a gigabyte of metadata: refused before any of it is read."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = 1 << 30
    return info.tobuf(format=tarfile.USTAR_FORMAT) + b"0" * 4096


def bad_cases() -> list[tuple[str, bytes, list[str]]]:
    good = hand_built_xva(sample_disk())
    first_data = good.index(b"first chunk here")
    corrupt = bytearray(good)
    corrupt[first_data] ^= 0x01
    wrong_first = io.BytesIO()
    with tarfile.open(fileobj=wrong_first, mode="w") as t:
        info = tarfile.TarInfo("evil")
        info.size = 4
        t.addfile(info, io.BytesIO(b"evil"))
    past_end = hand_built_xva(sample_disk(), size=2 * MiB)
    return [
        ("truncated", good[: len(good) - 3 * 512 - 100_000], ["IMPORT_ERROR_PREMATURE_EOF"]),
        ("truncated in ova.xml", good[:1500], ["IMPORT_ERROR_PREMATURE_EOF"]),
        ("bad checksum", bytes(corrupt), ["IMPORT_ERROR"]),
        ("not a tar", os.urandom(8192), ["IMPORT_ERROR"]),
        ("empty body", b"", ["IMPORT_ERROR_PREMATURE_EOF"]),
        ("first member not ova.xml", wrong_first.getvalue(), ["IMPORT_ERROR_UNEXPECTED_FILE", "ova.xml", "evil"]),
        ("absolute path", evil("absolute"), ["IMPORT_ERROR"]),
        ("dot-dot path", evil("dotdot"), ["IMPORT_ERROR"]),
        ("symlink", evil("symlink"), ["IMPORT_ERROR"]),
        ("hard link", evil("hardlink"), ["IMPORT_ERROR"]),
        ("device", evil("device"), ["IMPORT_ERROR"]),
        ("huge pax header", pax_bomb(), ["IMPORT_ERROR"]),
        ("chunk past the disk's end", past_end, ["IMPORT_ERROR"]),
        ("oversized disk", hand_built_xva(sample_disk(), size=1 << 62), ["VDI_TOO_LARGE"]),
        ("newer format", hand_built_xva(sample_disk(), vsn="3"), ["IMPORT_INCOMPATIBLE_VERSION"]),
    ]


def test_bad_archives_fail_cleanly(daemon: Daemon, x: Any) -> None:
    _, session = session_ref(daemon)
    before = counts(x, daemon)
    for name, body, error in bad_cases():
        status, headers, text = request(daemon, "PUT", f"/import?session_id={session}", body)
        task = task_of(x, headers)
        assert status != 200, name
        assert task["status"] == "failure", name
        assert task["error_info"][: len(error)] == error, (name, task["error_info"])
        assert text.decode().split()[0] == error[0], name
        assert counts(x, daemon) == before, name  # no VM, VDI, VBD, network or image left behind
        assert scratch_is_empty(daemon), name
    # refused before reading: chunked bodies (as xapi) and ISO libraries
    status, headers, text = request(
        daemon, "PUT", f"/import?session_id={session}", hand_built_xva(sample_disk()), chunked=True
    )
    assert status == 403 and text.decode().split() == ["IMPORT_ERROR_CANNOT_HANDLE_CHUNKED"]
    [iso] = x.SR.get_by_name_label("ISO library")
    status, _, text = request(daemon, "PUT", f"/import?session_id={session}&sr_id={iso}", b"")
    assert status == 400 and text.decode().split() == ["SR_OPERATION_NOT_SUPPORTED", iso]
    assert counts(x, daemon) == before


def test_interrupted_export_leaves_the_vm_unlocked(daemon: Daemon, x: Any) -> None:
    vm, [vdi] = new_vm(x, "interrupted", [96 * MiB], nic=False)
    write_pattern(vdi_path(daemon, x, vdi), "write -P 0x5a 0 96M")
    x2, session = session_ref(daemon)
    task = x2.task.create("interrupted export", "")
    sock = socket.create_connection(("127.0.0.1", daemon.port))
    sock.sendall(f"GET /export?ref={vm}&session_id={session}&task_id={task} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    got = b""
    while len(got) < 2 * MiB:
        got += sock.recv(65536)
    assert b"200 OK" in got.split(b"\r\n", 1)[0]
    assert x.VM.get_current_operations(vm) == {task: "export"}
    sock.close()
    deadline = time.monotonic() + 60
    while x2.task.get_status(task) == "pending":
        assert time.monotonic() < deadline, "the export never noticed its client left"
        time.sleep(0.1)
    assert x2.task.get_error_info(task)[0] == "CLIENT_ERROR"
    assert x.VM.get_current_operations(vm) == {} and "export" in x.VM.get_allowed_operations(vm)
    assert not [p for p in (daemon.data_dir / "tmp").glob("nbd-*")]  # qemu-nbd gone with its socket
    drop_vm(x, vm)


def test_nothing_is_written_outside_the_sr(daemon: Daemon, x: Any) -> None:
    """Names in an archive never become paths: even a member named like a host file lands nowhere."""
    outside = Path("/etc/cron.d/evil")
    assert not outside.exists()
    _, session = session_ref(daemon)
    status, _, _ = request(daemon, "PUT", f"/import?session_id={session}", evil("absolute"))
    assert status == 500 and not outside.exists()
