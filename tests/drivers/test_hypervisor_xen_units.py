"""The Xen driver's pure parts, on this machine (no Xen needed): domain XML for libvirt's libxl
driver, xenstore parsing into guest metrics, host facts from sysfs, and the console pty relay
(on a real pty). The driver itself runs on real Xen in tests/drivers/test_hypervisor_xen.py."""

from __future__ import annotations

import asyncio
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pyxapi.drivers.hypervisor.base import DiskSpec, DiskStats, DomainSpec, InvalidArgument, NicSpec, NotSupported
from pyxapi.drivers.hypervisor.xen import domxml, qdisk, xenstore
from pyxapi.drivers.hypervisor.xen.host import is_xen_dom0, xen_capabilities, xen_version
from pyxapi.drivers.hypervisor.xen.relay import PtyRelay

MiB = 1 << 20
UUID = "0f5c2f4e-9d1f-4a43-9a53-2f5b8c0c7e11"


def spec(**kw: object) -> DomainSpec:
    base: dict[str, object] = {
        "uuid": UUID,
        "name": "web 1",
        "vcpus_max": 2,
        "vcpus_at_startup": 1,
        "memory_static_max": 256 * MiB,
        "memory_target": 192 * MiB,
        "kernel": "/boot/vmlinuz",
        "ramdisk": "/boot/initrd",
        "cmdline": "console=hvc0",
        "domain_type": "pv",
    }
    base.update(kw)
    return DomainSpec(**base)  # type: ignore[arg-type]


def test_pv_domain_xml() -> None:
    s = spec(
        disks=(DiskSpec(1, "/srv/d.raw"), DiskSpec(3, None, is_cdrom=True), DiskSpec(2, "/dev/vg/lv", read_only=True)),
        nics=(NicSpec(0, "52:54:00:AA:BB:CC", "pyx0f5c2f4e.0"),),
    )
    root = ET.fromstring(domxml.build_domain_xml(s, {0: "xapi0"}, bootloader_path=None, device_model=None))
    assert root.get("type") == "xen" and root.findtext("uuid") == UUID
    assert root.findtext("name") == "web-1-0f5c2f4e"  # unique (uuid) and readable
    os_type = root.find("os/type")
    assert os_type is not None and (os_type.get("machine"), os_type.text) == ("xenpv", "xen")
    assert root.findtext("os/kernel") == "/boot/vmlinuz" and root.findtext("os/cmdline") == "console=hvc0"
    assert root.findtext("memory") == str(256 * 1024) and root.findtext("currentMemory") == str(192 * 1024)
    vcpu = root.find("vcpu")
    assert vcpu is not None and (vcpu.text, vcpu.get("current")) == ("2", "1")
    # Reboots are preserved so that the driver can tell them from poweroffs.
    assert [root.findtext(f"on_{x}") for x in ("poweroff", "reboot", "crash")] == ["destroy", "preserve", "destroy"]
    targets = {d.find("target").get("dev"): d for d in root.iterfind("devices/disk")}  # type: ignore[union-attr]
    assert sorted(targets) == ["xvdb", "xvdc"]  # the empty CD-ROM drive is not attached
    assert targets["xvdc"].get("type") == "block" and targets["xvdc"].find("readonly") is not None
    assert targets["xvdb"].find("driver") is None  # raw: libxl picks blkback
    nic = root.find("devices/interface")
    assert nic is not None and nic.find("source").get("bridge") == "xapi0"  # type: ignore[union-attr]
    assert nic.find("mac").get("address") == "52:54:00:aa:bb:cc"  # type: ignore[union-attr]
    assert nic.find("target").get("dev") == "pyx0f5c2f4e.0"  # type: ignore[union-attr]
    assert domxml.spec_from_xml(ET.tostring(root, encoding="unicode")) == s


