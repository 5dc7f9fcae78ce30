"""The Xen driver: Xen domains through libvirt's libxl driver (``xen:///system``) from dom0.

libxl does the domain building, device hotplug, save/restore and xenstore plumbing; this driver
maps the HypervisorDriver contract onto it:

* Exits: libvirt reports poweroff and reboot alike as STOPPED/SHUTDOWN, so domains are created
  with ``on_reboot=preserve``: after a SHUTDOWN event a domain that still exists rebooted (the
  driver destroys it and reports REBOOT), one that is gone powered off. CRASHED is a crash;
  DESTROYED that nobody here asked for is a kill (``xl destroy``, a dying toolstack).
* ``reboot()`` cannot keep the domid: Xen restarts a guest by building a new domain (xapi's
  VM.clean_reboot changes VM.domid too). The domain keeps its uuid, spec and devices.
* Clean shutdown and reboot use the PV control interface (xenstore control/shutdown), so the
  guest kernel needs Xen PV drivers; SysRq goes through control/sysrq.
* Domains belong to this driver when ``run_dir/<uuid>/meta.json`` exists: other libxl domains
  (``xl create``, another pyxapi) are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import string
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyxapi.drivers.hypervisor.base import (
    Capability,
    ConsoleInfo,
    DiskSpec,
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
    GuestTimeout,
    HostFacts,
    HypervisorError,
    InvalidArgument,
    InvalidDomainState,
    NicSpec,
    NotSupported,
    StartError,
)
from pyxapi.drivers.hypervisor.events import EventHub, EventStream
from pyxapi.drivers.hypervisor.xen import console_ring, devices, domxml, xenstore
from pyxapi.drivers.hypervisor.xen import host as xhost
from pyxapi.drivers.hypervisor.xen.conn import LibvirtConnection, LifecycleEvent
from pyxapi.drivers.hypervisor.xen.domain import XenDomain
from pyxapi.drivers.hypervisor.xen.relay import PtyRelay, TcpRelay
from pyxapi.drivers.storage.durable import fsync_new_file

log = logging.getLogger(__name__)

EXIT_WAIT = 30.0  # libxl tears devices down (hotplug scripts) before a destroyed domain is gone
CONSOLE_LOG_DIR = Path("/var/log/xen/console")
LIBXL_LOG_DIR = Path("/var/log/libvirt/libxl")


class XenDriver:
    name = "xen"

    def __init__(self, run_dir: str | Path, *, uri: str = "xen:///system") -> None:
        self.run_dir = Path(run_dir).absolute()
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.conn = LibvirtConnection(uri)
        self.lv = self.conn.libvirt
        self._domains: dict[str, XenDomain] = {}
        self._starting: set[str] = set()
        self._hub: EventHub[DomainEvent] = EventHub()
        self._tasks: set[asyncio.Task[None]] = set()
        self._subscribed = False
        self.device_model = xhost.find_device_model()
        self.pygrub = xhost.find_pygrub()

    @property
    def capabilities(self) -> frozenset[Capability]:
        caps = {
            Capability.START_PAUSED, Capability.PAUSE, Capability.CLEAN_SHUTDOWN, Capability.CLEAN_REBOOT,
            Capability.HARD_REBOOT, Capability.SUSPEND, Capability.VCPU_HOTPLUG, Capability.MEMORY_BALLOON,
            Capability.DISK_HOTPLUG, Capability.CDROM_MEDIA, Capability.NIC_HOTPLUG,
            Capability.DIRECT_KERNEL_BOOT, Capability.SERIAL_CONSOLE, Capability.GUEST_AGENT, Capability.SYSRQ,
            Capability.STATS, Capability.ADOPT,
        }  # fmt: skip
        if self.device_model:
            # Every guest's VNC server, and live changes to qcow2 disks: both are the device model's.
            caps |= {Capability.VNC_CONSOLE, Capability.LIVE_DISK_SNAPSHOT, Capability.DISK_RESIZE_ONLINE}
        return frozenset(caps)

    # ------------------------------------------------------------ helpers

    def _get(self, uuid: str) -> XenDomain:
        d = self._domains.get(uuid)
        if d is None:
            raise DomainNotFound(uuid)
        return d

    async def _ensure_subscribed(self) -> None:
        if not self._subscribed:
            loop = asyncio.get_running_loop()
            await self.conn.call(lambda _conn: self.conn.subscribe(loop, self._on_event))
            self._subscribed = True

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _libxl_log(self, spec: DomainSpec) -> str:
        path = LIBXL_LOG_DIR / f"{domxml.domain_name(spec)}.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-15:])
        return ""

    async def _query_state(self, d: XenDomain) -> DomainState:
        lv = self.lv
        try:
            state, _reason = await self.conn.domain_call(d.uuid, lambda dom: dom.state())
        except lv.libvirtError as e:
            if self.conn.is_no_domain(e):
                raise DomainNotFound(d.uuid) from None
            raise HypervisorError(f"domain {d.uuid}: {e}") from None
        if state == lv.VIR_DOMAIN_PAUSED:
            d.state = DomainState.PAUSED
        elif state in (lv.VIR_DOMAIN_RUNNING, lv.VIR_DOMAIN_BLOCKED, lv.VIR_DOMAIN_NOSTATE):
            d.state = DomainState.RUNNING
        return d.state

    async def _refresh_live(self, d: XenDomain) -> None:
        """domid and console endpoints of the domain's current incarnation."""

        def read(dom: Any) -> tuple[int, str]:
            return dom.ID(), dom.XMLDesc(0)

        domid, xml = await self.conn.domain_call(d.uuid, read)
        live = domxml.live_devices(xml)
        d.domid, d.pty, d.vnc_port = domid, live.console_pty, live.vnc_port
        d.save()
        if d.console is None:
            d.console = PtyRelay(d.console_socket, lambda: d.pty)
            await d.console.start()
        else:
            d.console.reopen()
        if live.vnc_port is not None and d.vnc is None:
            d.vnc = TcpRelay(d.vnc_socket, lambda: d.vnc_port)
            await d.vnc.start()

    async def _close_relays(self, d: XenDomain) -> None:
        for relay in (d.console, d.vnc):
            if relay is not None:
                await relay.close()
        d.console = d.vnc = None

    async def _finish(self, d: XenDomain, reason: ExitReason, requested: bool, detail: str = "") -> None:
        """The domain is gone: forget it and tell every subscriber, exactly once."""
        if d.finished:
            return
        d.finished = True
        self._domains.pop(d.uuid, None)
        await self._close_relays(d)
        d.forget()
        self._hub.publish(DomainEvent(d.uuid, d.domid, reason, requested, time.time(), detail))
        d.gone.set()

    # ------------------------------------------------------------ libvirt events

    def _on_event(self, ev: LifecycleEvent) -> None:
        d = self._domains.get(ev.uuid)
        if d is None:
            return
        lv = self.lv
        if ev.event == lv.VIR_DOMAIN_EVENT_STOPPED:
            self._spawn(self._stopped(d, ev))
        elif ev.event == lv.VIR_DOMAIN_EVENT_SUSPENDED:
            d.state = DomainState.PAUSED
        elif ev.event == lv.VIR_DOMAIN_EVENT_RESUMED:
            d.state = DomainState.RUNNING

    async def _still_there(self, uuid: str) -> tuple[bool, bool]:
        """(exists, alive): a preserved (rebooted) domain exists but is not alive."""
        lv = self.lv

        def probe(conn: Any) -> tuple[bool, bool]:
            dom = self.conn.lookup(conn, uuid)
            if dom is None:
                return False, False
            try:
                state, _ = dom.state()
            except lv.libvirtError:
                return False, False
            return True, state in (lv.VIR_DOMAIN_RUNNING, lv.VIR_DOMAIN_PAUSED, lv.VIR_DOMAIN_BLOCKED)

        return await self.conn.call(probe)

    async def _stopped(self, d: XenDomain, ev: LifecycleEvent) -> None:
        lv = self.lv
        if d.finished:
            return
        if d.rebooting:
            if ev.detail == lv.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN:
                d.reboot_seen.set()
            return
        exists, alive = await self._still_there(d.uuid)
        if alive:
            return  # an event about an earlier incarnation (before a reboot recreated it)
        detail = ev.detail
        if detail == lv.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN:
            if exists:  # on_reboot=preserve kept it: the guest rebooted
                await self._destroy_quietly(d.uuid)
                reason = ExitReason.REBOOT
            else:
                reason = ExitReason.POWEROFF
            await self._finish(d, reason, d.requested is reason, "guest-shutdown")
        elif detail == lv.VIR_DOMAIN_EVENT_STOPPED_CRASHED:
            await self._finish(d, ExitReason.CRASH, False, "guest-crash")
        elif detail == lv.VIR_DOMAIN_EVENT_STOPPED_SAVED and d.requested is ExitReason.SUSPENDED:
            await self._finish(d, ExitReason.SUSPENDED, True, "saved")
        elif detail == lv.VIR_DOMAIN_EVENT_STOPPED_DESTROYED and d.requested is not None:
            await self._finish(d, d.requested, True, "destroyed")
        else:
            await self._finish(d, ExitReason.KILLED, False, f"stopped (libvirt detail {detail})")
            # Told first (a kill is reported at once), cleaned up after: the zombie's device model.
            self._spawn(devices.reap_killed(d.domid, domxml.domain_name(d.spec)))

    async def _destroy_quietly(self, uuid: str) -> None:
        def destroy(conn: Any) -> None:
            dom = self.conn.lookup(conn, uuid)
            if dom is not None:
                with contextlib.suppress(self.lv.libvirtError):
                    dom.destroy()

        await self.conn.call(destroy)

    async def _destroy(self, d: XenDomain, reason: ExitReason) -> None:
        """Destroy the domain now; returns once its exit has been published."""
        d.requested = reason
        try:
            await self.conn.domain_call(d.uuid, lambda dom: dom.destroy())
        except self.lv.libvirtError as e:
            if not self.conn.is_no_domain(e):
                raise HypervisorError(f"domain {d.uuid}: destroy failed: {e}") from None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(EXIT_WAIT):
                await d.gone.wait()
                return
        exists, _ = await self._still_there(d.uuid)  # the event got lost: settle it here
        if exists:
            raise HypervisorError(f"domain {d.uuid} did not go away after destroy")
        await self._finish(d, reason, True, "destroyed")

    # ------------------------------------------------------------ contract: lifecycle

    async def host_facts(self) -> HostFacts:
        return await self.conn.call(xhost.host_facts)

    async def read_console_ring(self) -> str:  # HypervisorConsole
        return await console_ring.read_console_ring()

    async def send_debug_keys(self, keys: str) -> None:
        await console_ring.send_debug_keys(keys)

    def read_host(self) -> tuple[HostFacts, xhost.Dom0]:
        """Blocking: the host's and dom0's facts, for the daemon's start-up wiring."""
        conn = self.conn.open_connection()
        return xhost.host_facts(conn), xhost.dom0(conn)

    async def _create(self, spec: DomainSpec, *, paused: bool, image: str | None) -> DomainInfo:
        spec.validate()
        await self._ensure_subscribed()
        if spec.uuid in self._domains or spec.uuid in self._starting:
            raise DomainExists(spec.uuid)
        if await self.conn.call(lambda c: self.conn.lookup(c, spec.uuid)) is not None:
            raise DomainExists(spec.uuid)  # running, but not (yet) adopted by this instance
        if image is not None and not Path(image).exists():
            raise StartError(spec.uuid, f"no suspend image at {image}")
        self._starting.add(spec.uuid)
        d = XenDomain(spec, self.run_dir / spec.uuid)
        try:
            d.bridges = {nic.device: devices.take_over_tap(nic, None) for nic in spec.nics}
            xml = self._domain_xml(d)
            devices.check_backends(spec.disks, self.device_model)
            d.save()
            self._domains[spec.uuid] = d
            await self._boot(d, xml, paused=paused, image=image)
            return d.info()
        except BaseException:
            self._domains.pop(spec.uuid, None)
            if not d.finished:
                await self._close_relays(d)
                d.forget()
            raise
        finally:
            self._starting.discard(spec.uuid)

    def _domain_xml(self, d: XenDomain) -> str:
        placeholder = devices.placeholder_media(d)
        return domxml.build_domain_xml(
            d.spec,
            d.bridges,
            bootloader_path=self.pygrub,
            device_model=self.device_model,
            empty_media=str(placeholder) if placeholder else None,
        )

    async def _boot(self, d: XenDomain, xml: str, *, paused: bool, image: str | None) -> None:
        lv = self.lv
        try:
            if image is None:
                flags = lv.VIR_DOMAIN_START_PAUSED if paused else 0
                await self.conn.call(lambda c: c.createXML(xml, flags))
            else:
                flags = lv.VIR_DOMAIN_SAVE_PAUSED if paused else 0
                await self.conn.call(lambda c: c.restoreFlags(image, None, flags))
        except lv.libvirtError as e:
            what = "create" if image is None else "restore"
            raise StartError(d.uuid, f"libxl {what} failed: {e}", self._libxl_log(d.spec)) from None
        try:
            await self._refresh_live(d)
        except (lv.libvirtError, DomainNotFound) as e:
            raise StartError(d.uuid, f"the domain vanished during start ({e})", self._libxl_log(d.spec)) from None
        d.state = DomainState.PAUSED if paused else DomainState.RUNNING
        await self._query_state(d)
        if image is None:
            await devices.eject_placeholders(self, d)
        else:
            devices.note_restored_empty_drives(d)

    async def start(self, spec: DomainSpec, *, paused: bool = False) -> DomainInfo:
        return await self._create(spec, paused=paused, image=None)

    async def resume(self, spec: DomainSpec, image_path: str, *, paused: bool = False) -> DomainInfo:
        return await self._create(spec, paused=paused, image=image_path)

    async def shutdown(self, uuid: str, *, clean: bool, timeout: float = 60.0) -> None:
        d = self._get(uuid)
        async with d.lock:
            if not clean:
                await self._destroy(d, ExitReason.POWEROFF)
                return
            if await self._query_state(d) is not DomainState.RUNNING:
                raise InvalidDomainState(uuid, d.state, DomainState.RUNNING)
            d.requested = ExitReason.POWEROFF
            try:
                await self.conn.domain_call(uuid, lambda dom: dom.shutdownFlags(self.lv.VIR_DOMAIN_SHUTDOWN_PARAVIRT))
                async with asyncio.timeout(timeout):
                    await d.gone.wait()
            except TimeoutError:
                d.requested = None  # if the guest powers off later, that is its own decision
                raise GuestTimeout(uuid, "clean shutdown", timeout) from None
            except self.lv.libvirtError as e:
                d.requested = None
                raise HypervisorError(f"domain {uuid}: shutdown request failed: {e}") from None

    async def reboot(self, uuid: str, *, clean: bool, timeout: float = 60.0) -> DomainInfo:
        d = self._get(uuid)
        async with d.lock:
            state = await self._query_state(d)
            if clean and state is not DomainState.RUNNING:
                raise InvalidDomainState(uuid, state, DomainState.RUNNING)
            d.rebooting = True
            d.reboot_seen.clear()
            try:
                if clean:
                    await self.conn.domain_call(uuid, lambda dom: dom.reboot(self.lv.VIR_DOMAIN_REBOOT_PARAVIRT))
                    try:
                        async with asyncio.timeout(timeout):
                            await d.reboot_seen.wait()
                    except TimeoutError:
                        raise GuestTimeout(uuid, "clean reboot", timeout) from None
                await self._destroy_quietly(uuid)
                await self._wait_absent(uuid)
                d.bridges = {n.device: devices.take_over_tap(n, d.bridges.get(n.device)) for n in d.spec.nics}
                await self._boot(d, self._domain_xml(d), paused=False, image=None)
            except StartError:
                await self._finish(d, ExitReason.CRASH, False, "could not rebuild the domain after a reboot")
                raise
            finally:
                d.rebooting = False
            return d.info()

    async def _wait_absent(self, uuid: str) -> None:
        deadline = time.monotonic() + EXIT_WAIT
        while (await self._still_there(uuid))[0]:
            if time.monotonic() > deadline:
                raise HypervisorError(f"domain {uuid} did not go away")
            await asyncio.sleep(0.2)

    async def pause(self, uuid: str) -> None:
        d = self._get(uuid)
        async with d.lock:
            if await self._query_state(d) is not DomainState.RUNNING:
                raise InvalidDomainState(uuid, d.state, DomainState.RUNNING)
            await self.conn.domain_call(uuid, lambda dom: dom.suspend())
            d.state = DomainState.PAUSED

    async def unpause(self, uuid: str) -> None:
        d = self._get(uuid)
        async with d.lock:
            if await self._query_state(d) is not DomainState.PAUSED:
                raise InvalidDomainState(uuid, d.state, DomainState.PAUSED)
            await self.conn.domain_call(uuid, lambda dom: dom.resume())
            d.state = DomainState.RUNNING

    async def suspend(self, uuid: str, image_path: str, *, timeout: float = 300.0) -> None:
        d = self._get(uuid)
        async with d.lock:
            d.requested = ExitReason.SUSPENDED
            try:
                async with asyncio.timeout(timeout):
                    await self.conn.domain_call(uuid, lambda dom: dom.save(image_path))
            except (self.lv.libvirtError, TimeoutError) as e:
                d.requested = None
                raise HypervisorError(f"domain {uuid}: suspend failed: {e or 'timed out'}") from None
            try:  # the guest's memory exists only in this image now: on stable storage before success
                await asyncio.to_thread(fsync_new_file, image_path)
            except OSError as e:
                log.error("domain %s: suspend image %s could not be synced: %s", uuid, image_path, e)
            await self._finish(d, ExitReason.SUSPENDED, True, "saved")

    # ------------------------------------------------------------ contract: devices

    async def set_vcpus(self, uuid: str, count: int, *, timeout: float = 30.0) -> None:
        d = self._get(uuid)
        async with d.lock:
            await devices.set_vcpus(self, d, count)

    async def set_memory_target(self, uuid: str, target: int) -> None:
        d = self._get(uuid)
        async with d.lock:
            await devices.set_memory_target(self, d, target)

    async def plug_disk(self, uuid: str, disk: DiskSpec) -> None:
        d = self._get(uuid)
        async with d.lock:
            await devices.plug_disk(self, d, disk)

    async def unplug_disk(self, uuid: str, device: int, *, timeout: float = 30.0) -> None:
        d = self._get(uuid)
        async with d.lock:
            await devices.unplug_disk(self, d, device)

    async def switch_disks(self, uuid: str, disks: Sequence[DiskSpec]) -> None:
        d = self._get(uuid)
        async with d.lock:
            await devices.switch_disks(d, disks)

    async def resize_disk(self, uuid: str, device: int, size: int) -> None:
        d = self._get(uuid)
        async with d.lock:
            await devices.resize_disk(d, device, size)

    async def save_memory(self, uuid: str, image_path: str, *, timeout: float = 300.0) -> None:
        # libvirt's libxl driver saves a domain only by stopping it (no live checkpoint).
        raise NotSupported(Capability.CHECKPOINT, "the xen driver cannot save a domain's memory and keep it")

    async def set_cdrom(self, uuid: str, device: int, path: str | None) -> None:
        d = self._get(uuid)
        async with d.lock:
            await devices.set_cdrom(self, d, device, path)

    async def plug_nic(self, uuid: str, nic: NicSpec) -> None:
        d = self._get(uuid)
        async with d.lock:
            await devices.plug_nic(self, d, nic)

    async def unplug_nic(self, uuid: str, device: int, *, timeout: float = 30.0) -> None:
        d = self._get(uuid)
        async with d.lock:
            await devices.unplug_nic(self, d, device)

    # ------------------------------------------------------------ contract: queries

    async def state(self, uuid: str) -> DomainState:
        return await self._query_state(self._get(uuid))

    async def info(self, uuid: str) -> DomainInfo:
        d = self._get(uuid)
        await self._query_state(d)
        return d.info()

    async def stats(self, uuid: str) -> DomainStats:
        return await devices.stats(self, self._get(uuid))

    async def list_domains(self) -> list[DomainInfo]:
        out = []
        for d in list(self._domains.values()):
            with contextlib.suppress(DomainNotFound):
                await self._query_state(d)
                out.append(d.info())
        return out

    async def console(self, uuid: str) -> ConsoleInfo:
        d = self._get(uuid)
        log_file = CONSOLE_LOG_DIR / f"guest-{domxml.domain_name(d.spec)}.log"
        return ConsoleInfo(
            str(d.vnc_socket) if d.vnc is not None else None,
            str(d.console_socket),
            str(log_file) if log_file.exists() else None,
        )

    async def guest_agent(self, uuid: str, *, timeout: float = 10.0) -> GuestAgentInfo:
        d = self._get(uuid)
        # Only the two directories agents write: a whole domain's tree (devices, backends) is several
        # times larger, and xenstore-ls walks it one request per node.
        home = f"/local/domain/{d.domid}"
        data, attr = await asyncio.gather(
            xenstore.read_tree(f"{home}/data", timeout=max(timeout, 30.0)),
            xenstore.read_tree(f"{home}/attr", timeout=max(timeout, 30.0)),
        )
        tree = {**data, **attr}
        info = xenstore.guest_info(d.domid, tree, {n.device: n.mac for n in d.spec.nics})
        if info is None:
            raise GuestAgentUnavailable(uuid, "no guest agent has written data/ in xenstore")
        return info

    async def send_sysrq(self, uuid: str, key: str) -> None:
        if len(key) != 1 or key not in string.ascii_lowercase + string.digits:
            raise InvalidArgument(f"sysrq key {key!r}")
        d = self._get(uuid)
        await xenstore.write(f"/local/domain/{d.domid}/control/sysrq", key)

    def subscribe(self) -> EventStream[DomainEvent]:
        return self._hub.subscribe()

    # ------------------------------------------------------------ daemon restarts

    async def adopt(self) -> list[DomainInfo]:
        await self._ensure_subscribed()
        lv = self.lv

        def running(conn: Any) -> dict[str, tuple[int, int]]:
            out = {}
            for dom in conn.listAllDomains(lv.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                with contextlib.suppress(lv.libvirtError):
                    out[dom.UUIDString()] = (dom.ID(), dom.state()[0])
            return out

        live = await self.conn.call(running)
        found: list[DomainInfo] = []
        for entry in sorted(self.run_dir.iterdir()):
            if entry.name in self._domains or entry.name in self._starting or not (entry / "meta.json").exists():
                continue
            try:
                d = XenDomain.load(entry)
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("adopt: unreadable %s: %s", entry / "meta.json", e)
                continue
            if d.uuid not in live:
                # It died while nobody watched: the cause is unknown, report it as killed.
                d.finished = True
                d.forget()
                self._hub.publish(
                    DomainEvent(d.uuid, d.domid, ExitReason.KILLED, False, time.time(), "exited while unsupervised")
                )
                continue
            self._domains[d.uuid] = d
            if live[d.uuid][1] not in (lv.VIR_DOMAIN_RUNNING, lv.VIR_DOMAIN_PAUSED, lv.VIR_DOMAIN_BLOCKED):
                await self._destroy_quietly(d.uuid)  # preserved: the guest rebooted while nobody watched
                await self._finish(d, ExitReason.REBOOT, False, "rebooted while unsupervised")
                continue
            await self._refresh_live(d)
            await self._query_state(d)
            found.append(d.info())
        return found

    async def close(self) -> None:
        """Forget the domains without stopping them (they keep running; adopt() finds them)."""
        await self.conn.call(lambda _conn: self.conn.close())
        self.conn.stop_worker()
        self._subscribed = False
        for d in list(self._domains.values()):
            await self._close_relays(d)
        self._domains.clear()
        for task in list(self._tasks):
            task.cancel()
