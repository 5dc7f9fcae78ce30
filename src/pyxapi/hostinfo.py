"""Facts about the machine pyxapi runs on, read from Linux, and the xapi-style maps built from them.

`read_host_facts()` reads everything once (the daemon calls it at start-up and puts the result
in its Context); the parsers are pure functions of file contents so they can be tested with any
/proc text, and `cpu_info` / `software_version` turn facts into the string maps xapi reports
in `host.cpu_info` and `host.software_version`.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import hmac
import os
import re
import socket
import struct
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyxapi

__all__ = [
    "CpuInfo",
    "HostFacts",
    "cpu_features",
    "cpu_info",
    "default_route",
    "machine_uuid",
    "parse_boot_time",
    "parse_cpuinfo",
    "parse_meminfo",
    "parse_os_release",
    "primary_ipv4",
    "read_host_facts",
    "software_version",
]


@dataclass(frozen=True)
class CpuInfo:
    """One logical CPU from /proc/cpuinfo. Numbers are None where the architecture has none."""

    index: int
    vendor: str
    model_name: str
    family: int | None
    model: int | None
    stepping: int | None
    mhz: float | None
    flags: tuple[str, ...]
    physical_id: int | None = None
    siblings: int | None = None
    cores: int | None = None


@dataclass(frozen=True)
class HostFacts:
    hostname: str
    fqdn: str
    address: str  # primary IPv4: the default-route interface's, else 127.0.0.1
    cpu_count: int
    cpus: tuple[CpuInfo, ...]
    memory_total: int  # bytes
    memory_free: int
    memory_available: int
    kernel_release: str  # uname -r
    kernel_version: str  # uname -v
    machine: str  # uname -m
    os_name: str
    os_version: str
    os_pretty_name: str
    boot_time: float  # seconds since the epoch
    uuid: str
    uuid_is_stable: bool  # False when the machine has no machine-id and `uuid` is random
    os_release: Mapping[str, str] = field(default_factory=dict)

    @property
    def socket_count(self) -> int:
        ids = {c.physical_id for c in self.cpus if c.physical_id is not None}
        return max(len(ids), 1)


# ---- parsers (pure) ---------------------------------------------------------------------------


def parse_cpuinfo(text: str) -> list[CpuInfo]:
    """Parse /proc/cpuinfo: one CpuInfo per blank-line-separated processor block."""
    cpus: list[CpuInfo] = []
    for block in text.split("\n\n"):
        entries: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                entries.setdefault(key.strip().lower(), value.strip())
        if "processor" not in entries or not entries["processor"].isdigit():
            continue  # arm64 prints a trailing summary block whose "processor" is a name
        # x86 names first; arm64 calls the flags "features" and has no model name.
        flags = entries.get("flags", entries.get("features", ""))
        cpus.append(
            CpuInfo(
                index=int(entries["processor"]),
                vendor=entries.get("vendor_id", entries.get("cpu implementer", "")),
                model_name=entries.get("model name", entries.get("cpu model", "")),
                family=_int(entries.get("cpu family")),
                model=_int(entries.get("model")),
                stepping=_int(entries.get("stepping")),
                mhz=_float(entries.get("cpu mhz")),
                flags=tuple(flags.split()),
                physical_id=_int(entries.get("physical id")),
                siblings=_int(entries.get("siblings")),
                cores=_int(entries.get("cpu cores")),
            )
        )
    return cpus


def parse_meminfo(text: str) -> dict[str, int]:
    """Parse /proc/meminfo into bytes (the file says kB, meaning KiB)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        words = rest.split()
        if not sep or not words or not words[0].isdigit():
            continue
        scale = 1024 if len(words) > 1 and words[1].lower() == "kb" else 1
        values[key.strip()] = int(words[0]) * scale
    return values