def test_domain_types_and_refusals() -> None:
    pvh = ET.fromstring(domxml.build_domain_xml(spec(domain_type="pvh"), {}, bootloader_path=None, device_model=None))
    assert pvh.find("os/type").get("machine") == "xenpvh"  # type: ignore[union-attr]
    grub = ET.fromstring(
        domxml.build_domain_xml(
            spec(kernel=None, ramdisk=None, bootloader="pygrub"),
            {},
            bootloader_path="/usr/lib/xen-4.17/bin/pygrub",
            device_model=None,
        )
    )
    assert grub.findtext("bootloader") == "/usr/lib/xen-4.17/bin/pygrub" and grub.find("os/kernel") is None
    assert domxml.domain_type(spec(domain_type="")) == "pv"
    assert domxml.domain_type(spec(domain_type="unspecified", kernel=None)) == "hvm"
    with pytest.raises(NotSupported):
        domxml.build_domain_xml(spec(domain_type="hvm"), {}, bootloader_path=None, device_model=None)
    hvm = ET.fromstring(
        domxml.build_domain_xml(
            spec(domain_type="hvm", kernel=None), {}, bootloader_path=None, device_model="/usr/bin/qemu-system-i386"
        )
    )
    assert hvm.find("devices/graphics").get("type") == "vnc"  # type: ignore[union-attr]
    # An HVM guest's console is the emulated UART; a PV guest's is Xen's PV console.
    assert hvm.find("devices/serial") is not None
    assert hvm.find("devices/console/target").get("type") == "serial"  # type: ignore[union-attr]
    assert pvh.find("devices/console/target").get("type") == "xen"  # type: ignore[union-attr]
    # A PV framebuffer (VNC, and the QEMU qcow2 disks need) only where the device model exists.
    assert pvh.find("devices/graphics") is None
    pv_dm = ET.fromstring(
        domxml.build_domain_xml(spec(), {}, bootloader_path=None, device_model="/usr/libexec/xen-qemu-system-i386")
    )
    assert pv_dm.find("devices/graphics").get("listen") == "127.0.0.1"  # type: ignore[union-attr]
    assert pv_dm.find("devices/emulator") is None  # libxl's own QEMU for PV domains
    # An HVM guest's CD-ROM drive is an emulated IDE drive, there even when empty.
    hvm_cd = ET.fromstring(
        domxml.build_domain_xml(
            spec(domain_type="hvm", disks=(DiskSpec(3, None, is_cdrom=True),)),
            {},
            bootloader_path=None,
            device_model="/usr/libexec/xen-qemu-system-i386",
        )
    )
    cd = hvm_cd.find("devices/disk[@device='cdrom']")
    assert cd is not None and cd.find("source") is None
    assert cd.find("target").attrib == {"dev": "hdd", "bus": "ide"}  # type: ignore[union-attr]
    with pytest.raises(InvalidArgument):
        domxml.cdrom_xml(DiskSpec(4, "/srv/a.iso", is_cdrom=True))
    with pytest.raises(InvalidArgument):
        domxml.build_domain_xml(spec(firmware="uefi"), {}, bootloader_path=None, device_model=None)
    with pytest.raises(InvalidArgument):
        domxml.build_domain_xml(spec(kernel=None, ramdisk=None), {}, bootloader_path=None, device_model=None)
    with pytest.raises(NotSupported):
        domxml.domain_type(spec(domain_type="pv_in_pvh"))


def test_live_devices() -> None:
    xml = """<domain><devices>
      <disk type='file'><source file='/srv/d.raw'/><target dev='xvdb' bus='xen'/></disk>
      <interface type='bridge'><mac address='52:54:00:AA:BB:CC'/><target dev='vif3.0'/></interface>
      <console type='pty'><source path='/dev/pts/7'/><target type='xen' port='0'/></console>
      <graphics type='vnc' port='5901'/></devices></domain>"""
    live = domxml.live_devices(xml)
    assert live.console_pty == "/dev/pts/7" and live.vnc_port == 5901
    assert live.disks == {"xvdb": "/srv/d.raw"} and live.vifs == {"52:54:00:aa:bb:cc": "vif3.0"}


