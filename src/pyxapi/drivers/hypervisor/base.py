"""The hypervisor driver contract: a narrow Protocol, typed records, capabilities and errors.

Drivers take typed arguments and return typed records; they never touch the object store.
The ops layer maps the typed errors below onto XenAPI error codes.

Lifecycle model (shared by every driver, checked by tests/drivers/test_hypervisor_contract.py):

* A domain exists from ``start``/``resume`` until it exits; it is then forgotten by the driver.
  It is either RUNNING or PAUSED while it exists.
* Every exit is published once as a :class:`DomainEvent` to all subscribers. ``requested`` is
  True when the exit was caused by a driver call (shutdown, suspend): ops, which made that call,
  can ignore it. Exits the guest or the host caused on their own (guest poweroff, guest reboot,
  guest panic, process killed) carry ``requested=False`` and ops applies ``actions_after_*``.
* A guest-initiated reboot is an *exit* with reason REBOOT (the toolstack decides whether to
  restart). ``reboot()`` on the other hand restarts the guest in place (same domid).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pyxapi.drivers.hypervisor.events import EventStream

Firmware = Literal["bios", "uefi"]
DiskFormat = Literal["qcow2", "raw"]

MAX_DISKS = 12  # userdevice 0..11 (one PCI slot each; CD-ROMs use the IDE bus, userdevice 0..3)
MAX_NICS = 8  # device 0..7


class Capability(enum.StrEnum):
    START_PAUSED = "start_paused"
    PAUSE = "pause"
    CLEAN_SHUTDOWN = "clean_shutdown"  # ACPI power button
    CLEAN_REBOOT = "clean_reboot"  # needs a guest agent in the guest
    HARD_REBOOT = "hard_reboot"
    SUSPEND = "suspend"  # suspend to a file and resume from it
    VCPU_HOTPLUG = "vcpu_hotplug"
    MEMORY_BALLOON = "memory_balloon"
    DISK_HOTPLUG = "disk_hotplug"
    CDROM_MEDIA = "cdrom_media"  # insert / eject on an existing CD-ROM drive
    NIC_HOTPLUG = "nic_hotplug"
    DIRECT_KERNEL_BOOT = "direct_kernel_boot"
    UEFI = "uefi"
    VNC_CONSOLE = "vnc_console"
    SERIAL_CONSOLE = "serial_console"
    GUEST_AGENT = "guest_agent"
    SYSRQ = "sysrq"
    STATS = "stats"
    ADOPT = "adopt"  # survives a daemon restart and finds its domains again
    LIVE_DISK_SNAPSHOT = "live_disk_snapshot"  # switch_disks: running disks move onto new overlays
    DISK_RESIZE_ONLINE = "disk_resize_online"  # resize_disk: grow a disk the guest is using
    CHECKPOINT = "checkpoint"  # save_memory: the memory image of a domain that then keeps existing


class DomainState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"


class ExitReason(enum.StrEnum):
    POWEROFF = "poweroff"  # the guest powered off, or a (clean or hard) shutdown was requested
    REBOOT = "reboot"  # the guest rebooted itself; the domain is gone, the toolstack decides what next
    CRASH = "crash"  # the guest panicked, or the emulator reported an internal error
    KILLED = "killed"  # the domain's process vanished without a shutdown notification (kill -9, OOM)
    SUSPENDED = "suspended"  # suspend() completed


# ---------------------------------------------------------------- errors


class HypervisorError(Exception):
    """Base of every error a hypervisor driver raises on purpose."""


class DomainNotFound(HypervisorError):
    def __init__(self, uuid: str) -> None:
        self.uuid = uuid
        super().__init__(f"no such domain: {uuid}")


class DomainExists(HypervisorError):
    def __init__(self, uuid: str) -> None:
        self.uuid = uuid
        super().__init__(f"domain already exists: {uuid}")


class InvalidDomainState(HypervisorError):
    def __init__(self, uuid: str, state: str, wanted: str) -> None:
        self.uuid = uuid
        self.state = state
        self.wanted = wanted
        super().__init__(f"domain {uuid} is {state}, needs {wanted}")


class InvalidArgument(HypervisorError):
    pass


class NotSupported(HypervisorError):
    """The driver cannot do it; ``feature`` is a Capability value."""

    def __init__(self, feature: str, detail: str = "") -> None:
        self.feature = feature
        self.detail = detail
        super().__init__(f"not supported: {feature}" + (f" ({detail})" if detail else ""))


class GuestTimeout(HypervisorError):
    """The guest did not acknowledge a request (ACPI shutdown, reboot, unplug) in time.

    The domain is left as it was: ops decides whether to escalate (e.g. to a hard shutdown).
    """

    def __init__(self, uuid: str, operation: str, timeout: float) -> None:
        self.uuid = uuid
        self.operation = operation
        self.timeout = timeout
        super().__init__(f"domain {uuid}: guest did not complete {operation} within {timeout:g}s")


class GuestAgentUnavailable(HypervisorError):
    def __init__(self, uuid: str, detail: str = "") -> None:
        self.uuid = uuid
        super().__init__(f"domain {uuid}: guest agent not available" + (f" ({detail})" if detail else ""))


class DeviceError(HypervisorError):
    """A device plug/unplug/media change was refused (slot in use, no such device, backend error)."""


class StartError(HypervisorError):
    """The domain could not be created (or resumed); ``log`` holds the emulator's last words."""

    def __init__(self, uuid: str, detail: str, log: str = "") -> None:
        self.uuid = uuid
        self.detail = detail
        self.log = log
        super().__init__(f"domain {uuid} failed to start: {detail}" + (f"\n{log}" if log else ""))


