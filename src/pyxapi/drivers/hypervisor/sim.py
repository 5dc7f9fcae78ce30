"""In-memory hypervisor with the same semantics as the real drivers (for ops tests and scale tests).

Domains live in a :class:`SimHost`; several driver instances may share one host, which is how a
"daemon restart" is simulated: a new instance over the same host finds the domains with adopt().
A few sim-only methods let tests play the guest's part (write files, power off, crash, ignore ACPI).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from pyxapi.drivers.hypervisor.base import (
    Capability,
    ConsoleInfo,
    DeviceError,
    DiskSpec,
    DiskStats,
    DomainEvent,
    DomainExists,
    DomainInfo,
    DomainNotFound,
    DomainSpec,
    DomainState,
    DomainStats,
    ExitReason,
    GuestAgentInfo,
    GuestAgentUnavailable,
    GuestInterface,
    GuestTimeout,
    HostFacts,
    InvalidArgument,
    InvalidDomainState,
    NicSpec,
    NicStats,
    NotSupported,
    StartError,
    check_disk,
    check_nic,
)
from pyxapi.drivers.hypervisor.events import EventHub, EventStream

_IMAGE_MAGIC = "pyxapi-sim-suspend-image/1"
_BUSY = 0.05  # fraction of each vCPU a simulated guest burns, so cpu counters move


@dataclass
class SimDomain:
    spec: DomainSpec
    domid: int
    state: DomainState
    vcpus: int
    memory_target: int
    owner: object | None  # the driver instance managing it (None after close(): up for adoption)
    guest_files: dict[str, str] = field(default_factory=dict)  # the guest's RAM contents, as far as tests care
    responsive: bool = True  # acknowledges ACPI / agent requests
    agent: bool = True
    cpu_ns: float = 0.0
    run_since: float | None = None  # monotonic time the vCPUs last started running
    disk_layers: dict[int, int] = field(default_factory=dict)  # device -> live snapshots taken of it
    disk_sizes: dict[int, int] = field(default_factory=dict)  # device -> size given by resize_disk

    def cpu_time_ns(self) -> int:
        extra = 0.0 if self.run_since is None else (time.monotonic() - self.run_since) * 1e9 * self.vcpus * _BUSY
        return int(self.cpu_ns + extra)

    def set_running(self, running: bool) -> None:
        if running and self.run_since is None:
            self.run_since = time.monotonic()
        elif not running and self.run_since is not None:
            self.cpu_ns = self.cpu_time_ns()
            self.run_since = None
        self.state = DomainState.RUNNING if running else DomainState.PAUSED


@dataclass
class SimHost:
    """What outlives a driver instance: the 'machine' the simulated domains run on."""

    cpu_count: int = 16
    memory_total: int = 256 << 30
    memory_reserved: int = 1 << 30  # what the host itself uses, as on a real machine
    domains: dict[str, SimDomain] = field(default_factory=dict)
    next_domid: int = 1


class SimHypervisor:
    name = "sim"

    def __init__(self, host: SimHost | None = None, *, op_delay: float = 0.0) -> None:
        self.host = host if host is not None else SimHost()
        self._op_delay = op_delay  # pretend work per lifecycle call, for concurrency tests
        self._hub: EventHub[DomainEvent] = EventHub()

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset(Capability) - {Capability.VNC_CONSOLE, Capability.SERIAL_CONSOLE}

    # ------------------------------------------------------------ helpers

    def _dom(self, uuid: str) -> SimDomain:
        d = self.host.domains.get(uuid)
        if d is None or d.owner is not self:
            raise DomainNotFound(uuid)
        return d

    def _info(self, d: SimDomain) -> DomainInfo:
        return DomainInfo(d.spec.uuid, d.spec.name, d.domid, d.state, d.vcpus, d.memory_target, None)

    async def _work(self) -> None:
        await asyncio.sleep(self._op_delay)

    def _exit(self, d: SimDomain, reason: ExitReason, requested: bool, detail: str = "") -> None:
        del self.host.domains[d.spec.uuid]
        self._hub.publish(DomainEvent(d.spec.uuid, d.domid, reason, requested, time.time(), detail))

    def _create(self, spec: DomainSpec, paused: bool, files: dict[str, str]) -> SimDomain:
        if spec.uuid in self.host.domains:
            raise DomainExists(spec.uuid)
        used = self.host.memory_reserved + sum(d.spec.memory_static_max for d in self.host.domains.values())
        if used + spec.memory_static_max > self.host.memory_total:
            raise StartError(spec.uuid, "not enough host memory")
        d = SimDomain(spec, self.host.next_domid, DomainState.PAUSED, spec.vcpus_at_startup,
                      spec.memory_target, self, dict(files))
        self.host.next_domid += 1
        d.set_running(not paused)
        self.host.domains[spec.uuid] = d
        return d

    # ------------------------------------------------------------ contract

    async def host_facts(self) -> HostFacts:
        used = self.host.memory_reserved + sum(d.memory_target for d in self.host.domains.values())
        return HostFacts(
            hostname=os.uname().nodename, cpu_count=self.host.cpu_count, cpu_model="Simulated CPU",
            cpu_vendor="SimVendor", cpu_flags=("fpu", "lm", "vmx"), memory_total=self.host.memory_total,
            memory_free=self.host.memory_total - used, hypervisor="sim", hypervisor_version="1.0",
            accelerator="sim", capabilities=("hvm-3.0-x86_64", "hvm-3.0-x86_32", "hvm-3.0-x86_32p"))

    async def start(self, spec: DomainSpec, *, paused: bool = False) -> DomainInfo:
        spec.validate()
        await self._work()
        return self._info(self._create(spec, paused, {}))

    async def shutdown(self, uuid: str, *, clean: bool, timeout: float = 60.0) -> None:
        d = self._dom(uuid)
        if clean:
            if d.state is not DomainState.RUNNING:
                raise InvalidDomainState(uuid, d.state, DomainState.RUNNING)
            if not d.responsive:
                await asyncio.sleep(timeout)
                raise GuestTimeout(uuid, "clean shutdown", timeout)
        await self._work()
        self._exit(d, ExitReason.POWEROFF, True, "clean" if clean else "hard")

    async def reboot(self, uuid: str, *, clean: bool, timeout: float = 60.0) -> DomainInfo:
        d = self._dom(uuid)
        if clean:
            if d.state is not DomainState.RUNNING:
                raise InvalidDomainState(uuid, d.state, DomainState.RUNNING)
            if not d.agent:
                raise GuestAgentUnavailable(uuid)
            if not d.responsive:
                await asyncio.sleep(timeout)
                raise GuestTimeout(uuid, "clean reboot", timeout)
        await self._work()
        d.guest_files.clear()  # a reboot loses what the guest held in RAM
        d.set_running(True)
        return self._info(d)

    async def pause(self, uuid: str) -> None:
        d = self._dom(uuid)
        if d.state is not DomainState.RUNNING:
            raise InvalidDomainState(uuid, d.state, DomainState.RUNNING)
        d.set_running(False)

    async def unpause(self, uuid: str) -> None:
        d = self._dom(uuid)
        if d.state is not DomainState.PAUSED:
            raise InvalidDomainState(uuid, d.state, DomainState.PAUSED)
        d.set_running(True)

    async def suspend(self, uuid: str, image_path: str, *, timeout: float = 300.0) -> None:
        d = self._dom(uuid)
        await self._work()
        self._write_image(d, image_path)
        self._exit(d, ExitReason.SUSPENDED, True)

    async def save_memory(self, uuid: str, image_path: str, *, timeout: float = 300.0) -> None:
        d = self._dom(uuid)
        d.set_running(False)
        await self._work()
        self._write_image(d, image_path)

    def _write_image(self, d: SimDomain, image_path: str) -> None:
        image = {"magic": _IMAGE_MAGIC, "spec": d.spec.to_dict(), "vcpus": d.vcpus,
                 "memory_target": d.memory_target, "files": d.guest_files}
        with open(image_path, "w") as f:
            json.dump(image, f)

    async def resume(self, spec: DomainSpec, image_path: str, *, paused: bool = False) -> DomainInfo:
        spec.validate()
        try:
            with open(image_path) as f:
                # Copies of raw images are padded to whole sectors: the JSON ends at the first NUL.
                image = json.loads(f.read().rstrip("\0"))
        except (OSError, ValueError) as e:
            raise StartError(spec.uuid, f"cannot read suspend image: {e}") from e
        if image.get("magic") != _IMAGE_MAGIC or image["spec"]["uuid"] != spec.uuid:
            raise StartError(spec.uuid, "suspend image does not belong to this domain")
        await self._work()
        d = self._create(spec, paused, image["files"])
        d.memory_target = image["memory_target"]
        return self._info(d)

    async def set_vcpus(self, uuid: str, count: int, *, timeout: float = 30.0) -> None:
        d = self._dom(uuid)
        if not d.spec.vcpus_at_startup <= count <= d.spec.vcpus_max:
            raise InvalidArgument(f"vCPU count {count} not in {d.spec.vcpus_at_startup}..{d.spec.vcpus_max}")
        d.cpu_ns = d.cpu_time_ns()
        if d.run_since is not None:
            d.run_since = time.monotonic()
        d.vcpus = count

    async def set_memory_target(self, uuid: str, target: int) -> None:
        d = self._dom(uuid)
        if not 0 < target <= d.spec.memory_static_max:
            raise InvalidArgument(f"memory target {target} not in 1..{d.spec.memory_static_max}")
        d.memory_target = target

    async def plug_disk(self, uuid: str, disk: DiskSpec) -> None:
        d = self._dom(uuid)
        check_disk(disk)
        if disk.is_cdrom:
            raise NotSupported(Capability.DISK_HOTPLUG, "CD-ROM drives are not hot-pluggable")
        if any(x.device == disk.device for x in d.spec.disks):
            raise DeviceError(f"disk device {disk.device} already in use")
        d.spec = replace(d.spec, disks=(*d.spec.disks, disk))

    async def unplug_disk(self, uuid: str, device: int, *, timeout: float = 30.0) -> None:
        d = self._dom(uuid)
        disk = next((x for x in d.spec.disks if x.device == device), None)
        if disk is None:
            raise DeviceError(f"no disk device {device}")
        if disk.is_cdrom:
            raise NotSupported(Capability.DISK_HOTPLUG, "CD-ROM drives are not hot-pluggable")
        d.spec = replace(d.spec, disks=tuple(x for x in d.spec.disks if x.device != device))
        d.disk_layers.pop(device, None)
        d.disk_sizes.pop(device, None)

    async def switch_disks(self, uuid: str, disks: Sequence[DiskSpec]) -> None:
        d = self._dom(uuid)
        current = {x.device: x for x in d.spec.disks}
        for disk in disks:
            have = current.get(disk.device)
            if have is None or have.is_cdrom or disk.is_cdrom:
                raise DeviceError(f"no disk device {disk.device} to switch")
            if disk.format != "qcow2" or disk.path is None:
                raise DeviceError(f"disk {disk.device}: only a qcow2 overlay can take over a running disk")
        new = {x.device: x.path for x in disks}
        d.spec = replace(d.spec, disks=tuple(replace(x, path=new[x.device]) if x.device in new else x
                                             for x in d.spec.disks))
        for device in new:
            d.disk_layers[device] = d.disk_layers.get(device, 0) + 1

    async def resize_disk(self, uuid: str, device: int, size: int) -> None:
        d = self._dom(uuid)
        disk = next((x for x in d.spec.disks if x.device == device and not x.is_cdrom), None)
        if disk is None:
            raise DeviceError(f"no disk device {device}")
        if size < d.disk_sizes.get(device, 0):
            raise InvalidArgument(f"disk {device}: cannot shrink to {size} bytes")
        d.disk_sizes[device] = size

    async def set_cdrom(self, uuid: str, device: int, path: str | None) -> None:
        d = self._dom(uuid)
        disk = next((x for x in d.spec.disks if x.device == device and x.is_cdrom), None)
        if disk is None:
            raise DeviceError(f"no CD-ROM drive {device}")
        d.spec = replace(d.spec, disks=tuple(replace(x, path=path) if x is disk else x for x in d.spec.disks))

    async def plug_nic(self, uuid: str, nic: NicSpec) -> None:
        d = self._dom(uuid)
        check_nic(nic)
        if any(x.device == nic.device for x in d.spec.nics):
            raise DeviceError(f"NIC device {nic.device} already in use")
        d.spec = replace(d.spec, nics=(*d.spec.nics, nic))

    async def unplug_nic(self, uuid: str, device: int, *, timeout: float = 30.0) -> None:
        d = self._dom(uuid)
        if not any(x.device == device for x in d.spec.nics):
            raise DeviceError(f"no NIC device {device}")
        d.spec = replace(d.spec, nics=tuple(x for x in d.spec.nics if x.device != device))

    async def state(self, uuid: str) -> DomainState:
        return self._dom(uuid).state

    async def info(self, uuid: str) -> DomainInfo:
        return self._info(self._dom(uuid))

    async def stats(self, uuid: str) -> DomainStats:
        d = self._dom(uuid)
        total = d.cpu_time_ns()
        per = total // d.vcpus
        disks = {x.device: DiskStats(0, 0, 0, 0) for x in d.spec.disks}
        nics = {x.device: NicStats(0, 0, 0, 0) for x in d.spec.nics}
        return DomainStats(uuid, time.time(), total, (per,) * d.vcpus, d.memory_target, d.memory_target,
                           disks, nics)

    async def list_domains(self) -> list[DomainInfo]:
        return [self._info(d) for d in self.host.domains.values() if d.owner is self]

    async def adopt(self) -> list[DomainInfo]:
        found = []
        for d in self.host.domains.values():
            if d.owner is None:
                d.owner = self
                found.append(self._info(d))
        return found

    async def console(self, uuid: str) -> ConsoleInfo:
        self._dom(uuid)
        return ConsoleInfo(None, None, None)

    async def guest_agent(self, uuid: str, *, timeout: float = 10.0) -> GuestAgentInfo:
        d = self._dom(uuid)
        if not d.agent or d.state is not DomainState.RUNNING:
            raise GuestAgentUnavailable(uuid)
        ifaces = tuple(GuestInterface(f"eth{n.device}", n.mac.lower(), (f"10.0.0.{d.domid % 250 + 2}",), ())
                       for n in sorted(d.spec.nics, key=lambda n: n.device))
        os_info = {"id": "sim", "name": "Simulated guest", "pretty-name": "Simulated guest", "version": "1",
                   "version-id": "1", "kernel-release": "sim", "machine": "x86_64"}
        return GuestAgentInfo(os_info, d.spec.name, ifaces)

    async def send_sysrq(self, uuid: str, key: str) -> None:
        self._dom(uuid)
        if len(key) != 1:
            raise InvalidArgument(f"sysrq key {key!r}")

    def subscribe(self) -> EventStream[DomainEvent]:
        return self._hub.subscribe()

    async def close(self) -> None:
        for d in self.host.domains.values():
            if d.owner is self:
                d.owner = None

    # ------------------------------------------------------------ playing the guest (sim only)

    def guest_write_file(self, uuid: str, path: str, data: str) -> None:
        self._dom(uuid).guest_files[path] = data

    def guest_read_file(self, uuid: str, path: str) -> str | None:
        return self._dom(uuid).guest_files.get(path)

    def set_guest_responsive(self, uuid: str, responsive: bool) -> None:
        self._dom(uuid).responsive = responsive

    def set_guest_agent(self, uuid: str, present: bool) -> None:
        self._dom(uuid).agent = present

    def simulate_exit(self, uuid: str, reason: ExitReason, detail: str = "") -> None:
        """The guest powers off / reboots / panics, or the domain's process is killed."""
        self._exit(self._dom(uuid), reason, False, detail)
