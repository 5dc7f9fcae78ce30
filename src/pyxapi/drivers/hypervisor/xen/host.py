"""Facts about the Xen host, as `xl info` reports them, read from dom0 and libvirt.

The hypervisor publishes its version and capabilities in sysfs (/sys/hypervisor); the machine's
CPU count and memory come from libvirt's node info (Xen's physinfo), not from dom0's /proc, which
only sees dom0's own share.
"""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pyxapi.drivers.hypervisor.base import HostFacts
from pyxapi.hostinfo import HostFacts as LinuxHostFacts
from pyxapi.hostinfo import parse_cpuinfo

MiB = 1 << 20
CAPABILITIES_FILE = Path("/proc/xen/capabilities")


def is_xen_dom0(path: Path = CAPABILITIES_FILE) -> bool:
    """True in Xen's control domain (the file says ``control_d``; xenfs must be mounted)."""
    try:
        return "control_d" in path.read_text()
    except OSError:
        return False


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def xen_version(sys_hypervisor: Path = Path("/sys/hypervisor")) -> str:
    """e.g. ``4.17.5`` (major.minor from sysfs, plus the ``extra`` suffix Xen was built with)."""
    major = _read(sys_hypervisor / "version" / "major")
    minor = _read(sys_hypervisor / "version" / "minor")
    extra = _read(sys_hypervisor / "version" / "extra")
    if not major:
        return ""
    return f"{major}.{minor}{extra}" if extra.startswith((".", "-")) else f"{major}.{minor}"


def xen_capabilities(sys_hypervisor: Path = Path("/sys/hypervisor")) -> tuple[str, ...]:
    """``xen-3.0-x86_64 hvm-3.0-x86_32 ...`` as in `xl info`'s xen_caps."""
    return tuple(_read(sys_hypervisor / "properties" / "capabilities").split())


@dataclass(frozen=True, slots=True)
class Dom0:
    memory: int  # bytes dom0 has now
    vcpus: int


def find_device_model() -> str | None:
    """QEMU built for Xen (Debian package qemu-system-xen): HVM guests and qcow2 disks need it."""
    for candidate in (
        *sorted(Path("/usr/lib").glob("xen-*/bin/qemu-system-i386")),
        Path("/usr/libexec/xen-qemu-system-i386"),
    ):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_pygrub() -> str | None:
    for candidate in sorted(Path("/usr/lib").glob("xen-*/bin/pygrub")):
        return str(candidate)
    return shutil.which("pygrub")


def host_facts(conn: Any) -> HostFacts:
    """Blocking (libvirt calls): run it in a thread."""
    model, memory_mib, cpus, *_ = conn.getInfo()
    cpu = parse_cpuinfo(_read(Path("/proc/cpuinfo")))
    first = cpu[0] if cpu else None
    return HostFacts(
        hostname=socket.gethostname(),
        cpu_count=int(cpus),
        cpu_model=first.model_name if first and first.model_name else str(model),
        cpu_vendor=first.vendor if first else "",
        cpu_flags=first.flags if first else (),
        memory_total=int(memory_mib) * MiB,
        memory_free=int(conn.getFreeMemory()),
        hypervisor="xen",
        hypervisor_version=xen_version(),
        accelerator="xen",
        capabilities=xen_capabilities(),
    )


def dom0(conn: Any) -> Dom0:
    """Domain-0's memory and vCPUs as Xen accounts them (blocking)."""
    dom = conn.lookupByID(0)
    _state, _max_kib, memory_kib, vcpus, _cpu = dom.info()
    return Dom0(int(memory_kib) * 1024, int(vcpus))


def adjust_linux_facts(facts: LinuxHostFacts, xen: HostFacts) -> LinuxHostFacts:
    """The host's facts seen from dom0, corrected to the whole machine: Xen's CPU count and memory."""
    cpus = facts.cpus
    if cpus and len(cpus) < xen.cpu_count:
        cpus = tuple(replace(cpus[0], index=i) for i in range(xen.cpu_count))
    return replace(
        facts,
        cpu_count=xen.cpu_count,
        cpus=cpus,
        memory_total=xen.memory_total,
        memory_free=xen.memory_free,
        memory_available=xen.memory_free,
    )
