"""Turn a DomainSpec into a QEMU command line, and devices into QMP arguments.

Device ids, node names and PCI slots are pure functions of the device number, so a domain
rebuilt from its spec (resume, adoption) has exactly the layout the running one had: the
migration stream only loads into an identical device tree.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pyxapi.drivers.hypervisor.base import DiskSpec, DomainSpec, InvalidArgument, NicSpec

VGA_SLOT = 0x02
BALLOON_SLOT = 0x04
VSERIAL_SLOT = 0x05
DISK_SLOT0 = 0x08  # disk n -> 0x08 + n (n < 12)
NIC_SLOT0 = 0x14  # nic n -> 0x14 + n (n < 8)
QGA_PORT_NAME = "org.qemu.guest_agent.0"

# Unix socket paths are limited to 108 bytes (with the NUL), hence the short socket names below.
_LONGEST_SOCKET = "ser"
SOCKET_PATH_MAX = 107
RUN_DIR_MAX = SOCKET_PATH_MAX - (1 + 36 + 1 + len(_LONGEST_SOCKET))


@dataclass(frozen=True, slots=True)
class DomainPaths:
    dir: Path

    @property
    def qmp(self) -> Path:
        return self.dir / "qmp"

    @property
    def vnc(self) -> Path:
        return self.dir / "vnc"

    @property
    def serial(self) -> Path:
        return self.dir / "ser"

    @property
    def serial_log(self) -> Path:
        return self.dir / "serial.log"

    @property
    def qga(self) -> Path:
        return self.dir / "qga"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def log(self) -> Path:
        return self.dir / "qemu.log"

    @property
    def debug_log(self) -> Path:
        return self.dir / "qemu-debug.log"

    @property
    def meta(self) -> Path:
        return self.dir / "domain.json"

    @property
    def suspend_status(self) -> Path:
        return self.dir / "suspend.rc"


def domain_paths(run_dir: Path, uuid: str) -> DomainPaths:
    return DomainPaths(run_dir / uuid)


def check_run_dir(run_dir: Path) -> None:
    if len(str(run_dir)) > RUN_DIR_MAX:
        raise ValueError(f"run dir {run_dir} is too long for unix socket paths (max {RUN_DIR_MAX} chars)")


def _opt(value: str) -> str:
    """Escape a value for QEMU's key=value option syntax (a comma is written twice)."""
    return value.replace(",", ",,")


# ---------------------------------------------------------------- devices


def disk_id(device: int) -> str:
    return f"vbd{device}"


def disk_node(device: int) -> str:
    return f"disk{device}"


def nic_id(device: int) -> str:
    return f"vif{device}"


def netdev_id(device: int) -> str:
    return f"net{device}"


def protocol_node(path: str, node_name: str, read_only: bool) -> dict[str, Any]:
    """The blockdev protocol layer for a path or a nfs:// / iscsi:// URI (QEMU's own clients)."""
    base: dict[str, Any] = {"node-name": node_name, "read-only": read_only, "auto-read-only": False}
    url = urlparse(path)
    if url.scheme == "nfs":
        return {**base, "driver": "nfs", "server": {"type": "inet", "host": url.hostname or ""},
                "path": unquote(url.path)}
    if url.scheme == "iscsi":
        parts = url.path.strip("/").split("/")
        if len(parts) != 2 or not parts[1].isdigit():
            raise InvalidArgument(f"iSCSI URI must be iscsi://host[:port]/target/lun: {path}")
        portal = f"{url.hostname}:{url.port or 3260}"
        return {**base, "driver": "iscsi", "transport": "tcp", "portal": portal, "target": parts[0],
                "lun": int(parts[1])}
    if url.scheme:
        raise InvalidArgument(f"unsupported disk URI scheme: {url.scheme}")
    driver = "host_device" if path.startswith("/dev/") else "file"
    return {**base, "driver": driver, "filename": path}


def blockdev_nodes(disk: DiskSpec) -> list[dict[str, Any]]:
    """Protocol node then format node, in blockdev-add order."""
    assert disk.path is not None
    node = disk_node(disk.device)
    ro = disk.read_only or disk.is_cdrom
    return [protocol_node(disk.path, f"{node}-file", ro),
            {"node-name": node, "driver": disk.format, "file": f"{node}-file", "read-only": ro}]


def disk_device(disk: DiskSpec, bootindex: int | None = None) -> dict[str, Any]:
    dev: dict[str, Any]
    if disk.is_cdrom:
        # The IDE CD-ROM keeps its position across media changes; no drive = empty tray.
        dev = {"driver": "ide-cd", "id": disk_id(disk.device), "bus": f"ide.{disk.device // 2}",
               "unit": disk.device % 2}
        if disk.path is not None:
            dev["drive"] = disk_node(disk.device)
    else:
        dev = {"driver": "virtio-blk-pci", "id": disk_id(disk.device), "drive": disk_node(disk.device),
               "bus": "pci.0", "addr": hex(DISK_SLOT0 + disk.device)}
    if bootindex is not None:
        dev["bootindex"] = bootindex
    return dev


# What a guest may hand to the host half done: checksums, then the segmentation that needs them.
_NIC_OFFLOADS = ("csum", "gso", "host_tso4", "host_tso6", "host_ecn", "host_ufo")


def nic_netdev(nic: NicSpec) -> dict[str, Any]:
    return {"type": "tap", "id": netdev_id(nic.device), "ifname": nic.tap, "script": "no",
            "downscript": "no"}