class HypervisorUnavailable(HypervisorError):
    """A host binary the driver needs is missing (names the Debian package)."""

    def __init__(self, tool: str, package: str) -> None:
        self.tool = tool
        self.package = package
        super().__init__(f"{tool} not found: install the Debian package {package}")


# ---------------------------------------------------------------- specs


@dataclass(frozen=True, slots=True)
class DiskSpec:
    device: int  # userdevice; also picks the PCI slot / IDE position, so it is stable across suspend
    path: str | None  # file or block device path, or nfs:// iscsi:// URI; None = empty CD-ROM drive
    format: DiskFormat = "raw"
    read_only: bool = False
    is_cdrom: bool = False
    bootable: bool = False


@dataclass(frozen=True, slots=True)
class NicSpec:
    device: int
    mac: str
    tap: str  # an existing tap device (created by the network driver), opened by name
    mtu: int | None = None
    # False: the guest computes checksums and segments itself, for a switch that forwards frames
    # as they are (Open vSwitch's user-space datapath) and cannot finish offloaded ones.
    offload: bool = True


@dataclass(frozen=True, slots=True)
class DomainSpec:
    uuid: str
    name: str
    vcpus_max: int
    vcpus_at_startup: int
    memory_static_max: int  # bytes
    memory_target: int  # bytes; below static max means the balloon is inflated at start
    firmware: Firmware = "bios"
    kernel: str | None = None  # direct kernel boot (xapi's PV_kernel / PV_ramdisk / PV_args)
    ramdisk: str | None = None
    cmdline: str = ""
    boot_order: str = "cd"  # xapi HVM_boot_params order: c = disk, d = CD-ROM, n = network
    disks: tuple[DiskSpec, ...] = ()
    nics: tuple[NicSpec, ...] = ()
    platform: dict[str, str] = field(default_factory=dict)  # e.g. {"vga": "std"|"cirrus"|"none"}
    nvram: str | None = None  # UEFI variable store (a copy of the firmware template when missing)
    # xapi's VM.domain_type ("pv", "pvh", "hvm"; "" = unspecified) and PV_bootloader: only the Xen
    # driver distinguishes them; QEMU runs every guest as an HVM machine.
    domain_type: str = ""
    bootloader: str = ""

    def validate(self) -> None:
        if not 1 <= self.vcpus_at_startup <= self.vcpus_max:
            raise InvalidArgument(f"vcpus_at_startup {self.vcpus_at_startup} not in 1..{self.vcpus_max}")
        if not 0 < self.memory_target <= self.memory_static_max:
            raise InvalidArgument(f"memory_target {self.memory_target} not in 1..{self.memory_static_max}")
        if self.memory_static_max % (1 << 20):
            raise InvalidArgument("memory_static_max must be a whole number of MiB")
        seen_disks = [d.device for d in self.disks]
        if len(set(seen_disks)) != len(seen_disks):
            raise InvalidArgument("duplicate disk device numbers")
        for d in self.disks:
            check_disk(d)
        seen_nics = [n.device for n in self.nics]
        if len(set(seen_nics)) != len(seen_nics):
            raise InvalidArgument("duplicate NIC device numbers")
        for n in self.nics:
            check_nic(n)
        if self.ramdisk and not self.kernel:
            raise InvalidArgument("a ramdisk needs a kernel")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DomainSpec:
        d = dict(data)
        d["disks"] = tuple(DiskSpec(**x) for x in d.get("disks", ()))
        d["nics"] = tuple(NicSpec(**x) for x in d.get("nics", ()))
        d["platform"] = dict(d.get("platform", {}))
        return cls(**d)


