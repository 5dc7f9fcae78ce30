"""QEMU driver: one daemonized QEMU process per domain, controlled over QMP (qemu.qmp, asyncio).

Everything a domain needs lives in ``run_dir/<uuid>/`` (pid file, QMP / VNC / serial / agent
sockets, metadata, logs). QEMU runs in its own session, detached from the daemon, so restarting
the daemon never stops a guest: a new driver over the same run dir calls adopt() to reconnect.
The machine may be shared, so nothing is ever signalled unless its command line proves it is the
QEMU this driver started for that uuid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import string
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pyxapi.drivers.hypervisor import qemu_blockdev
from pyxapi.drivers.hypervisor import qemu_cmdline as cmd
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
    GuestInterface,
    GuestTimeout,
    HostFacts,
    HypervisorError,
    InvalidArgument,
    InvalidDomainState,
    NicSpec,
    StartError,
)
from pyxapi.drivers.hypervisor.events import EventHub, EventStream
from pyxapi.drivers.hypervisor.qemu_domain import QemuDomain
from pyxapi.drivers.hypervisor.qemu_host import (
    choose_accel,
    find_ovmf,
    find_qemu,
    host_facts,
    kill_domain,
    pid_is_domain,
    qemu_version,
    sync_image,
    wait_pid_exit,
)
from pyxapi.drivers.hypervisor.qga import qga_call
from pyxapi.drivers.hypervisor.qmp import Monitor, MonitorClosed

log = logging.getLogger(__name__)

Accel = Literal["auto", "kvm", "tcg"]
LAUNCH_TIMEOUT = 60.0  # QEMU's parent exits once the child is initialised (sockets listening)
RESET_SETTLE = 1.0  # seconds without a further RESET before guest reboots exit QEMU again


def classify_exit(requested: ExitReason | None, cause: str | None, panicked: bool) -> tuple[ExitReason, bool]:
    """(reason, requested) from what the driver asked for and QEMU's SHUTDOWN cause."""
    if requested is not None:
        return requested, True
    if panicked or cause == "guest-panic":
        return ExitReason.CRASH, False
    if cause == "guest-shutdown":
        return ExitReason.POWEROFF, False
    if cause in ("guest-reset", "host-qmp-system-reset", "subsystem-reset"):
        return ExitReason.REBOOT, False
    if cause == "host-error":
        return ExitReason.CRASH, False
    return ExitReason.KILLED, False  # no SHUTDOWN event (SIGKILL, QEMU crash) or a signal


