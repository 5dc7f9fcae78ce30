"""What the bus says about a host NIC: PCI vendor/device ids, bus path, and their names.

Read from sysfs (the root network namespace's view) and, for the names, from the PCI ID
database when one is installed (Debian's pci.ids package). Virtual devices have none.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import NicHardware

SYS_NET = Path("/sys/class/net")
PCI_IDS = (Path("/usr/share/misc/pci.ids"), Path("/usr/share/hwdata/pci.ids"))
_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def pci_names(vendor_id: str, device_id: str, ids_files: tuple[Path, ...] = PCI_IDS) -> tuple[str, str]:
    """(vendor name, device name) from pci.ids; empty strings where it is missing or silent."""
    vendor = vendor_id.lower().removeprefix("0x")
    device = device_id.lower().removeprefix("0x")
    for path in ids_files:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        vendor_name = device_name = ""
        for line in lines:
            if not line or line.startswith("#"):
                continue
            if not line.startswith("\t"):
                if vendor_name:
                    break  # past our vendor's block
                if line[:4] == vendor:
                    vendor_name = line[4:].strip()
            elif vendor_name and not line.startswith("\t\t") and line[1:5] == device:
                device_name = line[5:].strip()
                break
        return vendor_name, device_name
    return "", ""


def hardware_of(names: list[str], sys_net: Path = SYS_NET) -> dict[str, NicHardware]:
    """NicHardware for each named device that has a bus device behind it (blocking)."""
    out: dict[str, NicHardware] = {}
    for name in names:
        dev = sys_net / name / "device"
        if not dev.exists():
            continue  # veth, bridge, tap: nothing behind it
        vendor_id, device_id = _read(dev / "vendor"), _read(dev / "device")
        # A virtio NIC's device is the virtio bus device; its PCI function is a parent.
        parts = dev.resolve().parts
        pci = next((p for p in reversed(parts) if _PCI_ADDRESS.match(p)), "")
        if not vendor_id and pci:
            pci_dir = Path(*parts[: parts.index(pci) + 1])
            vendor_id, device_id = _read(pci_dir / "vendor"), _read(pci_dir / "device")
        vendor_name, device_name = pci_names(vendor_id, device_id) if vendor_id else ("", "")
        out[name] = NicHardware(vendor_id, device_id, vendor_name, device_name, pci)
    return out
