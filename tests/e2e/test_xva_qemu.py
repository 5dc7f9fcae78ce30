"""XVA and OVA with real guests (QEMU, TCG): a test guest with two disks and a NIC is exported,
imported into another SR and booted, and reads the very bytes written into its disks; an OVA made
here with `qemu-img convert -O vmdk` imports and boots; a VM exported as an OVA converts back to
the same data. Through the XenAPI SDK and plain HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import io
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest
import XenAPI

from tests.drivers.conftest import HvGuestImage, hv_guest_image  # noqa: F401 - the fixture, shared
from tests.e2e.test_storage_e2e import new_vbd, new_vdi, serial_run, this_host, vt100
from tests.e2e.test_vm_qemu import install, qemu_daemon, session, wait_task  # noqa: F401
from tests.e2e.test_xva import member_names, raw_bytes, request, vdi_path, vm_refs, write_pattern
from tests.server_harness import Daemon

MiB = 1 << 20
CHECKED = 8 * MiB  # how much of each disk the guest hashes


def disk_hashes_in_guest(s: XenAPI.Session, vm: str) -> set[str]:
    """md5 of the first CHECKED bytes of every virtio disk, computed by the guest's own kernel."""
    command = f"for d in /dev/vd?; do dd if=$d bs=1048576 count={CHECKED // MiB} 2>/dev/null | md5sum; done"
    text = asyncio.run(serial_run(vt100(s.xenapi, vm), str(s._session), command))
    return {line.split()[0] for line in text.splitlines() if len(line.split()) == 2}


def md5_head(data: bytes) -> str:
    return hashlib.md5(data[:CHECKED].ljust(CHECKED, b"\0")).hexdigest()


def boot(x: Any, vm: str) -> None:
    rec = wait_task(x, x.Async.VM.start(vm, False, False))
    assert rec["status"] == "success", rec["error_info"]


def test_round_trip_of_a_guest_with_two_disks_and_a_nic(qemu_daemon: Daemon, tmp_path: Path) -> None:  # noqa: F811
    s = session(qemu_daemon)
    x = s.xenapi
    vm = install(x, "xva-source")
    sr = x.pool.get_default_SR(x.pool.get_all()[0])
    vdis = [new_vdi(x, sr, 16 * MiB, "xva disk a"), new_vdi(x, sr, 12 * MiB, "xva disk b")]
    for n, vdi in enumerate(vdis):
        new_vbd(x, vm, vdi, str(n))
    write_pattern(vdi_path(qemu_daemon, x, vdis[0]), "write -P 0x41 0 1M", "write -P 0x42 5M 64k")
    write_pattern(vdi_path(qemu_daemon, x, vdis[1]), "write -P 0x61 1M 3M", "write -P 0x62 11M 4k")
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
    expected = {md5_head(raw_bytes(vdi_path(qemu_daemon, x, v))) for v in vdis}

    status, headers, xva = request(qemu_daemon, "GET", f"/export?ref={vm}&session_id={s._session}")
    assert status == 200 and x.task.get_status(headers["task-id"]) == "success"
    other_dir = tmp_path / "second-sr"
    other = x.SR.create(this_host(x), {"location": str(other_dir)}, "0", "xva target", "", "file", "user", False, {})
    status, _, body = request(qemu_daemon, "PUT", f"/import?sr_id={other}&session_id={s._session}", xva)
    assert status == 200, body
    [copy] = vm_refs(body.decode())
    copied = [x.VBD.get_VDI(b) for b in sorted(x.VM.get_VBDs(copy), key=x.VBD.get_userdevice)]
    assert [x.VDI.get_SR(v) for v in copied] == [other, other]
    for src, dst in zip(vdis, copied, strict=True):
        cmp = subprocess.run(
            [
                "qemu-img",
                "compare",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                str(vdi_path(qemu_daemon, x, src)),
                str(vdi_path(qemu_daemon, x, dst)),
            ],
            capture_output=True,
            text=True,
        )
        assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    [vif] = x.VM.get_VIFs(copy)
    assert x.VIF.get_network(vif) == net

    boot(x, copy)
    try:
        assert disk_hashes_in_guest(s, copy) == expected
        assert x.VIF.get_currently_attached(vif) is True
    finally:
        x.VM.hard_shutdown(copy)
    for v in (copy, vm):
        disks = [x.VBD.get_VDI(b) for b in x.VM.get_VBDs(v)]
        x.VM.destroy(v)
        for d in disks:
            x.VDI.destroy(d)
    for pbd in x.SR.get_PBDs(other):
        x.PBD.unplug(pbd)
    x.SR.destroy(other)


