"""One running QEMU domain: its persisted metadata, device hot-plug and statistics over QMP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

from pyxapi.drivers.hypervisor import qemu_blockdev
from pyxapi.drivers.hypervisor import qemu_cmdline as cmd
from pyxapi.drivers.hypervisor.base import (
    Capability,
    DeviceError,
    DiskSpec,
    DiskStats,
    DomainInfo,
    DomainSpec,
    DomainState,
    DomainStats,
    ExitReason,
    GuestTimeout,
    InvalidArgument,
    NicSpec,
    NicStats,
    NotSupported,
    check_disk,
    check_nic,
)
from pyxapi.drivers.hypervisor.qemu_cmdline import DomainPaths
from pyxapi.drivers.hypervisor.qemu_host import cpu_time_ns, net_counters
from pyxapi.drivers.hypervisor.qmp import Monitor, QmpCommandError

log = logging.getLogger(__name__)


@dataclass(eq=False)
class QemuDomain:
    spec: DomainSpec  # the live device set (hot-plugged devices included)
    domid: int
    paths: DomainPaths
    boot_vcpus: int  # -smp cpus=: these vCPUs cannot be unplugged
    vcpus: int
    memory_target: int
    accel: str = "tcg"
    pid: int = 0
    monitor: Monitor | None = None
    state: DomainState = DomainState.PAUSED
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one lifecycle/device op at a time
    agent_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # the agent channel has one client
    # Exit classification, filled from QMP events and driver requests.
    shutdown_cause: str | None = None
    panicked: bool = False
    requested: ExitReason | None = None
    detached: bool = False  # close() let go of it on purpose: no exit to report
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    supervisor: asyncio.Task[None] | None = None

    @property
    def uuid(self) -> str:
        return self.spec.uuid

    @property
    def mon(self) -> Monitor:
        assert self.monitor is not None
        return self.monitor

    def info(self) -> DomainInfo:
        return DomainInfo(self.uuid, self.spec.name, self.domid, self.state, self.vcpus, self.memory_target,
                          self.pid or None)

    # ------------------------------------------------------------ metadata (for adopt)

    def save(self) -> None:
        meta = {"spec": self.spec.to_dict(), "domid": self.domid, "boot_vcpus": self.boot_vcpus,
                "vcpus": self.vcpus, "memory_target": self.memory_target, "accel": self.accel,
                "saved": time.time()}
        tmp = self.paths.meta.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, self.paths.meta)

    @classmethod
    def load(cls, paths: DomainPaths) -> QemuDomain:
        meta = json.loads(paths.meta.read_text())
        spec = DomainSpec.from_dict(meta["spec"])
        return cls(spec, int(meta["domid"]), paths, int(meta["boot_vcpus"]), int(meta["vcpus"]),
                   int(meta["memory_target"]), str(meta.get("accel", "tcg")))

    def on_event(self, name: str, data: dict[str, Any]) -> None:
        if name == "SHUTDOWN":
            self.shutdown_cause = str(data.get("reason", ""))
        elif name == "GUEST_PANICKED":
            self.panicked = True
        elif name == "STOP":
            self.state = DomainState.PAUSED
        elif name == "RESUME":
            self.state = DomainState.RUNNING

    async def query_state(self) -> DomainState:
        status = await self.mon.execute("query-status")
        self.state = DomainState.RUNNING if status.get("running") else DomainState.PAUSED
        return self.state

    async def device_del(self, dev_id: str, what: str, timeout: float) -> None:
        """Ask the guest to release a device (ACPI eject) and wait until QEMU has deleted it."""
        fut = self.mon.expect(lambda n, d: n == "DEVICE_DELETED" and d.get("device") == dev_id)
        try:
            await self.mon.execute("device_del", {"id": dev_id})
        except QmpCommandError as e:
            fut.cancel()
            raise DeviceError(f"{what}: {e.desc}") from e
        if await self.mon.wait(fut, timeout) is None:
            raise GuestTimeout(self.uuid, what, timeout)

    # ------------------------------------------------------------ vCPUs and memory

    async def set_vcpus(self, count: int, timeout: float) -> None:
        if not self.boot_vcpus <= count <= self.spec.vcpus_max:
            raise InvalidArgument(f"vCPU count {count} not in {self.boot_vcpus}..{self.spec.vcpus_max}"
                                  " (vCPUs present at boot cannot be unplugged)")
        slots = await self.mon.execute("query-hotpluggable-cpus")
        present = [s for s in slots if "qom-path" in s]
        if count < len(present) and self.accel == "tcg":
            # Measured with QEMU 7.2: after a TCG vCPU is unplugged, the next vCPU hot-plug
            # segfaults QEMU (heap corruption). Refuse rather than kill the guest later.
            raise NotSupported(Capability.VCPU_HOTPLUG, "removing vCPUs is unsafe with TCG (QEMU 7.2)")
        free = sorted((s for s in slots if "qom-path" not in s), key=lambda s: s["props"].get("socket-id", 0))
        for s in free[:max(0, count - len(present))]:
            args = {"driver": s["type"], "id": f"vcpu{s['props'].get('socket-id', 0)}", **s["props"]}
            try:
                await self.mon.execute("device_add", args)
            except QmpCommandError as e:
                raise DeviceError(f"vCPU hot-plug: {e.desc}") from e
        if count < len(present):
            plugged = sorted((s["qom-path"].rsplit("/", 1)[1] for s in present
                              if s["qom-path"].startswith("/machine/peripheral/vcpu")),
                             key=lambda i: int(i.removeprefix("vcpu")), reverse=True)
            for dev_id in plugged[:len(present) - count]:
                await self._cpu_del(dev_id, timeout)
        self.vcpus = count
        self.save()

    async def _cpu_del(self, dev_id: str, timeout: float) -> None:
        # QEMU 7.2 sends DEVICE_DELETED only for the CPU's lapic child, not for the CPU itself:
        # watch the hot-plug slot instead.
        path = f"/machine/peripheral/{dev_id}"
        try:
            await self.mon.execute("device_del", {"id": dev_id})
        except QmpCommandError as e:
            raise DeviceError(f"vCPU unplug: {e.desc}") from e
        deadline = time.monotonic() + timeout
        while any(s.get("qom-path") == path for s in await self.mon.execute("query-hotpluggable-cpus")):
            if time.monotonic() > deadline:
                raise GuestTimeout(self.uuid, "vCPU unplug", timeout)
            await asyncio.sleep(0.2)

    async def set_memory_target(self, target: int) -> None:
        if not 0 < target <= self.spec.memory_static_max:
            raise InvalidArgument(f"memory target {target} not in 1..{self.spec.memory_static_max}")
        await self.mon.execute("balloon", {"value": target})
        self.memory_target = target
        self.save()

    # ------------------------------------------------------------ disks

    def _disk(self, device: int) -> DiskSpec | None:
        return next((d for d in self.spec.disks if d.device == device), None)

    async def _add_nodes(self, disk: DiskSpec) -> None:
        added: list[str] = []
        try:
            for node in cmd.blockdev_nodes(disk):
                await self.mon.execute("blockdev-add", node)
                added.append(node["node-name"])
        except QmpCommandError as e:
            await self._del_nodes(added)
            raise DeviceError(f"disk {disk.device}: {e.desc}") from e

    async def _del_nodes(self, names: list[str]) -> None:
        for name in reversed(names):
            try:
                await self.mon.execute("blockdev-del", {"node-name": name})
            except QmpCommandError as e:
                log.warning("domain %s: blockdev-del %s: %s", self.uuid, name, e.desc)

    async def plug_disk(self, disk: DiskSpec) -> None:
        check_disk(disk)
        if disk.is_cdrom:
            raise NotSupported(Capability.DISK_HOTPLUG, "CD-ROM drives are not hot-pluggable (IDE)")
        if self._disk(disk.device) is not None:
            raise DeviceError(f"disk device {disk.device} already in use")
        await self._add_nodes(disk)
        try:
            await self.mon.execute("device_add", cmd.disk_device(disk))
        except QmpCommandError as e:
            await self._del_nodes([f"{cmd.disk_node(disk.device)}-file", cmd.disk_node(disk.device)])
            raise DeviceError(f"disk {disk.device}: {e.desc}") from e
        self.spec = replace(self.spec, disks=(*self.spec.disks, disk))
        self.save()

    async def unplug_disk(self, device: int, timeout: float) -> None:
        disk = self._disk(device)
        if disk is None:
            raise DeviceError(f"no disk device {device}")
        if disk.is_cdrom:
            raise NotSupported(Capability.DISK_HOTPLUG, "CD-ROM drives are not hot-pluggable (IDE)")
        await self.device_del(cmd.disk_id(device), f"disk {device} unplug", timeout)
        # Live snapshots may have stacked layers on the disk: all of them go, newest first.
        await self._del_nodes(list(reversed(await qemu_blockdev.removal_order(self.mon, device))))
        self.spec = replace(self.spec, disks=tuple(d for d in self.spec.disks if d.device != device))
        self.save()

    async def set_cdrom(self, device: int, path: str | None) -> None:
        disk = self._disk(device)
        if disk is None or not disk.is_cdrom:
            raise DeviceError(f"no CD-ROM drive {device}")
        dev_id = cmd.disk_id(device)
        try:
            # force: the guest may have locked the tray; the toolstack's eject wins, as on Xen.
            await self.mon.execute("blockdev-open-tray", {"id": dev_id, "force": True})
            await self.mon.execute("blockdev-remove-medium", {"id": dev_id})
            if disk.path is not None:
                await self._del_nodes([f"{cmd.disk_node(device)}-file", cmd.disk_node(device)])
            if path is not None:
                await self._add_nodes(replace(disk, path=path))
                await self.mon.execute("blockdev-insert-medium", {"id": dev_id, "node-name": cmd.disk_node(device)})
            await self.mon.execute("blockdev-close-tray", {"id": dev_id})
        except QmpCommandError as e:
            raise DeviceError(f"CD-ROM {device}: {e.desc}") from e
        new = replace(disk, path=path)
        self.spec = replace(self.spec, disks=tuple(new if d is disk else d for d in self.spec.disks))
        self.save()

    # ------------------------------------------------------------ NICs

    async def plug_nic(self, nic: NicSpec) -> None:
        check_nic(nic)
        if any(n.device == nic.device for n in self.spec.nics):
            raise DeviceError(f"NIC device {nic.device} already in use")
        device = cmd.nic_device(nic)
        try:
            await self.mon.execute("netdev_add", cmd.nic_netdev(nic))
        except QmpCommandError as e:
            raise DeviceError(f"NIC {nic.device} (tap {nic.tap}): {e.desc}") from e
        try:
            await self.mon.execute("device_add", device)
        except QmpCommandError as e:
            with contextlib.suppress(QmpCommandError):
                await self.mon.execute("netdev_del", {"id": cmd.netdev_id(nic.device)})
            raise DeviceError(f"NIC {nic.device}: {e.desc}") from e
        self.spec = replace(self.spec, nics=(*self.spec.nics, nic))
        self.save()

    async def unplug_nic(self, device: int, timeout: float) -> None:
        if not any(n.device == device for n in self.spec.nics):
            raise DeviceError(f"no NIC device {device}")
        await self.device_del(cmd.nic_id(device), f"NIC {device} unplug", timeout)
        try:
            await self.mon.execute("netdev_del", {"id": cmd.netdev_id(device)})
        except QmpCommandError as e:
            log.warning("domain %s: netdev_del: %s", self.uuid, e.desc)
        self.spec = replace(self.spec, nics=tuple(n for n in self.spec.nics if n.device != device))
        self.save()

    # ------------------------------------------------------------ statistics

    async def stats(self) -> DomainStats:
        cpus = await self.mon.execute("query-cpus-fast")
        vcpu_ns = tuple(cpu_time_ns(self.pid, int(c["thread-id"])) for c in cpus)
        try:
            actual = int((await self.mon.execute("query-balloon"))["actual"])
        except QmpCommandError:
            actual = self.memory_target  # no balloon driver in the guest yet
        disks: dict[int, DiskStats] = {}
        for entry in await self.mon.execute("query-blockstats"):
            m = re.search(r"\bvbd(\d+)\b", str(entry.get("qdev", "")))
            if m:
                s = entry.get("stats", {})
                disks[int(m.group(1))] = DiskStats(s.get("rd_bytes", 0), s.get("wr_bytes", 0),
                                                   s.get("rd_operations", 0), s.get("wr_operations", 0))
        counters = net_counters(self.pid)
        nics: dict[int, NicStats] = {}
        for nic in self.spec.nics:
            c = counters.get(nic.tap)
            if c is not None:
                host_rx, host_rx_pkts, host_tx, host_tx_pkts = c
                nics[nic.device] = NicStats(host_tx, host_rx, host_tx_pkts, host_rx_pkts)
        return DomainStats(self.uuid, time.time(), cpu_time_ns(self.pid), vcpu_ns, actual, self.memory_target,
                           disks, nics)