def nic_device(nic: NicSpec, bootindex: int | None = None) -> dict[str, Any]:
    dev: dict[str, Any] = {"driver": "virtio-net-pci", "id": nic_id(nic.device), "netdev": netdev_id(nic.device),
                           "mac": nic.mac.lower(), "bus": "pci.0", "addr": hex(NIC_SLOT0 + nic.device)}
    if nic.mtu is not None:
        dev["host_mtu"] = nic.mtu
    if not nic.offload:
        dev.update(dict.fromkeys(_NIC_OFFLOADS, False))
    if bootindex is not None:
        dev["bootindex"] = bootindex
    return dev


def boot_indexes(spec: DomainSpec) -> dict[str, int]:
    """Device id -> bootindex, following HVM_boot_params order (c disk, d CD-ROM, n network)."""
    if spec.kernel:
        return {}
    disks = sorted(spec.disks, key=lambda d: d.device)
    hard = [d for d in disks if not d.is_cdrom]
    hard = [d for d in hard if d.bootable] or hard
    groups = {"c": [disk_id(d.device) for d in hard],
              "d": [disk_id(d.device) for d in disks if d.is_cdrom],
              "n": [nic_id(n.device) for n in sorted(spec.nics, key=lambda n: n.device)]}
    out: dict[str, int] = {}
    for letter in spec.boot_order.lower():
        for dev_id in groups.get(letter, []):
            out.setdefault(dev_id, len(out) + 1)
    return out


# ---------------------------------------------------------------- the command line


def build_argv(binary: str, spec: DomainSpec, paths: DomainPaths, *, accel: str,
               incoming_image: str | None = None, ovmf: tuple[str, str] | None = None) -> list[str]:
    """argv for a daemonized, initially stopped (-S) QEMU; the driver continues it over QMP."""
    mib = spec.memory_static_max >> 20
    argv = [
        binary, "-name", f"guest={_opt(spec.name)},debug-threads=on", "-uuid", spec.uuid,
        "-no-user-config", "-nodefaults", "-S", "-daemonize", "-pidfile", str(paths.pidfile),
        "-msg", "timestamp=on",
        # With a -d log open, a daemonized QEMU keeps stderr (our qemu.log) instead of pointing it
        # at /dev/null, so errors after start-up (a failed resume, an abort) are not lost.
        "-d", "guest_errors", "-D", str(paths.debug_log),
        "-machine", "pc", "-accel", accel, "-cpu", "host" if accel == "kvm" else "qemu64",
        "-m", f"size={mib}M",
        "-smp", f"cpus={spec.vcpus_at_startup},maxcpus={spec.vcpus_max},sockets={spec.vcpus_max},cores=1,threads=1",
        # Guest reboots exit QEMU so the toolstack sees them and applies actions_after_reboot;
        # reboot() flips this to "reset" at run time for the in-place reboots it asks for.
        "-action", "reboot=shutdown,shutdown=poweroff,panic=shutdown",
        "-device", "pvpanic",
        "-chardev", f"socket,id=qmp,path={_opt(str(paths.qmp))},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-chardev", f"socket,id=serial0,path={_opt(str(paths.serial))},server=on,wait=off,"
                    f"logfile={_opt(str(paths.serial_log))},logappend=on",
        "-device", "isa-serial,chardev=serial0,id=serial0",
        "-display", "none", "-vnc", f"unix:{_opt(str(paths.vnc))}",
        "-device", f"virtio-balloon-pci,id=balloon0,bus=pci.0,addr={hex(BALLOON_SLOT)}",
        "-device", f"virtio-serial-pci,id=vser0,bus=pci.0,addr={hex(VSERIAL_SLOT)}",
        "-chardev", f"socket,id=qga0,path={_opt(str(paths.qga))},server=on,wait=off",
        "-device", f"virtserialport,bus=vser0.0,nr=1,chardev=qga0,id=qga0,name={QGA_PORT_NAME}",
    ]
    vga = spec.platform.get("vga", "std")
    if vga != "none":
        model = {"std": "VGA", "cirrus": "cirrus-vga"}.get(vga)
        if model is None:
            raise InvalidArgument(f"platform:vga={vga!r}")
        argv += ["-device", f"{model},id=video0,bus=pci.0,addr={hex(VGA_SLOT)}"]
    if spec.firmware == "uefi":
        if ovmf is None:
            raise InvalidArgument("UEFI firmware requested but OVMF is not installed (Debian package ovmf)")
        code, nvram = ovmf
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={_opt(code)}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={_opt(nvram)}"]
    if spec.kernel:
        argv += ["-kernel", spec.kernel]
        if spec.ramdisk:
            argv += ["-initrd", spec.ramdisk]
        if spec.cmdline:
            argv += ["-append", spec.cmdline]
    boot = boot_indexes(spec)
    for disk in sorted(spec.disks, key=lambda d: d.device):
        if disk.path is not None:
            for node in blockdev_nodes(disk):
                argv += ["-blockdev", json.dumps(node)]
        argv += ["-device", json.dumps(disk_device(disk, boot.get(disk_id(disk.device))))]
    for nic in sorted(spec.nics, key=lambda n: n.device):
        argv += ["-netdev", json.dumps(nic_netdev(nic)),
                 "-device", json.dumps(nic_device(nic, boot.get(nic_id(nic.device))))]
    if incoming_image is not None:
        argv += ["-incoming", f"exec:cat {shlex.quote(incoming_image)}"]
    return argv


def suspend_uri(image_path: str, status_file: Path) -> str:
    """Migration target writing the image; the exit status lands in status_file once every byte is
    written (the migration can report "completed" while cat is still flushing)."""
    return f"exec:cat > {shlex.quote(image_path)}; echo $? > {shlex.quote(str(status_file))}"
