"""Host-side helpers for the QEMU driver: binaries, host facts, accelerator choice, /proc readers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

from pyxapi.drivers.hypervisor.base import HostFacts, HypervisorUnavailable
from pyxapi.drivers.storage.durable import fsync_new_file

log = logging.getLogger(__name__)

QEMU_BINARY = "qemu-system-x86_64"
OVMF_CANDIDATES = (
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
)
HOST_CAPABILITIES = ("hvm-3.0-x86_64", "hvm-3.0-x86_32", "hvm-3.0-x86_32p")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def find_qemu(binary: str | None = None) -> str:
    path = shutil.which(binary or QEMU_BINARY)
    if path is None:
        raise HypervisorUnavailable(binary or QEMU_BINARY, "qemu-system-x86")
    return path


def find_ovmf() -> tuple[str, str] | None:
    for code, nvram in OVMF_CANDIDATES:
        if os.path.exists(code) and os.path.exists(nvram):
            return code, nvram
    return None


async def qemu_version(binary: str) -> str:
    proc = await asyncio.create_subprocess_exec(binary, "--version", stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    first = out.decode(errors="replace").splitlines()[0] if out else ""
    # "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"
    return first.removeprefix("QEMU emulator version ").strip() or "unknown"


def host_facts(version: str, accel: str) -> HostFacts:
    cpus: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if not line.strip():
            if current:
                cpus.append(current)
            current = {}
            continue
        key, _, value = line.partition(":")
        current[key.strip()] = value.strip()
    if current:
        cpus.append(current)
    mem: dict[str, int] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            mem[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    first = cpus[0] if cpus else {}
    return HostFacts(
        hostname=os.uname().nodename, cpu_count=len(cpus) or (os.cpu_count() or 1),
        cpu_model=first.get("model name", "unknown"), cpu_vendor=first.get("vendor_id", "unknown"),
        cpu_flags=tuple(first.get("flags", "").split()), memory_total=mem.get("MemTotal", 0),
        memory_free=mem.get("MemAvailable", mem.get("MemFree", 0)), hypervisor="qemu",
        hypervisor_version=version, accelerator=accel, capabilities=HOST_CAPABILITIES)


# ---------------------------------------------------------------- accelerator


def kvm_plausible() -> tuple[bool, str]:
    """Cheap checks before trusting KVM. /dev/kvm opening is not enough: an emulating KVM such as
    kvm-pvm (no VT-x/AMD-V under it) opens fine but cannot run a stock guest kernel."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        os.close(fd)
    except OSError as e:
        return False, f"/dev/kvm: {e.strerror}"
    if os.path.exists("/sys/module/kvm_pvm"):
        return False, "kvm is kvm-pvm (emulates guest kernel code; stock kernels do not boot)"
    flags = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.partition(":")[2].split())
                break
    if not flags & {"vmx", "svm"}:
        return False, "the CPU has no vmx/svm flag"
    return True, "vmx/svm present"


async def probe_boot(binary: str, kernel: str, initrd: str, *, marker: bytes = b"GUEST READY",
                     timeout: float = 60.0) -> bool:
    """Boot the probe image under KVM and wait for its ready marker on the serial console."""
    argv = [binary, "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults", "-no-user-config",
            "-display", "none", "-no-reboot", "-serial", "stdio", "-kernel", kernel, "-initrd", initrd,
            "-append", "console=ttyS0 quiet panic=-1"]
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    seen = b""
    try:
        async with asyncio.timeout(timeout):
            while marker not in seen:
                chunk = await proc.stdout.read(4096)
                if not chunk:
                    return False
                seen = seen[-4096:] + chunk
        return True
    except TimeoutError:
        return False
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def choose_accel(mode: str, binary: str, version: str, cache_file: Path,
                       probe_image: tuple[str, str] | None) -> str:
    """'kvm' or 'tcg'. 'auto' probes once and caches the answer (keyed by qemu and host kernel)."""
    if mode in ("kvm", "tcg"):
        return mode
    if mode != "auto":
        raise ValueError(f"accel must be auto, kvm or tcg, not {mode!r}")
    key = {"qemu": version, "kernel": os.uname().release, "probe": bool(probe_image)}
    with contextlib.suppress(OSError, ValueError, KeyError):
        cached = json.loads(cache_file.read_text())
        if cached["key"] == key:
            return str(cached["accel"])
    ok, why = kvm_plausible()
    if ok and probe_image is not None:
        ok = await probe_boot(binary, *probe_image)
        why = "probe boot " + ("succeeded" if ok else "failed")
    accel = "kvm" if ok else "tcg"
    log.info("hypervisor accelerator: %s (%s)", accel, why)
    with contextlib.suppress(OSError):
        cache_file.write_text(json.dumps({"key": key, "accel": accel, "why": why, "at": time.time()}))
    return accel


# ---------------------------------------------------------------- /proc


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def pid_is_domain(pid: int, uuid: str, pidfile: Path) -> bool:
    """True only for the QEMU this driver spawned for uuid (guards against pid reuse: the machine is
    shared, and we must never signal a process we did not start)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    want = [b"-uuid", uuid.encode()]
    pairs = any(args[i:i + 2] == want for i in range(len(args) - 1))
    return pairs and str(pidfile).encode() in args and pid_alive(pid)


def kill_domain(pid: int, uuid: str, pidfile: Path) -> bool:
    if not pid_is_domain(pid, uuid, pidfile):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


async def wait_pid_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _cpu_ticks(stat_path: str) -> int:
    fields = Path(stat_path).read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15 of stat(5))


def _process_cpu_clock(pid: int) -> int:
    """The clockid of another process's CPU-time clock, as clock_getcpuclockid(3) makes it
    (Linux encodes the pid in the id: CPUCLOCK_SCHED of a process)."""
    return ((~pid) << 3) | 2


def cpu_time_ns(pid: int, tid: int | None = None) -> int:
    """CPU time of a process (all its threads, exited ones included) or of one of its threads, in
    nanoseconds of scheduler run time. stat(5)'s utime+stime would do but counts in clock ticks
    (10 ms): an idle guest's QEMU can use less than that in a sampling interval."""
    try:
        if tid is None:
            return time.clock_gettime_ns(_process_cpu_clock(pid))
        # another process's thread clocks are not readable; schedstat's first field is the same
        # run time (vCPU threads live as long as their vCPU, so nothing is lost when one exits)
        return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        return _cpu_ticks(path) * 1_000_000_000 // _CLK_TCK
    except (OSError, ValueError, IndexError):
        return 0


def net_counters(pid: int) -> dict[str, tuple[int, int, int, int]]:
    """Interface -> (rx_bytes, rx_packets, tx_bytes, tx_packets) as the host sees it, read in the
    QEMU process's own network namespace (its taps may live in a netns)."""
    out: dict[str, tuple[int, int, int, int]] = {}
    try:
        lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    except OSError:
        return out
    for line in lines:
        name, _, rest = line.partition(":")
        f = rest.split()
        if len(f) >= 10:
            out[name.strip()] = (int(f[0]), int(f[1]), int(f[8]), int(f[9]))
    return out


def sync_image(path: str) -> None:
    """Put a memory image QEMU wrote on stable storage: its data, then its directory (the name is
    new when the image did not exist before). Blocking: call through asyncio.to_thread."""
    fsync_new_file(path)
