"""Live changes to a Xen domain: vCPUs, balloon, disk / CD / NIC hot-plug, and its statistics.

NICs: the network driver prepares a tap per VIF, named and plugged into the VIF's bridge. Xen
guests use netback vifs instead, so the vif takes over: the tap is removed and the vif is created
under the tap's name on the same bridge (libxl's ``vifname``). Rules the network driver keyed on
that name (locking, rate limits) therefore apply to the vif.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyxapi.drivers.hypervisor.base import (
    DeviceError,
    DiskSpec,
    DiskStats,
    DomainNotFound,
    DomainStats,
    InvalidArgument,
    NicSpec,
    NicStats,
    check_disk,
    check_nic,
)
from pyxapi.drivers.hypervisor.xen import domxml, qdisk, qdisk_live

if TYPE_CHECKING:
    from pyxapi.drivers.hypervisor.xen.domain import XenDomain
    from pyxapi.drivers.hypervisor.xen.driver import XenDriver

KiB = 1024
log = logging.getLogger(__name__)


def take_over_tap(nic: NicSpec, known_bridge: str | None) -> str:
    """The bridge of the tap prepared for this NIC; the tap is deleted so the vif can take its name."""
    dev = Path("/sys/class/net") / nic.tap
    master = dev / "master"
    if master.exists():
        bridge = os.path.basename(os.readlink(master))
        subprocess.run(["ip", "link", "del", nic.tap], capture_output=True, check=False)
        return bridge
    if dev.exists():
        raise DeviceError(f"NIC {nic.device}: tap {nic.tap} is not plugged into a bridge")
    if known_bridge:
        return known_bridge  # taken over earlier (the domain is being rebuilt after a reboot)
    raise DeviceError(f"NIC {nic.device}: no tap {nic.tap} (the network driver prepares it)")


def check_backends(disks: tuple[DiskSpec, ...], device_model: str | None) -> None:
    for disk in disks:
        if disk.format == "qcow2" and disk.path is not None and device_model is None:
            raise DeviceError(f"disk {disk.device}: qcow2 needs libxl's qdisk backend: install qemu-system-xen")


def _update(d: XenDomain, **changes: Any) -> None:
    d.spec = dataclasses.replace(d.spec, **changes)
    d.save()


ATTACH_TRIES = 2  # libxl gives a new backend 10 s to come up: short for nested TCG under load


async def _attach(drv: XenDriver, d: XenDomain, element: ET.Element, what: str) -> None:
    xml = ET.tostring(element, encoding="unicode")
    flags = drv.lv.VIR_DOMAIN_AFFECT_LIVE
    for attempt in range(1, ATTACH_TRIES + 1):
        try:
            await drv.conn.domain_call(d.uuid, lambda dom: dom.attachDeviceFlags(xml, flags))
            return
        except drv.lv.libvirtError as e:
            # A refused device (slot in use, bad path) fails the same way again; a backend that
            # was merely slow (libxl undid the half-attached device) gets one more try.
            if attempt == ATTACH_TRIES or "failed to attach" not in str(e):
                raise DeviceError(f"{what}: {e}") from None
            log.warning("%s: %s; trying once more", what, e)
            await asyncio.sleep(2.0)


async def _detach(drv: XenDriver, d: XenDomain, element: ET.Element, what: str) -> None:
    xml = ET.tostring(element, encoding="unicode")
    flags = drv.lv.VIR_DOMAIN_AFFECT_LIVE
    try:
        await drv.conn.domain_call(d.uuid, lambda dom: dom.detachDeviceFlags(xml, flags))
    except drv.lv.libvirtError as e:
        raise DeviceError(f"{what}: {e}") from None


async def set_vcpus(drv: XenDriver, d: XenDomain, count: int) -> None:
    if not 1 <= count <= d.spec.vcpus_max:
        raise InvalidArgument(f"vCPU count {count} not in 1..{d.spec.vcpus_max}")
    flags = drv.lv.VIR_DOMAIN_AFFECT_LIVE
    try:
        await drv.conn.domain_call(d.uuid, lambda dom: dom.setVcpusFlags(count, flags))
    except drv.lv.libvirtError as e:
        raise DeviceError(f"set vCPUs to {count}: {e}") from None
    _update(d, vcpus_at_startup=count)


async def set_memory_target(drv: XenDriver, d: XenDomain, target: int) -> None:
    if not 0 < target <= d.spec.memory_static_max:
        raise InvalidArgument(f"memory target {target} not in 1..{d.spec.memory_static_max}")
    flags = drv.lv.VIR_DOMAIN_AFFECT_LIVE
    try:
        await drv.conn.domain_call(d.uuid, lambda dom: dom.setMemoryFlags(target // KiB, flags))
    except drv.lv.libvirtError as e:
        raise DeviceError(f"set memory target: {e}") from None
    _update(d, memory_target=target)


def _kind(d: XenDomain) -> str:
    return domxml.domain_type(d.spec)


async def plug_disk(drv: XenDriver, d: XenDomain, disk: DiskSpec) -> None:
    try:
        check_disk(disk)
    except InvalidArgument as e:
        raise DeviceError(str(e)) from None
    if any(x.device == disk.device for x in d.spec.disks):
        raise DeviceError(f"disk device {disk.device} is in use")
    check_backends((disk,), drv.device_model)
    if disk.path is not None:
        await _attach(drv, d, domxml.disk_xml(disk, _kind(d)), f"plug disk {disk.device}")
    _update(d, disks=tuple(sorted((*d.spec.disks, disk), key=lambda x: x.device)))


async def unplug_disk(drv: XenDriver, d: XenDomain, device: int) -> None:
    disk = next((x for x in d.spec.disks if x.device == device), None)
    if disk is None:
        raise DeviceError(f"no disk at device {device}")
    if disk.path is not None:
        await _detach(drv, d, domxml.disk_xml(disk, _kind(d)), f"unplug disk {device}")
        await _wait_device_gone(drv, d, domxml.disk_target(device))
        if disk.format == "qcow2":
            await qdisk_live.release(d.domid, domxml.disk_target(device))
    _update(d, disks=tuple(x for x in d.spec.disks if x.device != device))


def _live_qcow2(d: XenDomain, device: int) -> DiskSpec:
    disk = next((x for x in d.spec.disks if x.device == device and not x.is_cdrom), None)
    if disk is None:
        raise DeviceError(f"no disk device {device}")
    if disk.format != "qcow2":
        raise DeviceError(f"disk {device} is {disk.format} (blkback): only qcow2 disks (qdisk) change while in use")
    return disk


async def switch_disks(d: XenDomain, disks: Sequence[DiskSpec]) -> None:
    """LiveDiskDriver.switch_disks for qcow2 disks (see qdisk_live)."""
    if len({x.device for x in disks}) != len(disks):
        raise InvalidArgument("a disk may be switched only once per call")
    for disk in disks:
        _live_qcow2(d, disk.device)
        if disk.is_cdrom or disk.format != "qcow2" or disk.path is None:
            raise DeviceError(f"disk {disk.device}: only a qcow2 overlay can take over a running disk")
    await qdisk_live.switch(d.domid, [(domxml.disk_target(x.device), str(x.path)) for x in disks])
    by_device = {x.device: x for x in disks}
    disks_now = tuple(
        dataclasses.replace(x, path=by_device[x.device].path) if x.device in by_device else x for x in d.spec.disks
    )
    _update(d, disks=disks_now)


async def resize_disk(d: XenDomain, device: int, size: int) -> None:
    disk = _live_qcow2(d, device)
    if disk.read_only:
        raise DeviceError(f"disk {device} is read-only")
    await qdisk_live.resize(d.domid, domxml.disk_target(device), size)


async def _wait_device_gone(drv: XenDriver, d: XenDomain, target: str, timeout: float = 30.0) -> None:
    """libxl returns once the backend closed; wait until the domain's XML no longer lists it."""
    deadline = time.monotonic() + timeout
    while True:
        xml = await drv.conn.domain_call(d.uuid, lambda dom: dom.XMLDesc(0))
        if target not in domxml.live_devices(xml).disks:
            return
        if time.monotonic() > deadline:
            raise DeviceError(f"{target} still attached after {timeout:g}s")
        await asyncio.sleep(0.2)