def check_disk(d: DiskSpec) -> None:
    if d.is_cdrom and not 0 <= d.device <= 3:
        raise InvalidArgument(f"CD-ROM device {d.device} not in 0..3 (IDE)")
    if not 0 <= d.device < MAX_DISKS:
        raise InvalidArgument(f"disk device {d.device} not in 0..{MAX_DISKS - 1}")
    if d.path is None and not d.is_cdrom:
        raise InvalidArgument(f"disk {d.device} has no path")
    if d.format not in ("qcow2", "raw"):
        raise InvalidArgument(f"disk format {d.format!r}")


def check_nic(n: NicSpec) -> None:
    if not re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", n.mac):
        raise InvalidArgument(f"bad MAC address {n.mac!r}")
    if not 0 <= n.device < MAX_NICS:
        raise InvalidArgument(f"NIC device {n.device} not in 0..{MAX_NICS - 1}")
    if not n.tap or len(n.tap) > 15:
        raise InvalidArgument(f"bad tap name {n.tap!r}")


# ---------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class DomainInfo:
    uuid: str
    name: str
    domid: int
    state: DomainState
    vcpus: int
    memory_target: int  # bytes
    pid: int | None = None  # the emulator process (None for the simulator)


@dataclass(frozen=True, slots=True)
class HostFacts:
    hostname: str
    cpu_count: int
    cpu_model: str
    cpu_vendor: str
    cpu_flags: tuple[str, ...]
    memory_total: int  # bytes
    memory_free: int  # bytes (MemAvailable)
    hypervisor: str  # e.g. "qemu"
    hypervisor_version: str
    accelerator: str  # "kvm", "tcg" or "sim"
    capabilities: tuple[str, ...]  # xapi-style host capabilities, e.g. "hvm-3.0-x86_64"


@dataclass(frozen=True, slots=True)
class DiskStats:
    rd_bytes: int
    wr_bytes: int
    rd_ops: int
    wr_ops: int


@dataclass(frozen=True, slots=True)
class NicStats:
    # As the guest sees it: rx = received by the guest.
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int


@dataclass(frozen=True, slots=True)
class DomainStats:
    uuid: str
    timestamp: float  # time.time() when sampled
    cpu_time_ns: int  # whole domain (emulator included)
    vcpu_time_ns: tuple[int, ...]  # per online vCPU
    memory_actual: int  # bytes the guest currently has (after ballooning)
    memory_target: int
    disks: dict[int, DiskStats] = field(default_factory=dict)
    nics: dict[int, NicStats] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ConsoleInfo:
    vnc_socket: str | None  # unix socket speaking RFB
    serial_socket: str | None  # unix socket: bytes to/from the first serial port
    serial_log: str | None  # everything the guest wrote on the serial port


@dataclass(frozen=True, slots=True)
class GuestInterface:
    name: str
    mac: str
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GuestAgentInfo:
    os: dict[str, str]  # guest-get-osinfo keys: id, name, pretty-name, version, kernel-release, ...
    hostname: str
    interfaces: tuple[GuestInterface, ...]


@dataclass(frozen=True, slots=True)
class DomainEvent:
    uuid: str
    domid: int
    reason: ExitReason
    requested: bool  # caused by a driver call (see module docstring)
    timestamp: float
    detail: str = ""  # driver-specific, e.g. QEMU's shutdown cause


# ---------------------------------------------------------------- the contract