def parse_os_release(text: str) -> dict[str, str]:
    """Parse os-release(5): KEY=value lines, values possibly quoted shell-style."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        key, sep, raw = line.partition("=")
        if not sep or line.startswith("#") or not key.isidentifier():
            continue
        values[key] = _unquote(raw.strip())
    return values


def _unquote(raw: str) -> str:
    # os-release(5) follows shell rules, but only these: single quotes are literal, and inside
    # double quotes a backslash escapes $ ` " and itself. No expansion happens.
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        body = raw[1:-1]
        return body if raw[0] == "'" else re.sub(r'\\([$`"\\])', r"\1", body)
    if raw[:1] in ("'", '"'):
        return raw[1:]  # unbalanced quote: keep what is there rather than drop the key
    return re.sub(r"\\(.)", r"\1", raw)


def parse_boot_time(stat_text: str) -> int | None:
    """The `btime` line of /proc/stat: boot time in seconds since the epoch."""
    for line in stat_text.splitlines():
        if line.startswith("btime "):
            value = line.split()[1]
            return int(value) if value.isdigit() else None
    return None


def default_route(route_text: str) -> tuple[str, str | None] | None:
    """(interface, gateway) of the lowest-metric IPv4 default route in /proc/net/route."""
    best: tuple[int, str, str | None] | None = None
    for line in route_text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 8:
            continue
        iface, dest, gateway, flags, metric, mask = cols[0], cols[1], cols[2], cols[3], cols[6], cols[7]
        try:
            up = int(flags, 16) & 0x1  # RTF_UP
            is_default = int(dest, 16) == 0 and int(mask, 16) == 0
            gw_value = int(gateway, 16)
            rank = int(metric)
        except ValueError:
            continue
        if not up or not is_default:
            continue
        # The kernel prints addresses as host-order (little-endian on x86) hex words.
        gw = socket.inet_ntoa(struct.pack("=L", gw_value)) if gw_value else None
        if best is None or rank < best[0]:
            best = (rank, iface, gw)
    return None if best is None else (best[1], best[2])


def machine_uuid(machine_id: str | None) -> str | None:
    """A stable host UUID derived from the systemd machine ID, or None if it is not one.

    systemd asks applications not to expose the machine ID itself (machine-id(5)): it is
    hashed with a pyxapi-specific key, like sd_id128_get_machine_app_specific(), and given
    the version-4 and variant bits so it reads as an ordinary random UUID.
    """
    text = (machine_id or "").strip().lower()
    if len(text) != 32 or any(c not in "0123456789abcdef" for c in text):
        return None
    digest = hmac.new(bytes.fromhex(text), _UUID_APP_KEY, hashlib.sha256).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


# pyxapi's application key for machine_uuid(). Never change it: every host's UUID would change.
_UUID_APP_KEY = uuid.UUID("f0bd217d-5988-470d-8b3d-9c912e7caa57").bytes


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text, 0) if text.lower().startswith("0x") else int(text)
    except ValueError:
        return None


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


# ---- reading this machine ---------------------------------------------------------------------


def read_host_facts(root: Path = Path("/")) -> HostFacts:
    """Read the facts of this machine. `root` relocates the files read (for tests)."""
    cpus = parse_cpuinfo(_read(root / "proc/cpuinfo"))
    mem = parse_meminfo(_read(root / "proc/meminfo"))
    os_release = parse_os_release(_read(root / "etc/os-release") or _read(root / "usr/lib/os-release"))
    uname = os.uname()
    hostname = socket.gethostname() or uname.nodename
    boot = parse_boot_time(_read(root / "proc/stat"))
    stable_uuid = machine_uuid(_read(root / "etc/machine-id")) or machine_uuid(_read(root / "var/lib/dbus/machine-id"))
    route = default_route(_read(root / "proc/net/route"))
    free = mem.get("MemFree", 0)
    return HostFacts(
        hostname=hostname,
        fqdn=_fqdn(hostname),
        address=primary_ipv4(route),
        cpu_count=len(cpus) or os.cpu_count() or 1,
        cpus=tuple(cpus),
        memory_total=mem.get("MemTotal", 0),
        memory_free=free,
        # Kernels before 3.14 have no MemAvailable; free + page cache is the usual estimate.
        memory_available=mem.get("MemAvailable", free + mem.get("Buffers", 0) + mem.get("Cached", 0)),
        kernel_release=uname.release,
        kernel_version=uname.version,
        machine=uname.machine,
        os_name=os_release.get("NAME", "Linux"),
        os_version=os_release.get("VERSION_ID", ""),
        os_pretty_name=os_release.get("PRETTY_NAME", os_release.get("NAME", "Linux")),
        boot_time=float(boot) if boot is not None else _boot_time_from_uptime(root),
        uuid=stable_uuid or str(uuid.uuid4()),
        uuid_is_stable=stable_uuid is not None,
        os_release=os_release,
    )


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _boot_time_from_uptime(root: Path) -> float:
    words = _read(root / "proc/uptime").split()
    uptime = _float(words[0]) if words else None
    return time.time() - (uptime or 0.0)


def _fqdn(hostname: str) -> str:
    """The resolver's canonical name when it is a real domain name, else the hostname.

    socket.getfqdn() is not used: it reverse-resolves and often answers `localhost` on hosts
    whose /etc/hosts maps the hostname to 127.0.0.1.
    """
    if "." in hostname:
        return hostname
    try:
        infos = socket.getaddrinfo(hostname, None, 0, socket.SOCK_STREAM, 0, socket.AI_CANONNAME)
    except (OSError, UnicodeError):
        return hostname
    for info in infos:
        canon = info[3]
        if canon and "." in canon and not canon.startswith("localhost"):
            return canon
    return hostname


def primary_ipv4(route: tuple[str, str | None] | None) -> str:
    """The IPv4 address of the default-route interface; 127.0.0.1 on a host with none.

    Asks the kernel for the interface's address (SIOCGIFADDR); where that is not possible,
    lets the kernel choose the source address for a UDP "connection" to the gateway, which
    sends no packet.
    """
    if route is not None:
        iface, gateway = route
        address = _interface_ipv4(iface) or _source_address_towards(gateway or "192.0.2.1")
        if address:
            return address
    return "127.0.0.1"


_SIOCGIFADDR = 0x8915


def _interface_ipv4(iface: str) -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            request = struct.pack("256s", iface.encode()[:15])
            reply = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
    except OSError:
        return None
    address = socket.inet_ntoa(reply[20:24])  # sockaddr_in.sin_addr inside struct ifreq
    return None if address.startswith(("0.", "127.")) else address


def _source_address_towards(target: str) -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((target, 9))
            address = str(sock.getsockname()[0])
    except OSError:
        return None
    return None if address.startswith(("0.", "127.")) else address


# ---- xapi-style maps --------------------------------------------------------------------------

# Linux's /proc/cpuinfo flag names for the CPUID bits xapi's `features` string carries, by bit
# number. xapi (from Xen) prints four 32-bit words: leaf 1 ECX, leaf 1 EDX, leaf 0x80000001
# ECX, leaf 0x80000001 EDX. Unnamed bits are reserved or hidden by Linux.
_LEAF1_ECX = (
    "pni pclmulqdq dtes64 monitor ds_cpl vmx smx est tm2 ssse3 cid sdbg fma cx16 xtpr pdcm "
    "- pcid dca sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave - avx f16c rdrand hypervisor"
)
_LEAF1_EDX = (
    "fpu vme de pse tsc msr pae mce cx8 apic - sep mtrr pge mca cmov pat pse36 pn clflush - dts acpi mmx "
    "fxsr sse sse2 ss ht tm ia64 pbe"
)
_EXT_ECX = (
    "lahf_lm cmp_legacy svm extapic cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw ibs xop skinit wdt "
    "- lwp fma4 tce - nodeid_msr - tbm topoext perfctr_core perfctr_nb - bpext ptsc perfctr_llc mwaitx - -"
)
_EXT_EDX = "- - - - - - - - - - - syscall - - - - - - - mp nx - mmxext - - fxsr_opt pdpe1gb rdtscp - lm 3dnowext 3dnow"
_FEATURE_WORDS = tuple(tuple(words.split()) for words in (_LEAF1_ECX, _LEAF1_EDX, _EXT_ECX, _EXT_EDX))


def cpu_features(flags: tuple[str, ...] | list[str]) -> str:
    """xapi's `features` string (`xxxxxxxx-xxxxxxxx-xxxxxxxx-xxxxxxxx`) rebuilt from cpuinfo flags."""
    present = set(flags)
    words = []
    for names in _FEATURE_WORDS:
        value = 0
        for bit, name in enumerate(names):
            if name in present:
                value |= 1 << bit
        words.append(f"{value:08x}")
    return "-".join(words)