OVF = """<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData">
  <References><File ovf:id="file1" ovf:href="guest-disk1.vmdk" ovf:size="{size}"/></References>
  <DiskSection><Info>Virtual disk information</Info>
    <Disk ovf:capacity="24" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk1" ovf:fileRef="file1"
      ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection><Info>The list of logical networks</Info>
    <Network ovf:name="VM Network"><Description>The VM Network network</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="ova-guest">
    <Info>A virtual machine</Info><Name>ova guest</Name>
    <VirtualHardwareSection><Info>Virtual hardware requirements</Info>
      <Item><rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits><rasd:ElementName>1 CPU</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ElementName>256MB</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>256</rasd:VirtualQuantity></Item>
      <Item><rasd:ElementName>SCSI controller</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation><rasd:Connection>VM Network</rasd:Connection>
        <rasd:ElementName>Network adapter 1</rasd:ElementName><rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceType>10</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


def make_ova(workdir: Path, data: bytes) -> bytes:
    raw = workdir / "disk.raw"
    raw.write_bytes(data)
    vmdk = workdir / "guest-disk1.vmdk"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", str(raw), str(vmdk)],
        check=True,
    )
    disk = vmdk.read_bytes()
    ovf = OVF.format(size=len(disk)).encode()
    manifest = (
        f"SHA256(guest.ovf)= {hashlib.sha256(ovf).hexdigest()}\n"
        f"SHA256(guest-disk1.vmdk)= {hashlib.sha256(disk).hexdigest()}\n"
    ).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, content in (("guest.ovf", ovf), ("guest.mf", manifest), ("guest-disk1.vmdk", disk)):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            t.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def test_an_ova_with_a_vmdk_disk_imports_and_boots(qemu_daemon: Daemon) -> None:  # noqa: F811
    s = session(qemu_daemon)
    x = s.xenapi
    data = bytearray(24 * MiB)
    data[0:4096] = b"OVA!" * 1024
    data[7 * MiB : 7 * MiB + 4096] = bytes(range(256)) * 16
    work = Path(tempfile.mkdtemp(prefix="ova-", dir=qemu_daemon.data_dir.parent))
    try:
        ova = make_ova(work, bytes(data))
        status, _, body = request(qemu_daemon, "PUT", f"/import?session_id={s._session}", ova)
        assert status == 200, body
        [vm] = vm_refs(body.decode())
        rec = x.VM.get_record(vm)
        assert rec["name_label"] == "ova guest" and int(rec["memory_static_max"]) == 256 * MiB
        [vbd] = rec["VBDs"]
        vdi = x.VBD.get_VDI(vbd)
        assert int(x.VDI.get_virtual_size(vdi)) == 24 * MiB
        assert raw_bytes(vdi_path(qemu_daemon, x, vdi)) == bytes(data)
        [vif] = rec["VIFs"]
        assert x.network.get_name_label(x.VIF.get_network(vif)) == "VM Network"
        # a corrupted OVA (manifest digest) fails and leaves nothing
        before = len(x.VM.get_all()), len(x.VDI.get_all())
        bad = bytearray(ova)
        bad[ova.index(b"KDMV") + 600] ^= 0xFF
        status, _, body = request(qemu_daemon, "PUT", f"/import?session_id={s._session}", bytes(bad))
        assert status == 500 and body.startswith(b"IMPORT_ERROR"), body
        assert (len(x.VM.get_all()), len(x.VDI.get_all())) == before

        # The OVA's disk is data, not a bootable system: boot the test guest's kernel with it.
        [template] = [t for t in x.VM.get_by_name_label("pyxapi test guest") if x.VM.get_is_a_template(t)]
        for field in ("PV_kernel", "PV_ramdisk", "PV_args"):
            getattr(x.VM, f"set_{field}")(vm, getattr(x.VM, f"get_{field}")(template))
        x.VM.set_HVM_boot_params(vm, {"order": "c"})
        boot(x, vm)
        try:
            assert disk_hashes_in_guest(s, vm) == {md5_head(bytes(data))}
        finally:
            x.VM.hard_shutdown(vm)

        # and back out as an OVA: descriptor, manifest, a streamOptimized VMDK with the same data
        status, _, exported = request(qemu_daemon, "GET", f"/export_ova?ref={vm}&session_id={s._session}")
        assert status == 200
        names = member_names(exported)
        assert names[0].endswith(".ovf") and names[1].endswith(".mf") and names[2].endswith(".vmdk")
        with tarfile.open(fileobj=io.BytesIO(exported)) as t:
            f = t.extractfile(names[2])
            assert f is not None
            (work / "out.vmdk").write_bytes(f.read())
        info = subprocess.run(
            ["qemu-img", "info", "--output=json", "-f", "vmdk", str(work / "out.vmdk")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "streamOptimized" in info
        assert raw_bytes_of(work / "out.vmdk", "vmdk") == bytes(data)
        status, _, body = request(qemu_daemon, "PUT", f"/import?session_id={s._session}", exported)
        assert status == 200, body
        [again] = vm_refs(body.decode())
        assert x.VM.get_name_label(again) == "ova guest"
        for v in (again, vm):
            disks = [x.VBD.get_VDI(b) for b in x.VM.get_VBDs(v) if x.VBD.get_type(b) == "Disk"]
            x.VM.destroy(v)
            for d in disks:
                x.VDI.destroy(d)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def raw_bytes_of(path: Path, fmt: str) -> bytes:
    out = path.with_suffix(".raw-out")
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", str(path), str(out)], check=True)
    try:
        return out.read_bytes()
    finally:
        out.unlink()


pytestmark = pytest.mark.slow
