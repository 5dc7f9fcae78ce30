"""DomainSpec → libvirt domain XML for the libxl driver, and what the driver reads back from live XML.

Naming follows Xen's conventions: disk userdevice N is ``xvd<a+N>``, NIC device N is vif N, and
the domain's libvirt uuid is the VM's uuid. The spec itself travels inside the XML (metadata), so
a suspend image and a running domain both say which VM they belong to.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace

from pyxapi.drivers.hypervisor.base import DiskSpec, DomainSpec, InvalidArgument, NicSpec, NotSupported

METADATA_NS = "https://pyxapi.dev/xml/xen-domain/1"
KiB = 1024

# xapi domain types → libvirt <os><type machine=...>os type</type>
_OS_TYPES = {"pv": ("xenpv", "xen"), "pvh": ("xenpvh", "xenpvh"), "hvm": ("xenfv", "hvm")}


def domain_type(spec: DomainSpec) -> str:
    """pv, pvh or hvm. Unspecified: PV when the VM boots a kernel or a bootloader, else HVM."""
    kind = spec.domain_type or "unspecified"
    if kind == "unspecified":
        return "pv" if spec.kernel or spec.bootloader else "hvm"
    if kind not in _OS_TYPES:
        raise NotSupported("domain_type", f"{kind} is not supported by the Xen driver")
    return kind


def domain_name(spec: DomainSpec) -> str:
    """Xen names must be unique while XenAPI name labels need not be: the uuid makes them so."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", spec.name).strip("-")[:40]
    return f"{slug}-{spec.uuid[:8]}" if slug else spec.uuid


def disk_target(device: int) -> str:
    return "xvd" + chr(ord("a") + device)


IDE_SLOTS = 4  # hda-hdd: where an HVM guest's emulated CD-ROM drives can be


def cdrom_xml(disk: DiskSpec) -> ET.Element:
    """An HVM guest's CD-ROM: an emulated IDE drive (hd<a+N>), present even when empty, whose media
    the device model changes in place as a real drive's."""
    if disk.device >= IDE_SLOTS:
        raise InvalidArgument(f"an HVM guest's CD-ROM drive must be device 0-{IDE_SLOTS - 1}, not {disk.device}")
    el = ET.Element("disk", type="file", device="cdrom")
    ET.SubElement(el, "driver", name="qemu", type="raw")
    if disk.path is not None:
        ET.SubElement(el, "source", file=disk.path)
    ET.SubElement(el, "target", dev="hd" + chr(ord("a") + disk.device), bus="ide")
    ET.SubElement(el, "readonly")
    return el


def disk_xml(disk: DiskSpec, kind: str) -> ET.Element:
    """A disk, or the media of a CD-ROM drive (PV guests see CD media as a read-only disk)."""
    if disk.is_cdrom and kind == "hvm":
        return cdrom_xml(disk)
    if disk.path is None:
        raise InvalidArgument(f"disk {disk.device} has no media")
    is_block = disk.path.startswith("/dev/")
    el = ET.Element("disk", type="block" if is_block else "file", device="disk")
    if disk.format == "qcow2":
        ET.SubElement(el, "driver", name="qemu", type="qcow2")  # the qdisk backend (QEMU in dom0)
    # raw: no driver element, so libxl picks blkback ("phy", a loop device for files).
    ET.SubElement(el, "source", dev=disk.path) if is_block else ET.SubElement(el, "source", file=disk.path)
    ET.SubElement(el, "target", dev=disk_target(disk.device), bus="xen")
    if disk.read_only or disk.is_cdrom:
        ET.SubElement(el, "readonly")
    return el


def nic_xml(nic: NicSpec, bridge: str, kind: str) -> ET.Element:
    el = ET.Element("interface", type="bridge")
    ET.SubElement(el, "source", bridge=bridge)
    ET.SubElement(el, "mac", address=nic.mac.lower())
    # The vif takes over the name of the tap the network driver prepared (see XenDriver.plug_nic).
    ET.SubElement(el, "target", dev=nic.tap)
    if kind == "hvm":
        ET.SubElement(el, "model", type="netfront")  # PV NIC only: no emulated one to unplug
    if nic.mtu:
        ET.SubElement(el, "mtu", size=str(nic.mtu))
    return el