def cpu_info(facts: HostFacts) -> dict[str, str]:
    """`host.cpu_info` as xapi fills it, from the first CPU (xapi assumes a homogeneous host).

    xapi's features_pv/_hvm(_host) are Xen featuresets; pyxapi runs HVM-style guests only and
    reports the CPUID-derived `features` in all four, so clients that read them (pool-join
    checks, XO) find well-formed values that are equal exactly when the CPUs are.
    """
    first = facts.cpus[0] if facts.cpus else None
    features = cpu_features(first.flags if first else ())
    threads = 1
    if first and first.siblings and first.cores and first.siblings >= first.cores:
        threads = first.siblings // first.cores
    return {
        "cpu_count": str(facts.cpu_count),
        "socket_count": str(facts.socket_count),
        "threads_per_core": str(threads),
        "vendor": first.vendor if first and first.vendor else "unknown",
        "speed": f"{(first.mhz if first and first.mhz else 0.0):.3f}",
        "modelname": first.model_name if first and first.model_name else facts.machine,
        "family": _num(first.family if first else None),
        "model": _num(first.model if first else None),
        "stepping": _num(first.stepping if first else None),
        "flags": " ".join(first.flags) if first else "",
        "features": features,
        "features_pv": features,
        "features_hvm": features,
        "features_pv_host": features,
        "features_hvm_host": features,
    }