# QEMU 7.2's Xen device model crashes (segfault) when media goes into an emulated CD-ROM drive
# that was empty when the domain was built; a drive that had media and was ejected takes new media
# fine. So an HVM guest's empty drives start with an empty placeholder file, ejected at once.


def placeholder_media(d: XenDomain) -> Path | None:
    """The placeholder file for the domain's empty HVM CD-ROM drives; None when it has none."""
    if not _empty_hvm_drives(d):
        return None
    path = d.empty_media
    if not path.exists():
        d.dir.mkdir(parents=True, exist_ok=True)
        path.touch()
    return path


def _empty_hvm_drives(d: XenDomain) -> list[DiskSpec]:
    if _kind(d) != "hvm":
        return []
    return [x for x in d.spec.disks if x.is_cdrom and x.path is None]


async def eject_placeholders(drv: XenDriver, d: XenDomain) -> None:
    d.unsafe_drives = set()
    for drive in _empty_hvm_drives(d):
        xml = ET.tostring(domxml.cdrom_xml(drive), encoding="unicode")
        try:
            await drv.conn.domain_call(
                d.uuid, lambda dom, xml=xml: dom.updateDeviceFlags(xml, drv.lv.VIR_DOMAIN_AFFECT_LIVE)
            )
        except drv.lv.libvirtError as e:
            log.warning("domain %s: CD-ROM %d keeps its placeholder media: %s", d.uuid, drive.device, e)