def test_guest_metrics_from_xenstore() -> None:
    text = "\n".join(
        [
            '/local/domain/7/data/os_name = "Debian GNU/Linux 12"',
            '/local/domain/7/data/os_distro = "debian"',
            '/local/domain/7/data/os_majorver = "12"',
            '/local/domain/7/data/os_minorver = "5"',
            '/local/domain/7/data/os_uname = "6.1.0-56-cloud-amd64"',
            '/local/domain/7/data/host_name = "web1"',
            '/local/domain/7/attr/vif/0/ipv4/0 = "10.0.0.5"',
            '/local/domain/7/attr/vif/0/ipv6/0 = "fd00::5"',
            '/local/domain/7/attr/vif/0/name = "eth0"',
            '/local/domain/7/attr/vif/0/mac = "52:54:00:AA:BB:CC"',
            '/local/domain/7/attr/vif/1/ipv4/0 = "10.0.1.5"',
            '/local/domain/7/control/shutdown = ""   (n0,r7)',
            "garbage line",
        ]
    )
    tree = xenstore.parse_ls(text)
    assert tree["/local/domain/7/control/shutdown"] == ""
    info = xenstore.guest_info(7, tree, {0: "52:54:00:aa:bb:cc"})  # NIC 1 was unplugged: not reported
    assert info is not None
    assert info.os["name"] == "Debian GNU/Linux 12" and info.os["version"] == "12.5"
    assert info.os["kernel-release"] == "6.1.0-56-cloud-amd64" and info.hostname == "web1"
    [nic] = info.interfaces
    assert (nic.name, nic.mac, nic.ipv4, nic.ipv6) == ("eth0", "52:54:00:aa:bb:cc", ("10.0.0.5",), ("fd00::5",))
    assert xenstore.guest_info(7, {"/local/domain/7/control/x": "1"}, {}) is None  # no agent yet


def test_qdisk_blockstats_by_node_name() -> None:
    reply = [
        {
            "node-name": "xvdb-qcow2",
            "stats": {"rd_bytes": 512, "wr_bytes": 1024, "rd_operations": 1, "wr_operations": 2},
        },
        {"node-name": "", "stats": {"rd_bytes": 9}},  # an anonymous node: not a disk of the guest's
    ]
    assert qdisk.parse_blockstats(reply) == {"xvdb": DiskStats(512, 1024, 1, 2)}


def test_host_facts_from_sysfs(tmp_path: Path) -> None:
    (tmp_path / "version").mkdir()
    (tmp_path / "properties").mkdir()
    for name, value in (("major", "4"), ("minor", "17"), ("extra", ".5")):
        (tmp_path / "version" / name).write_text(value + "\n")
    (tmp_path / "properties" / "capabilities").write_text("xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_64\n")
    assert xen_version(tmp_path) == "4.17.5"
    assert xen_capabilities(tmp_path) == ("xen-3.0-x86_64", "hvm-3.0-x86_32", "hvm-3.0-x86_64")
    assert xen_version(tmp_path / "missing") == ""
    caps = tmp_path / "capabilities"
    caps.write_text("control_d\n")
    assert is_xen_dom0(caps)
    caps.write_text("")
    assert not is_xen_dom0(caps) and not is_xen_dom0(tmp_path / "nope")


async def test_console_relay_over_a_real_pty(tmp_path: Path) -> None:
    master, slave = os.openpty()
    relay = PtyRelay(tmp_path / "console.sock", lambda: os.ttyname(slave))
    await relay.start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "console.sock"))
        writer.write(b"ls\n")
        await writer.drain()
        loop = asyncio.get_running_loop()
        got = await asyncio.wait_for(loop.run_in_executor(None, os.read, master, 100), 5)
        assert got == b"ls\n"  # raw mode: no echo, no CR translation
        os.write(master, b"GUEST READY\r\n")
        assert await asyncio.wait_for(reader.readexactly(13), 5) == b"GUEST READY\r\n"
        writer.close()
    finally:
        await relay.close()
        os.close(master)
        os.close(slave)
    assert not (tmp_path / "console.sock").exists()