def build_domain_xml(
    spec: DomainSpec,
    bridges: dict[int, str],
    *,
    bootloader_path: str | None,
    device_model: str | None,
    empty_media: str | None = None,
) -> str:
    """The XML libvirt creates the domain from. ``bridges`` maps NIC device → bridge name.
    ``empty_media``: an empty file an HVM guest's empty CD-ROM drives start with (see
    devices.placeholder_media); without it they start without media."""
    kind = domain_type(spec)
    if spec.firmware == "uefi":
        raise InvalidArgument("UEFI firmware is not supported by the Xen driver (ovmf for Xen HVM is not packaged)")
    if kind == "hvm" and device_model is None:
        raise NotSupported("hvm", "HVM guests need a device model: install the Debian package qemu-system-xen")
    if kind == "pvh" and spec.bootloader:
        raise InvalidArgument("PVH guests boot a kernel directly (PV_kernel); a bootloader needs domain_type pv")
    if kind != "hvm" and not spec.kernel and not spec.bootloader:
        raise InvalidArgument(f"a {kind.upper()} guest needs PV_kernel or PV_bootloader")
    root = ET.Element("domain", type="xen")
    ET.SubElement(root, "name").text = domain_name(spec)
    ET.SubElement(root, "uuid").text = spec.uuid
    meta = ET.SubElement(ET.SubElement(root, "metadata"), f"{{{METADATA_NS}}}spec")
    meta.text = json.dumps(spec.to_dict(), sort_keys=True)
    ET.SubElement(root, "memory", unit="KiB").text = str(spec.memory_static_max // KiB)
    ET.SubElement(root, "currentMemory", unit="KiB").text = str(spec.memory_target // KiB)
    ET.SubElement(root, "vcpu", placement="static", current=str(spec.vcpus_at_startup)).text = str(spec.vcpus_max)
    if spec.bootloader and kind == "pv":
        ET.SubElement(root, "bootloader").text = bootloader_path or spec.bootloader
    os_el = ET.SubElement(root, "os")
    machine, os_type = _OS_TYPES[kind]
    ET.SubElement(os_el, "type", arch="x86_64", machine=machine).text = os_type
    if spec.kernel and not (spec.bootloader and kind == "pv"):
        ET.SubElement(os_el, "kernel").text = spec.kernel
        if spec.ramdisk:
            ET.SubElement(os_el, "initrd").text = spec.ramdisk
        if spec.cmdline:
            ET.SubElement(os_el, "cmdline").text = spec.cmdline
    if kind == "hvm":
        for letter in spec.boot_order:
            dev = {"c": "hd", "d": "cdrom", "n": "network"}.get(letter)
            if dev:
                ET.SubElement(os_el, "boot", dev=dev)
        features = ET.SubElement(root, "features")
        ET.SubElement(features, "acpi")
        ET.SubElement(features, "apic")
        ET.SubElement(features, "pae")
    # A guest reboot is preserved (not restarted by libvirt) so the driver can tell it from a
    # poweroff: libvirt reports both as STOPPED/SHUTDOWN, but only a preserved domain remains.
    ET.SubElement(root, "on_poweroff").text = "destroy"
    ET.SubElement(root, "on_reboot").text = "preserve"
    ET.SubElement(root, "on_crash").text = "destroy"
    devices = ET.SubElement(root, "devices")
    if kind == "hvm" and device_model:
        ET.SubElement(devices, "emulator").text = device_model
    for disk in spec.disks:
        if kind == "hvm" and disk.is_cdrom and disk.path is None and empty_media:
            devices.append(cdrom_xml(replace(disk, path=empty_media)))
        elif disk.path is not None or (disk.is_cdrom and kind == "hvm"):  # a PV CD-ROM drive is its media
            devices.append(disk_xml(disk, kind))
    for nic in spec.nics:
        devices.append(nic_xml(nic, bridges[nic.device], kind))
    if kind == "hvm":
        # An HVM guest's console is the device model's emulated UART (ttyS0), as `xl console -t serial`.
        serial = ET.SubElement(devices, "serial", type="pty")
        ET.SubElement(serial, "target", port="0")
        console = ET.SubElement(devices, "console", type="pty")
        ET.SubElement(console, "target", type="serial", port="0")
    else:
        console = ET.SubElement(devices, "console", type="pty")
        ET.SubElement(console, "target", type="xen", port="0")
    if device_model:
        # HVM: the emulated graphics card. PV/PVH: a PV framebuffer (as XenServer gives PV guests a
        # VNC console), which also makes libxl run the domain's QEMU, the backend qcow2 disks need:
        # libxl starts that QEMU only when a domain is built, never for a later hot-plug.
        ET.SubElement(devices, "graphics", type="vnc", port="-1", autoport="yes", listen="127.0.0.1")
    return ET.tostring(root, encoding="unicode")


def spec_from_xml(xml: str) -> DomainSpec | None:
    """The spec stored in a domain's metadata; None for domains pyxapi did not create."""
    root = ET.fromstring(xml)
    el = root.find(f"metadata/{{{METADATA_NS}}}spec")
    if el is None or not el.text:
        return None
    return DomainSpec.from_dict(json.loads(el.text))


@dataclass(frozen=True, slots=True)
class LiveDevices:
    console_pty: str | None
    vnc_port: int | None
    disks: dict[str, str]  # target dev (xvdb) → source path
    vifs: dict[str, str]  # MAC → vif name


def live_devices(xml: str) -> LiveDevices:
    root = ET.fromstring(xml)
    pty = None
    for console in root.iterfind("devices/console"):
        src = console.find("source")
        if src is not None and src.get("path"):
            pty = src.get("path")
            break
    if pty is None:
        pty = root.findtext("devices/console/source[@path]")
    vnc = None
    g = root.find("devices/graphics[@type='vnc']")
    if g is not None and (g.get("port") or "-1").lstrip("-").isdigit() and int(g.get("port", "-1")) > 0:
        vnc = int(g.get("port", "0"))
    disks = {}
    for d in root.iterfind("devices/disk"):
        target = d.find("target")
        src = d.find("source")
        if target is not None:
            disks[target.get("dev", "")] = (src.get("file") or src.get("dev") or "") if src is not None else ""
    vifs = {}
    for n in root.iterfind("devices/interface"):
        mac = n.find("mac")
        target = n.find("target")
        if mac is not None:
            vifs[mac.get("address", "").lower()] = target.get("dev", "") if target is not None else ""
    return LiveDevices(pty, vnc, disks, vifs)