def note_restored_empty_drives(d: XenDomain) -> None:
    """A restored domain's device model rebuilt its empty drives empty (the placeholder trick is
    not possible on restore): media must not go into them until the domain is rebuilt."""
    d.unsafe_drives = {x.device for x in _empty_hvm_drives(d)}


async def set_cdrom(drv: XenDriver, d: XenDomain, device: int, path: str | None) -> None:
    drive = next((x for x in d.spec.disks if x.device == device), None)
    if drive is None or not drive.is_cdrom:
        raise DeviceError(f"no CD-ROM drive at device {device}")
    kind = _kind(d)
    if path is not None and device in d.unsafe_drives:
        raise DeviceError(
            f"CD-ROM {device} was empty when this HVM guest was resumed: the device model cannot take "
            "media into it until the guest reboots"
        )
    if kind == "hvm":  # an emulated drive: the device model inserts and ejects media in place
        new = dataclasses.replace(drive, path=path, format="raw")
        xml = ET.tostring(domxml.cdrom_xml(new), encoding="unicode")
        flags = drv.lv.VIR_DOMAIN_AFFECT_LIVE
        try:
            await drv.conn.domain_call(d.uuid, lambda dom: dom.updateDeviceFlags(xml, flags))
        except drv.lv.libvirtError as e:
            raise DeviceError(f"change CD-ROM {device}: {e}") from None
    else:
        # PV guests have no removable-media protocol: media is a read-only disk, so a change is
        # an unplug of the old media and a plug of the new one.
        if drive.path is not None:
            await _detach(drv, d, domxml.disk_xml(drive, kind), f"eject CD-ROM {device}")
            await _wait_device_gone(drv, d, domxml.disk_target(device))
        if path is not None:
            new = dataclasses.replace(drive, path=path, format="raw")
            await _attach(drv, d, domxml.disk_xml(new, kind), f"insert into CD-ROM {device}")
    disks = tuple(dataclasses.replace(x, path=path) if x.device == device else x for x in d.spec.disks)
    _update(d, disks=disks)