def _num(value: int | None) -> str:
    return str(value) if value is not None else "0"


def software_version(
    facts: HostFacts,
    *,
    api_version: tuple[int, int],
    xapi_version: str,
    db_schema: str,
    product_version: str = pyxapi.__version__,
    product_brand: str = "pyxapi",
    platform_name: str = "pyxapi",
    platform_version: str | None = None,
    build_number: str = "",
    git_id: str = "",
    date: str | None = None,
    xen_version: str | None = None,
    network_backend: str = "bridge",
) -> dict[str, str]:
    """`host.software_version` with the keys real xapi reports.

    `xapi_version` is the xapi release pyxapi presents as (e.g. "24.39.1"): `xapi` gets its
    major.minor and `xapi_build` all of it. `xencenter_min`/`xencenter_max` are the API
    version ("2.23"), the value xapi has always paired with its API level. `hostname` and
    `date` describe the build, as in xapi (whose builds say `localhost`); `date` defaults to
    the day this pyxapi was installed. `xen` appears only when given (pyxapi on Xen).
    Empty product keys are left out, as xapi does.
    """
    api = f"{api_version[0]}.{api_version[1]}"
    major_minor = ".".join(product_version.split(".")[:2])
    xapi_major_minor = ".".join(xapi_version.split(".")[:2])
    product = {
        "product_version": product_version,
        "product_version_text": major_minor,
        "product_version_text_short": major_minor,
        "platform_name": platform_name,
        "platform_version": platform_version or product_version,
        "product_brand": product_brand,
        "build_number": build_number,
        "git_id": git_id,
        "hostname": "localhost",
        "date": date if date is not None else _install_date(),
    }
    result = {k: v for k, v in product.items() if v}
    result.update(
        {
            "xapi": xapi_major_minor,
            "xapi_build": xapi_version,
            "linux": facts.kernel_release,
            "xencenter_min": api,
            "xencenter_max": api,
            "network_backend": network_backend,
            "db_schema": db_schema,
        }
    )
    if xen_version:
        result["xen"] = xen_version
    return result


def _install_date() -> str:
    try:
        stamp = Path(pyxapi.__file__).stat().st_mtime
    except OSError:
        stamp = time.time()
    return dt.datetime.fromtimestamp(stamp, dt.UTC).date().isoformat()
