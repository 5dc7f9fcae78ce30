"""OVF descriptors (DMTF DSP0243 1.x/2.x): the parts a VM import needs, read; and one written.

Read: the files (References), the disks (DiskSection: capacity, file, format), the networks, and
each VirtualSystem's name, description, vCPUs, memory, disks (in controller order), NICs and CD drives.
Written: the same, with disks as VMDK (streamOptimized) or another qemu-img format, so other tools
(VirtualBox, VMware, XenCenter, virt-v2v) and pyxapi itself read it back.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from pyxapi.xva.errors import ImportFailure

OVF = "http://schemas.dmtf.org/ovf/envelope/1"
OVF2 = "http://schemas.dmtf.org/ovf/envelope/2"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
MAX_DESCRIPTOR = 4 << 20
VMDK_STREAM = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
VMDK_SPARSE = "http://www.vmware.com/interfaces/specifications/vmdk.html#sparse"
VHD_URL = "http://technet.microsoft.com/en-us/virtualserver/bb676673.aspx"
QCOW2_URL = "https://www.qemu.org/docs/master/interop/qcow2.html"
RAW_URL = "raw"
# The disk formats a descriptor may name, and qemu-img's driver for each.
FORMATS = {VMDK_STREAM: "vmdk", VMDK_SPARSE: "vmdk", VHD_URL: "vpc", QCOW2_URL: "qcow2", RAW_URL: "raw"}
RT_CPU, RT_MEMORY, RT_ETHERNET, RT_CD, RT_DVD, RT_DISK = 3, 4, 10, 15, 16, 17
_UNITS = re.compile(r"^\s*byte\s*(?:\*\s*(\d+)\s*\^\s*(\d+))?\s*$", re.I)
_NAMED_UNITS = {
    "bytes": 1,
    "kilobytes": 1 << 10,
    "megabytes": 1 << 20,
    "gigabytes": 1 << 30,
    "kb": 1 << 10,
    "mb": 1 << 20,
    "gb": 1 << 30,
}


@dataclass(slots=True)
class OvfFile:
    id: str
    href: str
    size: int | None
    compression: str = ""


@dataclass(slots=True)
class OvfDisk:
    id: str
    file_id: str | None
    capacity: int
    format: str  # qemu-img driver name, or "" when the descriptor does not say


@dataclass(slots=True)
class OvfSystem:
    name: str
    description: str = ""
    vcpus: int = 1
    memory: int = 256 << 20
    disks: list[str] = field(default_factory=list)  # disk ids in device order
    nics: list[tuple[str, str]] = field(default_factory=list)  # (network name, MAC or "")
    cd_drives: int = 0


@dataclass(slots=True)
class Descriptor:
    files: dict[str, OvfFile]
    disks: dict[str, OvfDisk]
    networks: dict[str, str]  # name -> description
    systems: list[OvfSystem]

    def file_by_href(self, href: str) -> OvfFile | None:
        return next((f for f in self.files.values() if f.href == href), None)


def parse(data: bytes) -> Descriptor:
    if len(data) > MAX_DESCRIPTOR:
        raise ImportFailure(f"OVF descriptor of {len(data)} bytes is too large")
    if re.search(rb"<!(DOCTYPE|ENTITY)", data, re.I):
        raise ImportFailure("OVF descriptor must not contain a DTD or entity declarations")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise ImportFailure(f"OVF descriptor is not valid XML: {e}") from None
    ns = _namespace(root)
    files = {}
    for f in root.iterfind(f"{{{ns}}}References/{{{ns}}}File"):
        fid, href = _attr(f, ns, "id"), _attr(f, ns, "href")
        if not fid or not href:
            raise ImportFailure("OVF File without id or href")
        size = _attr(f, ns, "size")
        files[fid] = OvfFile(fid, href, int(size) if size and size.isdigit() else None, _attr(f, ns, "compression"))
    disks = {}
    for d in root.iterfind(f".//{{{ns}}}DiskSection/{{{ns}}}Disk"):
        did = _attr(d, ns, "diskId")
        capacity = _capacity(_attr(d, ns, "capacity"), _attr(d, ns, "capacityAllocationUnits"))
        fmt = _attr(d, ns, "format")
        disks[did] = OvfDisk(did, _attr(d, ns, "fileRef") or None, capacity, FORMATS.get(fmt, ""))
    networks = {
        _attr(n, ns, "name"): _text(n.find(f"{{{ns}}}Description"))
        for n in root.iterfind(f".//{{{ns}}}NetworkSection/{{{ns}}}Network")
    }
    systems = [_system(vs, ns) for vs in root.iter(f"{{{ns}}}VirtualSystem")]
    if not systems:
        raise ImportFailure("OVF descriptor has no VirtualSystem")
    return Descriptor(files, disks, networks, systems)


def _namespace(root: ET.Element) -> str:
    if root.tag in (f"{{{OVF}}}Envelope", f"{{{OVF2}}}Envelope"):
        return root.tag[1:].split("}")[0]
    raise ImportFailure("not an OVF descriptor (no ovf:Envelope)")


def _attr(el: ET.Element, ns: str, name: str) -> str:
    return el.get(f"{{{ns}}}{name}") or el.get(name) or ""


def _text(el: ET.Element | None) -> str:
    return (el.text or "").strip() if el is not None else ""


def _capacity(value: str, units: str) -> int:
    if not value.isdigit():
        raise ImportFailure(f"OVF disk capacity {value!r} is not a number")
    return int(value) * _unit(units or "byte")


def _unit(units: str) -> int:
    m = _UNITS.match(units)
    if m:
        return int(m.group(1)) ** int(m.group(2)) if m.group(1) else 1
    named = _NAMED_UNITS.get(units.strip().lower())
    if named is None:
        raise ImportFailure(f"OVF allocation units {units!r} are not understood")
    return named


def _system(vs: ET.Element, ns: str) -> OvfSystem:
    name = _text(vs.find(f"{{{ns}}}Name")) or _attr(vs, ns, "id") or "imported VM"
    system = OvfSystem(name, _text(vs.find(f"{{{ns}}}AnnotationSection/{{{ns}}}Annotation")))
    disks: list[tuple[int, int, str]] = []
    for item in vs.iterfind(f".//{{{ns}}}VirtualHardwareSection/{{{ns}}}Item"):
        kind = _rasd_int(item, "ResourceType")
        if kind == RT_CPU:
            system.vcpus = max(1, _rasd_int(item, "VirtualQuantity") or 1)
        elif kind == RT_MEMORY:
            system.memory = (_rasd_int(item, "VirtualQuantity") or 0) * _unit(_rasd(item, "AllocationUnits") or "MB")
        elif kind == RT_ETHERNET:
            system.nics.append((_rasd(item, "Connection"), _rasd(item, "Address")))
        elif kind in (RT_CD, RT_DVD):
            system.cd_drives += 1
        elif kind == RT_DISK:
            resource = _rasd(item, "HostResource")
            disk_id = resource.rsplit("/", 1)[-1]
            address = _rasd_int(item, "AddressOnParent")
            disks.append((_rasd_int(item, "Parent") or 0, address if address is not None else len(disks), disk_id))
    system.disks = [d for _, _, d in sorted(disks)]
    return system


def _rasd(item: ET.Element, name: str) -> str:
    return _text(item.find(f"{{{RASD}}}{name}"))


def _rasd_int(item: ET.Element, name: str) -> int | None:
    text = _rasd(item, name)
    return int(text) if text.isdigit() else None


# ------------------------------------------------------------------------------------------ writing


@dataclass(slots=True)
class DiskOut:
    disk_id: str
    href: str
    file_size: int
    capacity: int
    format_url: str


def build(system: OvfSystem, disks: list[DiskOut], networks: list[str]) -> bytes:
    ET.register_namespace("ovf", OVF)
    ET.register_namespace("rasd", RASD)
    ET.register_namespace("vssd", VSSD)
    ET.register_namespace("xsi", XSI)

    def o(tag: str) -> str:
        return f"{{{OVF}}}{tag}"

    env = ET.Element(o("Envelope"), {o("version"): "1.0"})
    refs = ET.SubElement(env, o("References"))
    for d in disks:
        ET.SubElement(refs, o("File"), {o("id"): f"file-{d.disk_id}", o("href"): d.href, o("size"): str(d.file_size)})
    ds = ET.SubElement(env, o("DiskSection"))
    ET.SubElement(ds, o("Info")).text = "Virtual disks"
    for d in disks:
        ET.SubElement(
            ds,
            o("Disk"),
            {
                o("diskId"): d.disk_id,
                o("fileRef"): f"file-{d.disk_id}",
                o("capacity"): str(d.capacity),
                o("capacityAllocationUnits"): "byte",
                o("format"): d.format_url,
            },
        )
    ns = ET.SubElement(env, o("NetworkSection"))
    ET.SubElement(ns, o("Info")).text = "Logical networks"
    for name in networks:
        net = ET.SubElement(ns, o("Network"), {o("name"): name})
        ET.SubElement(net, o("Description")).text = name
    vs = ET.SubElement(env, o("VirtualSystem"), {o("id"): system.name})
    ET.SubElement(vs, o("Info")).text = "A virtual machine exported by pyxapi"
    ET.SubElement(vs, o("Name")).text = system.name
    if system.description:
        ann = ET.SubElement(vs, o("AnnotationSection"))
        ET.SubElement(ann, o("Info")).text = "Description"
        ET.SubElement(ann, o("Annotation")).text = system.description
    hw = ET.SubElement(vs, o("VirtualHardwareSection"))
    ET.SubElement(hw, o("Info")).text = "Virtual hardware"
    ids = iter(range(1, 1000))

    def item(kind: int, caption: str, **fields: str) -> None:
        el = ET.SubElement(hw, o("Item"))
        values = {"ElementName": caption, "InstanceID": str(next(ids)), "ResourceType": str(kind), **fields}
        for key in sorted(values):
            ET.SubElement(el, f"{{{RASD}}}{key}").text = values[key]

    item(RT_CPU, f"{system.vcpus} virtual CPUs", VirtualQuantity=str(system.vcpus))
    item(
        RT_MEMORY,
        f"{system.memory >> 20} MB of memory",
        VirtualQuantity=str(system.memory >> 20),
        AllocationUnits="byte * 2^20",
    )
    for position, d in enumerate(disks):
        item(RT_DISK, f"disk {position}", HostResource=f"ovf:/disk/{d.disk_id}", AddressOnParent=str(position))
    for position, (network, mac) in enumerate(system.nics):
        fields = {"Connection": network, "AddressOnParent": str(position), "AutomaticAllocation": "true"}
        if mac:
            fields["Address"] = mac
        item(RT_ETHERNET, f"NIC {position}", **fields)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(env, encoding="unicode").encode("utf-8")