async def plug_nic(drv: XenDriver, d: XenDomain, nic: NicSpec) -> None:
    try:
        check_nic(nic)
    except InvalidArgument as e:
        raise DeviceError(str(e)) from None
    if any(n.device == nic.device for n in d.spec.nics):
        raise DeviceError(f"NIC device {nic.device} is in use")
    bridge = take_over_tap(nic, None)
    await _attach(drv, d, domxml.nic_xml(nic, bridge, _kind(d)), f"plug NIC {nic.device}")
    d.bridges[nic.device] = bridge
    _update(d, nics=tuple(sorted((*d.spec.nics, nic), key=lambda n: n.device)))


async def unplug_nic(drv: XenDriver, d: XenDomain, device: int) -> None:
    nic = next((n for n in d.spec.nics if n.device == device), None)
    if nic is None:
        raise DeviceError(f"no NIC at device {device}")
    bridge = d.bridges.get(device, "")
    await _detach(drv, d, domxml.nic_xml(nic, bridge, _kind(d)), f"unplug NIC {device}")
    d.bridges.pop(device, None)
    _update(d, nics=tuple(n for n in d.spec.nics if n.device != device))


async def vcpu_times(domid: int) -> tuple[int, ...]:
    """CPU time of each online vCPU, from `xl vcpu-list` (libvirt's libxl driver cannot report it:
    virDomainGetVcpus needs virNodeGetCPUMap, which it lacks)."""
    proc = await asyncio.create_subprocess_exec(
        "xl", "vcpu-list", str(domid), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await proc.communicate()
    times = []
    for line in out.decode(errors="replace").splitlines()[1:]:
        cols = line.split()
        # Name ID VCPU CPU State Time(s) ...; an offline vCPU has no CPU ("-") and state "--p".
        if len(cols) >= 6 and cols[1] == str(domid) and cols[3] != "-":
            times.append(int(float(cols[5]) * 1e9))
    return tuple(times)


async def reap_killed(domid: int, name: str) -> None:
    """A domain destroyed behind libxl's back stays a dying zombie while its device model (QEMU in
    dom0) maps its memory, and its backends stay in xenstore: libxl's destroy releases both. Only
    the domain still listed under that domid and name is destroyed (domids are not reused at once)."""
    proc = await asyncio.create_subprocess_exec(
        "xl", "list", str(domid), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0 or name not in out.decode(errors="replace"):
        return
    log.info("domain %d (%s) was killed: releasing its device model and backends", domid, name)
    proc = await asyncio.create_subprocess_exec(
        "xl", "destroy", str(domid), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    await proc.wait()


async def stats(drv: XenDriver, d: XenDomain) -> DomainStats:
    lv = drv.lv
    disks = [x for x in d.spec.disks if x.path is not None]
    nics = list(d.spec.nics)

    vcpu_ns = await vcpu_times(d.domid)
    qdisk_stats = await qdisk.block_stats(d.domid) if any(x.format == "qcow2" for x in disks) else {}

    def sample(dom: Any) -> DomainStats:
        _state, _max_kib, mem_kib, _nr, cpu_ns = dom.info()
        disk_stats = {}
        for disk in disks:
            target = domxml.disk_target(disk.device)
            if target in qdisk_stats:
                disk_stats[disk.device] = qdisk_stats[target]
                continue
            try:
                rd_req, rd_bytes, wr_req, wr_bytes, _errs = dom.blockStats(target)
            except lv.libvirtError:
                continue
            disk_stats[disk.device] = DiskStats(max(rd_bytes, 0), max(wr_bytes, 0), max(rd_req, 0), max(wr_req, 0))
        nic_stats = {}
        for nic in nics:
            try:
                s = dom.interfaceStats(nic.tap)
            except lv.libvirtError:
                continue
            nic_stats[nic.device] = NicStats(s[0], s[4], s[1], s[5])  # libvirt: already as the guest sees it
        return DomainStats(
            d.uuid,
            time.time(),
            int(cpu_ns),
            vcpu_ns,
            int(mem_kib) * KiB,
            d.spec.memory_target,
            disk_stats,
            nic_stats,
        )

    try:
        return await drv.conn.domain_call(d.uuid, sample)
    except lv.libvirtError as e:
        if drv.conn.is_no_domain(e):
            raise DomainNotFound(d.uuid) from None
        raise