@runtime_checkable
class HypervisorDriver(Protocol):
    name: str

    @property
    def capabilities(self) -> frozenset[Capability]: ...

    async def host_facts(self) -> HostFacts: ...

    async def start(self, spec: DomainSpec, *, paused: bool = False) -> DomainInfo: ...

    async def shutdown(self, uuid: str, *, clean: bool, timeout: float = 60.0) -> None:
        """Clean: press the ACPI power button and wait for the guest to power off (GuestTimeout if it
        does not). Hard: destroy the domain at once. Returns once the domain is gone."""
        ...

    async def reboot(self, uuid: str, *, clean: bool, timeout: float = 60.0) -> DomainInfo:
        """In place (same domid). Clean asks the guest (agent); hard resets the virtual machine."""
        ...

    async def pause(self, uuid: str) -> None: ...

    async def unpause(self, uuid: str) -> None: ...

    async def suspend(self, uuid: str, image_path: str, *, timeout: float = 300.0) -> None:
        """Save the whole domain to image_path (a file or block device) and destroy it."""
        ...

    async def resume(self, spec: DomainSpec, image_path: str, *, paused: bool = False) -> DomainInfo:
        """Recreate a suspended domain. spec must describe the devices it had when suspended
        (vcpus_at_startup = the vCPU count then, hot-plugged disks and NICs included)."""
        ...

    async def set_vcpus(self, uuid: str, count: int, *, timeout: float = 30.0) -> None: ...

    async def set_memory_target(self, uuid: str, target: int) -> None: ...

    async def plug_disk(self, uuid: str, disk: DiskSpec) -> None: ...

    async def unplug_disk(self, uuid: str, device: int, *, timeout: float = 30.0) -> None: ...

    async def set_cdrom(self, uuid: str, device: int, path: str | None) -> None:
        """Insert media (path) into, or eject it (None) from, an existing CD-ROM drive."""
        ...

    async def plug_nic(self, uuid: str, nic: NicSpec) -> None: ...

    async def unplug_nic(self, uuid: str, device: int, *, timeout: float = 30.0) -> None: ...

    async def state(self, uuid: str) -> DomainState: ...

    async def info(self, uuid: str) -> DomainInfo: ...

    async def stats(self, uuid: str) -> DomainStats: ...

    async def list_domains(self) -> list[DomainInfo]: ...

    async def adopt(self) -> list[DomainInfo]:
        """Find domains left running by a previous driver instance (daemon restart) and take them
        over. Domains that died meanwhile are cleaned up and published as KILLED events."""
        ...

    async def console(self, uuid: str) -> ConsoleInfo: ...

    async def guest_agent(self, uuid: str, *, timeout: float = 10.0) -> GuestAgentInfo: ...

    async def send_sysrq(self, uuid: str, key: str) -> None: ...

    def subscribe(self) -> EventStream[DomainEvent]:
        """A new stream of every DomainEvent published from now on."""
        ...

    async def close(self) -> None:
        """Forget the domains without stopping them (they keep running; adopt() finds them)."""
        ...


@runtime_checkable
class LiveDiskDriver(Protocol):
    """Optional operations, offered by a driver that lists the matching capability:
    LIVE_DISK_SNAPSHOT (switch_disks), DISK_RESIZE_ONLINE (resize_disk), CHECKPOINT (save_memory).
    Kept apart from HypervisorDriver so a driver without them still satisfies the contract."""

    async def switch_disks(self, uuid: str, disks: Sequence[DiskSpec]) -> None:
        """Make running disks write to new top images, all at one instant (a crash-consistent
        snapshot across them). Each DiskSpec names a disk device the domain has and the path of a
        fresh qcow2 overlay whose backing file holds exactly what that device has open now (the file
        SR renamed it to a hidden base). Until the switch the guest's writes land in that backing
        image, which is fine: the snapshot's point in time is the switch. Afterwards the old image
        is only read. DeviceError (nothing switched) for an unknown device, a CD-ROM or a format
        other than qcow2."""
        ...

    async def resize_disk(self, uuid: str, device: int, size: int) -> None:
        """Grow a disk the guest is using; the guest sees the new size. InvalidArgument to shrink."""
        ...

    async def save_memory(self, uuid: str, image_path: str, *, timeout: float = 300.0) -> None:
        """Write the domain's memory and device state to image_path (what resume() reads) and leave
        the domain PAUSED at that instant: unpause() lets it continue. Disks snapshotted while it
        stays paused match the image exactly (a checkpoint)."""
        ...


@runtime_checkable
class HypervisorConsole(Protocol):
    """Optional: a hypervisor with a console of its own (Xen's message ring and debug keys).
    Without it host.dmesg is the host kernel's log (KVM lives in the kernel)."""

    async def read_console_ring(self) -> str: ...

    async def send_debug_keys(self, keys: str) -> None:
        """InvalidArgument for keys the hypervisor has no meaning for."""
        ...


def live_disk_driver(driver: HypervisorDriver, feature: Capability) -> LiveDiskDriver:
    """The driver as a LiveDiskDriver for `feature`, or NotSupported when it does not offer it."""
    if feature not in driver.capabilities or not isinstance(driver, LiveDiskDriver):
        raise NotSupported(feature, f"the {driver.name} driver cannot do it")
    return driver