class QemuDriver:
    name = "qemu"

    def __init__(self, run_dir: str | Path, *, accel: Accel = "auto", netns: str | None = None,
                 qemu_binary: str | None = None, probe_image: tuple[str, str] | None = None) -> None:
        self.run_dir = Path(run_dir).absolute()
        cmd.check_run_dir(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.netns = netns
        self._accel_mode = accel
        self._binary_name = qemu_binary
        self._probe_image = probe_image
        self._accel: str | None = None
        self._version: str | None = None
        self._domains: dict[str, QemuDomain] = {}
        self._starting: set[str] = set()
        self._hub: EventHub[DomainEvent] = EventHub()
        self._domid_file = self.run_dir / "next-domid"

    @property
    def capabilities(self) -> frozenset[Capability]:
        caps = frozenset(Capability)
        return caps if find_ovmf() else caps - {Capability.UEFI}

    # ------------------------------------------------------------ helpers

    def _get(self, uuid: str) -> QemuDomain:
        d = self._domains.get(uuid)
        if d is None:
            raise DomainNotFound(uuid)
        return d

    @property
    def binary(self) -> str:
        return find_qemu(self._binary_name)

    async def _versions(self) -> tuple[str, str]:
        binary = self.binary
        if self._version is None:
            self._version = await qemu_version(binary)
        if self._accel is None:
            self._accel = await choose_accel(self._accel_mode, binary, self._version, self.run_dir / "accel.json",
                                             self._probe_image)
        return self._version, self._accel

    def _next_domid(self) -> int:
        try:
            stored = int(self._domid_file.read_text())
        except (OSError, ValueError):
            stored = 1
        domid = max([stored, *(d.domid + 1 for d in self._domains.values())])
        self._domid_file.write_text(str(domid + 1))
        return domid

    def _publish_exit(self, d: QemuDomain) -> None:
        reason, requested = classify_exit(d.requested, d.shutdown_cause, d.panicked)
        self._hub.publish(DomainEvent(d.uuid, d.domid, reason, requested, time.time(), d.shutdown_cause or ""))

    def _cleanup_dir(self, paths: cmd.DomainPaths) -> None:
        # Logs stay for post-mortems; everything adopt() would look at goes.
        for p in (paths.meta, paths.pidfile, paths.qmp, paths.vnc, paths.serial, paths.qga, paths.suspend_status):
            p.unlink(missing_ok=True)

    async def _supervise(self, d: QemuDomain) -> None:
        """Waits for the QMP connection to drop, which happens when QEMU exits for any reason."""
        await d.mon.closed.wait()
        if d.detached:
            return
        if not await wait_pid_exit(d.pid, 10.0):
            log.warning("domain %s: QMP gone but QEMU pid %d still alive; killing it", d.uuid, d.pid)
            kill_domain(d.pid, d.uuid, d.paths.pidfile)
            await wait_pid_exit(d.pid, 5.0)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(d.pid, os.WNOHANG)  # only if QEMU ended up our child (daemon running as pid 1)
        self._domains.pop(d.uuid, None)
        self._cleanup_dir(d.paths)
        self._publish_exit(d)
        d.gone.set()

    async def _attach(self, d: QemuDomain) -> None:
        d.monitor = Monitor(d.paths.qmp, f"qmp-{d.uuid[:8]}", d.on_event)
        await d.monitor.connect()
        self._domains[d.uuid] = d

    def _watch_exit(self, d: QemuDomain) -> None:
        # Started only once the domain is fully created: a QEMU dying half-way through start
        # or resume is a StartError for the caller, not an exit event.
        d.supervisor = asyncio.create_task(self._supervise(d))

    async def _launch(self, d: QemuDomain, argv: list[str]) -> None:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        if self.netns and shutil.which("ip") is None:
            raise StartError(d.uuid, "ip (iproute2) is needed to run QEMU in a network namespace")
        with open(d.paths.log, "ab") as logf:
            logf.write(f"# {time.ctime()}: {' '.join(prefix + argv)}\n".encode())
            logf.flush()
            proc = await asyncio.create_subprocess_exec(*prefix, *argv, stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=logf, stderr=logf, start_new_session=True)
        try:
            async with asyncio.timeout(LAUNCH_TIMEOUT):
                rc = await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise StartError(d.uuid, f"QEMU did not initialise within {LAUNCH_TIMEOUT:g}s", self._log_tail(d)) from None
        if rc != 0:
            raise StartError(d.uuid, f"QEMU exited with status {rc}", self._log_tail(d))
        try:
            d.pid = int(d.paths.pidfile.read_text().strip())
        except (OSError, ValueError) as e:
            await asyncio.sleep(0.3)  # QEMU already exited again; let its error reach the log
            raise StartError(d.uuid, f"QEMU exited right after start-up ({e})", self._log_tail(d)) from e

    def _log_tail(self, d: QemuDomain) -> str:
        # Errors before daemonizing land in qemu.log (our stderr); after it, QEMU moves its
        # stderr onto the -D log.
        lines: list[str] = []
        for path in (d.paths.log, d.paths.debug_log):
            with contextlib.suppress(OSError):
                lines += [ln for ln in path.read_text(errors="replace").splitlines() if not ln.startswith("# ")]
        return "\n".join(lines[-15:])

    async def _create(self, spec: DomainSpec, *, paused: bool, image: str | None) -> DomainInfo:
        spec.validate()
        if spec.uuid in self._domains or spec.uuid in self._starting:
            raise DomainExists(spec.uuid)
        paths = cmd.domain_paths(self.run_dir, spec.uuid)
        with contextlib.suppress(OSError, ValueError):
            if pid_is_domain(int(paths.pidfile.read_text()), spec.uuid, paths.pidfile):
                raise DomainExists(spec.uuid)  # running, but not adopted by this instance
        self._starting.add(spec.uuid)
        d: QemuDomain | None = None
        try:
            _, accel = await self._versions()
            ovmf = None
            if spec.firmware == "uefi":
                ovmf = self._nvram(spec, paths)
            shutil.rmtree(paths.dir, ignore_errors=True)
            paths.dir.mkdir(mode=0o700)
            argv = cmd.build_argv(self.binary, spec, paths, accel=accel, incoming_image=image, ovmf=ovmf)
            d = QemuDomain(spec, self._next_domid(), paths, spec.vcpus_at_startup, spec.vcpus_at_startup,
                           spec.memory_target, accel)
            d.save()
            await self._launch(d, argv)
            try:
                await self._attach(d)
                if image is not None:
                    await self._wait_incoming(d)
                elif spec.memory_target < spec.memory_static_max:
                    await d.mon.execute("balloon", {"value": spec.memory_target})
                if not paused:
                    await d.mon.execute("cont")
                await d.query_state()
            except MonitorClosed as e:
                await wait_pid_exit(d.pid, 2.0)  # let QEMU finish writing its last words
                raise StartError(spec.uuid, f"QEMU exited during start: {e}", self._log_tail(d)) from e
            self._watch_exit(d)
            return d.info()
        except BaseException:
            if d is not None:
                await self._abort(d)
            raise
        finally:
            self._starting.discard(spec.uuid)

    def _nvram(self, spec: DomainSpec, paths: cmd.DomainPaths) -> tuple[str, str]:
        found = find_ovmf()
        if found is None:
            raise InvalidArgument("UEFI firmware requested but OVMF is not installed (Debian package ovmf)")
        code, template = found
        nvram = Path(spec.nvram) if spec.nvram else self.run_dir / f"{spec.uuid}.nvram"
        if not nvram.exists():
            shutil.copyfile(template, nvram)
        return code, str(nvram)

    async def _abort(self, d: QemuDomain) -> None:
        """Undo a half-created domain without reporting an exit nobody asked about."""
        d.detached = True
        if d.monitor is not None:
            await d.monitor.close()
        if d.pid and kill_domain(d.pid, d.uuid, d.paths.pidfile):
            await wait_pid_exit(d.pid, 5.0)
        self._domains.pop(d.uuid, None)
        self._cleanup_dir(d.paths)

    async def _wait_incoming(self, d: QemuDomain) -> None:
        deadline = time.monotonic() + 300.0
        while True:
            info = await d.mon.execute("query-migrate")
            status = info.get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise StartError(d.uuid, f"resume failed: {info.get('error-desc', status)}", self._log_tail(d))
            if time.monotonic() > deadline:
                raise StartError(d.uuid, "resume did not complete within 300s")
            await asyncio.sleep(0.05)

    async def _destroy(self, d: QemuDomain, reason: ExitReason) -> None:
        """Make the domain go away now; returns when the exit has been published."""
        d.requested = reason
        with contextlib.suppress(MonitorClosed, HypervisorError):
            await d.mon.execute("quit", timeout=5.0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10.0):
                await d.gone.wait()
                return
        kill_domain(d.pid, d.uuid, d.paths.pidfile)
        try:
            async with asyncio.timeout(10.0):
                await d.gone.wait()
        except TimeoutError:
            raise HypervisorError(f"domain {d.uuid}: QEMU pid {d.pid} did not exit") from None

    # ------------------------------------------------------------ contract: lifecycle

    async def host_facts(self) -> HostFacts:
        version, accel = await self._versions()
        return host_facts(version, accel)

    async def start(self, spec: DomainSpec, *, paused: bool = False) -> DomainInfo:
        return await self._create(spec, paused=paused, image=None)

    async def resume(self, spec: DomainSpec, image_path: str, *, paused: bool = False) -> DomainInfo:
        if not Path(image_path).exists():
            raise StartError(spec.uuid, f"no suspend image at {image_path}")
        return await self._create(spec, paused=paused, image=image_path)

    async def shutdown(self, uuid: str, *, clean: bool, timeout: float = 60.0) -> None:
        d = self._get(uuid)
        async with d.lock:
            if not clean:
                await self._destroy(d, ExitReason.POWEROFF)
                return
            if await d.query_state() is not DomainState.RUNNING:
                raise InvalidDomainState(uuid, d.state, DomainState.RUNNING)
            d.requested = ExitReason.POWEROFF
            await d.mon.execute("system_powerdown")
            try:
                async with asyncio.timeout(timeout):
                    await d.gone.wait()
            except TimeoutError:
                d.requested = None  # if the guest powers off later, that is its own decision
                raise GuestTimeout(uuid, "clean shutdown", timeout) from None

    async def reboot(self, uuid: str, *, clean: bool, timeout: float = 60.0) -> DomainInfo:
        d = self._get(uuid)
        async with d.lock:
            state = await d.query_state()
            if clean and state is not DomainState.RUNNING:
                raise InvalidDomainState(uuid, state, DomainState.RUNNING)
            # QEMU normally exits on reboot (so guest reboots reach the toolstack); for a reboot we
            # were asked for, reset in place instead, then restore the exit-on-reboot policy.
            reset = d.mon.expect(lambda n, data: n == "RESET")
            await d.mon.execute("set-action", {"reboot": "reset"})
            try:
                if clean:
                    async with d.agent_lock:
                        await qga_call(d.paths.qga, uuid, "guest-shutdown", {"mode": "reboot"},
                                       timeout=min(timeout, 10.0), expect_reply=False)
                else:
                    await d.mon.execute("system_reset")
                if await d.mon.wait(reset, timeout if clean else 10.0) is None:
                    raise GuestTimeout(uuid, "clean reboot" if clean else "reset", timeout)
                # A rebooting kernel tries several reset methods and its vCPU may request a second
                # reset before the first one lands: keep resetting in place until it goes quiet.
                while await d.mon.wait(d.mon.expect(lambda n, data: n == "RESET"), RESET_SETTLE) is not None:
                    pass
            finally:
                with contextlib.suppress(MonitorClosed, HypervisorError):
                    await d.mon.execute("set-action", {"reboot": "shutdown"})
            if state is DomainState.PAUSED:
                await d.mon.execute("cont")
            await d.query_state()
            return d.info()

    async def pause(self, uuid: str) -> None:
        d = self._get(uuid)
        async with d.lock:
            if await d.query_state() is not DomainState.RUNNING:
                raise InvalidDomainState(uuid, d.state, DomainState.RUNNING)
            await d.mon.execute("stop")
            d.state = DomainState.PAUSED

    async def unpause(self, uuid: str) -> None:
        d = self._get(uuid)
        async with d.lock:
            if await d.query_state() is not DomainState.PAUSED:
                raise InvalidDomainState(uuid, d.state, DomainState.PAUSED)
            await d.mon.execute("cont")
            d.state = DomainState.RUNNING

    async def suspend(self, uuid: str, image_path: str, *, timeout: float = 300.0) -> None:
        d = self._get(uuid)
        async with d.lock:
            was_running = await d.query_state() is DomainState.RUNNING
            status = d.paths.suspend_status
            status.unlink(missing_ok=True)
            await d.mon.execute("stop")
            try:
                await self._save(d, image_path, timeout)
            except BaseException:
                if was_running:
                    with contextlib.suppress(MonitorClosed, HypervisorError):
                        await d.mon.execute("cont")
                raise
            await self._destroy(d, ExitReason.SUSPENDED)

    async def save_memory(self, uuid: str, image_path: str, *, timeout: float = 300.0) -> None:
        d = self._get(uuid)
        async with d.lock:
            await d.mon.execute("stop")
            d.state = DomainState.PAUSED
            d.paths.suspend_status.unlink(missing_ok=True)
            # The domain stays (paused, "postmigrate"); its next `cont` takes its images back.
            await self._save(d, image_path, timeout)

    async def _save(self, d: QemuDomain, image_path: str, timeout: float) -> None:
        status = d.paths.suspend_status
        # QEMU 7.2 has no file: migration URI; exec: pipes the stream through cat.
        await d.mon.execute("migrate", {"uri": cmd.suspend_uri(image_path, status)})
        deadline = time.monotonic() + timeout
        while True:
            info = await d.mon.execute("query-migrate")
            st = info.get("status")
            if st == "completed":
                break
            if st in ("failed", "cancelled"):
                raise HypervisorError(f"domain {d.uuid}: suspend failed: {info.get('error-desc', st)}")
            if time.monotonic() > deadline:
                with contextlib.suppress(HypervisorError):
                    await d.mon.execute("migrate_cancel")
                raise HypervisorError(f"domain {d.uuid}: suspend did not complete within {timeout:g}s")
            await asyncio.sleep(0.05)
        # "completed" only means QEMU wrote its last byte into the pipe; wait for cat to finish.
        while not status.exists() or not status.read_text().strip():
            if time.monotonic() > deadline:
                raise HypervisorError(f"domain {d.uuid}: suspend image writer did not finish")
            await asyncio.sleep(0.02)
        if status.read_text().strip() != "0":
            raise HypervisorError(f"domain {d.uuid}: writing the suspend image failed")
        # cat is done, but the image may still be only in the page cache: a power loss would lose
        # the memory of a VM reported suspended. A failing write-back is reported to this fsync.
        try:
            await asyncio.to_thread(sync_image, image_path)
        except OSError as e:
            raise HypervisorError(f"domain {d.uuid}: the suspend image could not be put on disk: {e}") from None

    # ------------------------------------------------------------ contract: devices

    async def set_vcpus(self, uuid: str, count: int, *, timeout: float = 30.0) -> None:
        d = self._get(uuid)
        async with d.lock:
            await d.set_vcpus(count, timeout)

    async def set_memory_target(self, uuid: str, target: int) -> None:
        d = self._get(uuid)
        async with d.lock:
            await d.set_memory_target(target)

    async def plug_disk(self, uuid: str, disk: DiskSpec) -> None:
        d = self._get(uuid)
        async with d.lock:
            await d.plug_disk(disk)

    async def unplug_disk(self, uuid: str, device: int, *, timeout: float = 30.0) -> None:
        d = self._get(uuid)
        async with d.lock:
            await d.unplug_disk(device, timeout)

    async def switch_disks(self, uuid: str, disks: Sequence[DiskSpec]) -> None:
        d = self._get(uuid)
        async with d.lock:
            await qemu_blockdev.switch_disks(d, disks)

    async def resize_disk(self, uuid: str, device: int, size: int) -> None:
        d = self._get(uuid)
        async with d.lock:
            await qemu_blockdev.resize_disk(d, device, size)

    async def set_cdrom(self, uuid: str, device: int, path: str | None) -> None:
        d = self._get(uuid)
        async with d.lock:
            await d.set_cdrom(device, path)

    async def plug_nic(self, uuid: str, nic: NicSpec) -> None:
        d = self._get(uuid)
        async with d.lock:
            await d.plug_nic(nic)

    async def unplug_nic(self, uuid: str, device: int, *, timeout: float = 30.0) -> None:
        d = self._get(uuid)
        async with d.lock:
            await d.unplug_nic(device, timeout)

    # ------------------------------------------------------------ contract: queries

    async def state(self, uuid: str) -> DomainState:
        return await self._get(uuid).query_state()

    async def info(self, uuid: str) -> DomainInfo:
        d = self._get(uuid)
        await d.query_state()
        return d.info()

    async def stats(self, uuid: str) -> DomainStats:
        return await self._get(uuid).stats()

    async def list_domains(self) -> list[DomainInfo]:
        out = []
        for d in list(self._domains.values()):
            with contextlib.suppress(MonitorClosed):
                await d.query_state()
                out.append(d.info())
        return out

    async def console(self, uuid: str) -> ConsoleInfo:
        p = self._get(uuid).paths
        return ConsoleInfo(str(p.vnc), str(p.serial), str(p.serial_log))

    async def guest_agent_command(self, uuid: str, command: str, arguments: dict[str, Any] | None = None, *,
                                  timeout: float = 10.0) -> Any:
        """Any qemu-guest-agent command (QEMU only; not part of the contract)."""
        d = self._get(uuid)
        async with d.agent_lock:
            return await qga_call(d.paths.qga, uuid, command, arguments, timeout=timeout)

    async def guest_agent(self, uuid: str, *, timeout: float = 10.0) -> GuestAgentInfo:
        d = self._get(uuid)
        async with d.agent_lock, asyncio.timeout(timeout + 1.0):
            osinfo = await qga_call(d.paths.qga, uuid, "guest-get-osinfo", timeout=timeout)
            host = await qga_call(d.paths.qga, uuid, "guest-get-host-name", timeout=timeout)
            nets = await qga_call(d.paths.qga, uuid, "guest-network-get-interfaces", timeout=timeout)
        ifaces = []
        for n in nets or []:
            addrs = n.get("ip-addresses", [])
            ifaces.append(GuestInterface(
                str(n.get("name", "")), str(n.get("hardware-address", "")),
                tuple(a["ip-address"] for a in addrs if a.get("ip-address-type") == "ipv4"),
                tuple(a["ip-address"] for a in addrs if a.get("ip-address-type") == "ipv6")))
        return GuestAgentInfo({k: str(v) for k, v in (osinfo or {}).items()}, str((host or {}).get("host-name", "")),
                              tuple(ifaces))

    async def send_sysrq(self, uuid: str, key: str) -> None:
        if len(key) != 1 or key not in string.ascii_lowercase + string.digits:
            raise InvalidArgument(f"sysrq key {key!r}")
        keys = [{"type": "qcode", "data": k} for k in ("alt", "sysrq", key)]
        await self._get(uuid).mon.execute("send-key", {"keys": keys})

    def subscribe(self) -> EventStream[DomainEvent]:
        return self._hub.subscribe()

    # ------------------------------------------------------------ daemon restarts

    async def adopt(self) -> list[DomainInfo]:
        found: list[DomainInfo] = []
        for entry in sorted(self.run_dir.iterdir()):
            paths = cmd.DomainPaths(entry)
            if entry.name in self._domains or not paths.meta.exists():
                continue
            try:
                d = QemuDomain.load(paths)
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("adopt: unreadable %s: %s", paths.meta, e)
                continue
            try:
                d.pid = int(paths.pidfile.read_text().strip())
            except (OSError, ValueError):
                d.pid = 0
            if not (d.pid and pid_is_domain(d.pid, d.uuid, paths.pidfile)):
                # It died while nobody watched: the cause is unknown, report it as killed.
                self._cleanup_dir(paths)
                self._hub.publish(DomainEvent(d.uuid, d.domid, ExitReason.KILLED, False, time.time(),
                                              "exited while unsupervised"))
                continue
            try:
                await self._attach(d)
                await d.query_state()
                self._watch_exit(d)
            except MonitorClosed as e:
                log.warning("adopt: domain %s (pid %d) alive but QMP unavailable: %s", d.uuid, d.pid, e)
                continue
            found.append(d.info())
        return found

    async def close(self) -> None:
        for d in list(self._domains.values()):
            d.detached = True
            if d.monitor is not None:
                await d.monitor.close()
            if d.supervisor is not None:
                d.supervisor.cancel()
        self._domains.clear()
