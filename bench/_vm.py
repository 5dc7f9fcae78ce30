"""Helpers for the VM start benchmark: the test guest, serial-console and vCPU readiness, bare
QEMU baselines, the QEMU processes a run leaves behind, and the API side (connections, the
latency prober, formatting).

"Guest ready" is the line GUEST READY on the guest's serial console, for both sides: the daemon
polls its guest agent only every few seconds, far too coarse to time a 2-3 s boot. The QEMU
driver logs the serial console to DATA/run/qemu/<uuid>/serial.log; the baseline runs the very
command line the driver ran (read back from /proc), minus the driver's own mechanics.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import statistics
import subprocess
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench._common import RpcConn

REPO = Path(__file__).resolve().parent.parent
GUEST_SCRIPT = REPO / "images" / "build-test-guest"
GUEST_CACHE = REPO / "var" / "cache" / "test-guest"  # the same cache the tests use
READY_MARKER = b"GUEST READY"
_UPTIME = re.compile(rb"GUEST READY uptime=([0-9.]+)\s")  # \s: the number is complete
_CLK_TCK = os.sysconf("SC_CLK_TCK")
PROBE_PERIOD = 0.02  # the latency probe makes one call every 20 ms

# Driver mechanics a bare invocation does not need: -S (start stopped, the driver continues it over
# QMP), -daemonize and its -pidfile. Everything else (devices, sockets, logs) stays as the driver has it.
_DROP_FLAGS = {"-S", "-daemonize"}
_DROP_WITH_VALUE = {"-pidfile"}


class BenchError(RuntimeError):
    """Something the benchmark needs did not happen (a boot timed out, a start failed)."""


def build_test_guest(timeout: float = 600.0) -> tuple[Path, Path]:
    """The test guest's kernel and initrd (built once, cached like the tests do)."""
    res = subprocess.run([str(GUEST_SCRIPT), str(GUEST_CACHE)], capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise BenchError(f"building the test guest failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return GUEST_CACHE / "vmlinuz", GUEST_CACHE / "initrd.img"


# ---- readiness ----------------------------------------------------------------------------------
@dataclass
class SerialWatch:
    """Follows one serial log file, reading only what was appended since the last look."""

    path: Path
    offset: int = 0
    tail: bytes = b""
    ready_at: float | None = None  # time.monotonic() when the marker was first seen
    guest_uptime: float | None = None  # what the guest itself printed with the marker

    def check(self, now: float) -> bool:
        if self.ready_at is not None:
            return True
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return False
        if not chunk:
            return False
        self.offset += len(chunk)
        self.tail = (self.tail + chunk)[-8192:]
        if READY_MARKER not in self.tail:
            return False
        self.ready_at = now
        self.read_uptime()
        return True

    def read_uptime(self) -> None:
        """The guest's own uptime, printed after the marker (possibly not yet written out)."""
        with contextlib.suppress(OSError):
            m = _UPTIME.search(self.path.read_bytes()[-65536:])
            self.guest_uptime = float(m.group(1)) if m else None

    def last_lines(self, n: int = 8) -> str:
        return "\n".join(self.tail.decode(errors="replace").splitlines()[-n:])


async def wait_ready(watches: Sequence[SerialWatch], timeout: float, poll: float,
                     check: Callable[[], None] | None = None) -> None:
    """Poll every `poll` seconds until every watch has seen the marker. `check` runs each round
    and raises when waiting is pointless (the process died, the start call failed)."""
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        pending = [w for w in watches if not w.check(now)]
        if not pending:
            break
        if check is not None:
            check()
        if now > deadline:
            w = pending[0]
            raise BenchError(f"{len(pending)} guest(s) not ready within {timeout:g}s; {w.path}:\n{w.last_lines()}")
        await asyncio.sleep(poll)
    # The uptime may have been cut off at the first sighting: the rest of its line is a moment away.
    if any(w.guest_uptime is None for w in watches):
        await asyncio.sleep(0.2)
        for w in watches:
            if w.guest_uptime is None:
                w.read_uptime()


@dataclass
class VcpuWatch:
    """When the guest started running: the first sighting of QEMU's vCPU thread ("CPU 0/TCG" or
    "CPU 0/KVM", named by debug-threads=on) with `threshold` seconds of CPU time. A QEMU started
    with -S keeps it idle (well under a millisecond) until it is continued; a running TCG vCPU
    then burns CPU without pause. The same threshold on both sides cancels out in differences."""

    pid_of: Callable[[], int | None]
    threshold: float = 0.002
    running_at: float | None = None
    _task_dir: Path | None = None

    def check(self, now: float) -> bool:
        if self.running_at is not None:
            return True
        if self._task_dir is None:
            self._task_dir = self._find_vcpu()
            if self._task_dir is None:
                return False
        try:
            ns = int((self._task_dir / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        if ns >= self.threshold * 1e9:
            self.running_at = now
            return True
        return False

    def _find_vcpu(self) -> Path | None:
        pid = self.pid_of()
        if pid is None:
            return None
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    if (task / "comm").read_text().startswith("CPU 0/"):
                        return task
        return None


async def watch_vcpus(watches: Sequence[VcpuWatch], timeout: float, poll: float = 0.001) -> None:
    """Poll finely until every vCPU runs (or give up quietly: those figures are then missing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.monotonic()
        if all([w.check(now) for w in watches]):  # a list: every watch is looked at each round
            return
        await asyncio.sleep(poll)


# ---- /proc --------------------------------------------------------------------------------------
def boottime() -> float:
    """The clock /proc/PID/stat start times count on."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def started_after(pid: int, t0_boottime: float) -> float | None:
    """Seconds from t0 (a boottime() reading) until process pid was created: clock-tick resolution
    (10 ms), rounded down by the kernel."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19]) / _CLK_TCK - t0_boottime  # field 22 of proc(5): starttime


def cmdline(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [a.decode() for a in raw.split(b"\0")[:-1]]


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


# ---- the bare QEMU baseline ---------------------------------------------------------------------
def baseline_argv(driver_argv: Sequence[str], domain_dir: Path, vm_uuid: str, new_dir: Path) -> list[str]:
    """The driver's QEMU command line for another directory and uuid, without -S / -daemonize /
    -pidfile: the same guest, devices, sockets and logs, run the way a person would by hand."""
    new_uuid = str(uuidlib.uuid4())
    out: list[str] = []
    skip = False
    for arg in driver_argv:
        if skip:
            skip = False
            continue
        if arg in _DROP_FLAGS:
            continue
        if arg in _DROP_WITH_VALUE:
            skip = True
            continue
        out.append(arg.replace(str(domain_dir), str(new_dir)).replace(vm_uuid, new_uuid))
    return out


@dataclass
class BareQemus:
    """Every baseline QEMU this run started, so that cleanup can kill them by pid."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, argv: Sequence[str], run_dir: Path) -> tuple[subprocess.Popen[bytes], SerialWatch]:
        run_dir.mkdir(parents=True, exist_ok=True)
        serial = run_dir / "serial.log"
        serial.unlink(missing_ok=True)
        with open(run_dir / "qemu.log", "ab") as log:
            # Its own session, as the driver's QEMU (-daemonize calls setsid): with the scheduler's
            # autogroups on, a session is what gets a fair CPU share, so a baseline left in ours
            # would share one share with every other baseline QEMU and with this benchmark.
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc, SerialWatch(serial)

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.returncode is not None and proc in self.procs:
            self.procs.remove(proc)

    def kill_all(self) -> None:
        for proc in list(self.procs):
            self.kill(proc)


def alive_check(proc: subprocess.Popen[bytes], log: Path) -> Callable[[], None]:
    def check() -> None:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise BenchError(f"bare QEMU pid {proc.pid} exited with {proc.returncode}:\n{text}")

    return check


def kill_leftover_domains(run_dir: Path, marker: str) -> list[int]:
    """SIGKILL the daemon's QEMUs still alive under run_dir (a daemon stopped by SIGTERM leaves its
    guests running on purpose). Only pids whose command line names `marker` (our temp dir) are
    touched: the machine is shared."""
    killed: list[int] = []
    if not run_dir.is_dir():
        return killed
    for pidfile in run_dir.glob("*/qemu.pid"):
        pid = read_pid(pidfile)
        if pid is None:
            continue
        try:
            args = cmdline(pid)
        except OSError:
            continue
        if "-uuid" in args and any(marker in a for a in args):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    deadline = time.monotonic() + 10
    for pid in killed:
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
    return killed


# ---- the API side -------------------------------------------------------------------------------
@dataclass
class Api:
    port: int
    pid: int  # the daemon's
    session: str
    run_dir: Path  # the QEMU driver's run dir: <uuid>/serial.log, <uuid>/qemu.pid

    async def conn(self) -> RpcConn:
        return await RpcConn.open(self.port)

    def domain_dir(self, uuid: str) -> Path:
        return self.run_dir / uuid


class Prober:
    """VM.get_record(dom0) at a steady pace on its own connection (a flat-out loop would itself
    load the two cores). It runs during both sides' storms, so both carry the same extra load."""

    def __init__(self, api: Api, dom0: str) -> None:
        self.api = api
        self.dom0 = dom0
        self.latencies: list[float] = []
        self._stop = asyncio.Event()
        self._conn: RpcConn | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Prober:
        self._conn = await self.api.conn()
        self._task = asyncio.create_task(self._run(self._conn))
        await asyncio.sleep(0.2)  # in its stride before anything is measured
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        try:
            if self._task is not None and exc[0] is None:
                await self._task
        finally:
            if self._task is not None:
                self._task.cancel()
            if self._conn is not None:
                await self._conn.close()

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> None:
        """Raise at once if the probe failed (the daemon died), not when the storm is over."""
        if self._task is not None and self._task.done() and self._task.exception() is not None:
            raise BenchError(f"the latency probe failed: {self._task.exception()!r}")

    async def _run(self, conn: RpcConn) -> None:
        next_at = time.perf_counter()
        while not self._stop.is_set():
            t = time.perf_counter()
            await conn.call("VM.get_record", self.api.session, self.dom0)
            self.latencies.append(time.perf_counter() - t)
            next_at += PROBE_PERIOD
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_at = time.perf_counter()  # fell behind: no catch-up burst


# ---- formatting ---------------------------------------------------------------------------------
def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f} ms"


def med(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ms_f(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"
