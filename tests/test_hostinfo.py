"""Host facts: parsers on known /proc texts, and plausibility of this machine's real facts."""

from __future__ import annotations

import ipaddress
import os
import platform
import re
import socket
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

import pyxapi
from pyxapi.hostinfo import (
    CpuInfo,
    HostFacts,
    cpu_features,
    cpu_info,
    default_route,
    machine_uuid,
    parse_boot_time,
    parse_cpuinfo,
    parse_meminfo,
    parse_os_release,
    primary_ipv4,
    read_host_facts,
    software_version,
)

X86_CPU = """\
processor\t: {n}
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Intel(R) Xeon(R) Gold 6138 CPU @ 2.00GHz
stepping\t: 4
microcode\t: 0x2006e05
cpu MHz\t\t: 2000.000
cache size\t: 28160 KB
physical id\t: {socket}
siblings\t: 4
core id\t\t: {core}
cpu cores\t: 2
flags\t\t: fpu vme de pse tsc msr pae syscall nx lm pni ssse3 hypervisor lahf_lm abm
bugs\t\t: spectre_v1
model\t\t: 99
"""

X86_CPUINFO = "\n".join(X86_CPU.format(n=n, socket=n // 4, core=(n // 2) % 2) for n in range(8))

ARM_CPUINFO = """\
processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1

processor\t: 1
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1

Hardware\t: some board
"""

MEMINFO = """\
MemTotal:       16310024 kB
MemFree:         1089528 kB
MemAvailable:   10245384 kB
Buffers:          612340 kB
Cached:          8021004 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""

OS_RELEASE = """\
# written by the distribution
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME='Debian GNU/Linux'
VERSION_ID="12"
ID=debian
QUOTED="say \\"hi\\" \\$HOME"
SINGLE='back\\slash "kept"'
BARE=plain\\ word

BROKEN="no end
not a line
"""

ROUTE = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
down0\t00000000\t01010101\t0002\t0\t0\t1\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
garbage line
"""


# ---- parsers ----------------------------------------------------------------------------------


def test_parse_cpuinfo_x86() -> None:
    cpus = parse_cpuinfo(X86_CPUINFO)
    assert [c.index for c in cpus] == list(range(8))
    first = cpus[0]
    assert first.vendor == "GenuineIntel"
    assert first.model_name == "Intel(R) Xeon(R) Gold 6138 CPU @ 2.00GHz"
    assert (first.family, first.model, first.stepping) == (6, 85, 4)  # the first "model" line wins
    assert first.mhz == 2000.0
    assert first.flags[:3] == ("fpu", "vme", "de") and "hypervisor" in first.flags
    assert (first.siblings, first.cores) == (4, 2)
    assert {c.physical_id for c in cpus} == {0, 1}


def test_parse_cpuinfo_arm64() -> None:
    cpus = parse_cpuinfo(ARM_CPUINFO)
    assert len(cpus) == 2  # the trailing "Hardware" block is not a CPU
    assert cpus[0].flags[:2] == ("fp", "asimd")
    assert cpus[0].vendor == "0x41"
    assert (cpus[0].family, cpus[0].model, cpus[0].mhz, cpus[0].physical_id) == (None, None, None, None)


def test_parse_cpuinfo_empty() -> None:
    assert parse_cpuinfo("") == []


def test_parse_meminfo_is_in_bytes() -> None:
    mem = parse_meminfo(MEMINFO)
    assert mem["MemTotal"] == 16310024 * 1024
    assert mem["MemAvailable"] == 10245384 * 1024
    assert mem["HugePages_Total"] == 0
    assert mem["Hugepagesize"] == 2048 * 1024


def test_parse_os_release_unquotes() -> None:
    values = parse_os_release(OS_RELEASE)
    assert values["PRETTY_NAME"] == "Debian GNU/Linux 12 (bookworm)"
    assert values["NAME"] == "Debian GNU/Linux"
    assert values["VERSION_ID"] == "12"
    assert values["ID"] == "debian"
    assert values["QUOTED"] == 'say "hi" $HOME'
    assert values["SINGLE"] == 'back\\slash "kept"'
    assert values["BARE"] == "plain word"
    assert values["BROKEN"] == "no end"
    assert "not a line" not in values and "# written by the distribution" not in values


def test_parse_boot_time() -> None:
    assert parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n") == 1700000000
    assert parse_boot_time("cpu  1 2 3\n") is None
    assert parse_boot_time("btime x\n") is None


def test_default_route_picks_lowest_metric_up_default() -> None:
    assert default_route(ROUTE) == ("eth0", "192.0.2.1")
    only_wlan = "\n".join(line for line in ROUTE.splitlines() if not line.startswith("eth0"))
    assert default_route(only_wlan) == ("wlan0", "192.168.1.1")
    assert default_route(ROUTE.splitlines()[0] + "\n") is None  # header only
    assert default_route("") is None
    # A device route (no gateway), as on a point-to-point link.
    ptp = ROUTE.splitlines()[0] + "\nppp0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n"
    assert default_route(ptp) == ("ppp0", None)


def test_machine_uuid_is_derived_stable_and_not_the_raw_id() -> None:
    machine_id = "3d1219c7c4c5404aaa1f6d2a48adfda4\n"
    derived = machine_uuid(machine_id)
    assert derived is not None
    parsed = uuid.UUID(derived)
    assert str(parsed) == derived and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert derived.replace("-", "") != machine_id.strip()
    assert machine_uuid(machine_id.upper()) == derived
    assert machine_uuid("00000000000000000000000000000001") != derived
    for bad in [
        None,
        "",
        "uninitialized",
        "3d1219c7c4c5404aaa1f6d2a48adfda",
        "zz" * 16,
        "3d1219c7-c4c5-404a-aa1f-6d2a48adfda4",
    ]:
        assert machine_uuid(bad) is None


def test_cpu_features_words() -> None:
    # Word order as in xapi: leaf 1 ECX, leaf 1 EDX, 0x80000001 ECX, 0x80000001 EDX.
    flags = ("pni", "hypervisor", "fpu", "sse2", "lahf_lm", "abm", "syscall", "nx", "lm", "avx512f", "unknown")
    expected_words = [
        (1 << 0) | (1 << 31),
        (1 << 0) | (1 << 26),
        (1 << 0) | (1 << 5),
        (1 << 11) | (1 << 20) | (1 << 29),
    ]
    assert cpu_features(flags) == "-".join(f"{w:08x}" for w in expected_words)
    assert cpu_features(()) == "00000000-00000000-00000000-00000000"


# ---- reading a machine ------------------------------------------------------------------------


def _fake_root(tmp_path: Path, *, machine_id: str | None = "0123456789abcdef0123456789abcdef") -> Path:
    files = {
        "proc/cpuinfo": X86_CPUINFO,
        "proc/meminfo": MEMINFO,
        "proc/stat": "cpu  1 2 3\nbtime 1700000000\n",
        "proc/net/route": ROUTE.splitlines()[0] + "\n",
        "etc/os-release": OS_RELEASE,
    }
    if machine_id is not None:
        files["etc/machine-id"] = machine_id + "\n"
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_read_host_facts_from_files(tmp_path: Path) -> None:
    facts = read_host_facts(_fake_root(tmp_path))
    assert facts.cpu_count == 8
    assert facts.socket_count == 2
    assert facts.memory_total == 16310024 * 1024
    assert facts.memory_free == 1089528 * 1024
    assert facts.memory_available == 10245384 * 1024
    assert facts.boot_time == 1700000000.0
    assert (facts.os_name, facts.os_version) == ("Debian GNU/Linux", "12")
    assert facts.os_pretty_name == "Debian GNU/Linux 12 (bookworm)"
    assert facts.uuid == machine_uuid("0123456789abcdef0123456789abcdef") and facts.uuid_is_stable
    assert facts.address == "127.0.0.1"  # the fake route table has no default route
    assert read_host_facts(tmp_path).uuid == facts.uuid


def test_read_host_facts_fallbacks(tmp_path: Path) -> None:
    root = _fake_root(tmp_path, machine_id=None)
    (root / "proc/meminfo").write_text("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 10 kB\nCached: 200 kB\n")
    (root / "proc/stat").write_text("cpu 1 2 3\n")
    (root / "proc/uptime").write_text("100.00 150.00\n")
    (root / "etc/os-release").unlink()
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text('NAME="Fallback OS"\n')
    first, second = read_host_facts(root), read_host_facts(root)
    assert not first.uuid_is_stable
    assert first.uuid != second.uuid  # random each time: the caller must persist it
    assert first.memory_available == (100 + 10 + 200) * 1024
    assert abs(first.boot_time - (time.time() - 100)) < 5
    assert first.os_name == "Fallback OS" and first.os_pretty_name == "Fallback OS"


def test_primary_ipv4_without_a_default_route() -> None:
    assert primary_ipv4(None) == "127.0.0.1"


@pytest.fixture(scope="module")
def real() -> HostFacts:
    return read_host_facts()


def test_real_identity(real: HostFacts) -> None:
    assert real.hostname == socket.gethostname()
    assert real.fqdn == real.hostname or real.fqdn.startswith(real.hostname.split(".")[0])
    assert real.kernel_release == platform.release()
    assert real.machine == platform.machine()
    assert str(uuid.UUID(real.uuid)) == real.uuid
    if Path("/etc/machine-id").exists() and machine_uuid(Path("/etc/machine-id").read_text()):
        assert real.uuid_is_stable and read_host_facts().uuid == real.uuid
    if Path("/etc/os-release").exists():
        assert real.os_name


def test_real_address_is_local(real: HostFacts) -> None:
    address = ipaddress.IPv4Address(real.address)
    if not address.is_loopback:
        # Only an address of this machine can be bound.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((real.address, 0))


def test_real_cpus(real: HostFacts) -> None:
    assert real.cpu_count == len(real.cpus) == os.sysconf("SC_NPROCESSORS_ONLN")
    assert 1 <= real.socket_count <= real.cpu_count
    if platform.machine() in ("x86_64", "i686"):
        first = real.cpus[0]
        assert first.vendor in ("GenuineIntel", "AuthenticAMD", "HygonGenuine", "CentaurHauls", "  Shanghai  ")
        assert first.model_name
        assert first.family is not None and first.family >= 5
        assert "fpu" in first.flags and "sse2" in first.flags
        if first.mhz is not None:
            assert 100 < first.mhz < 10_000


def test_real_memory(real: HostFacts) -> None:
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert abs(real.memory_total - physical) <= physical // 100
    assert 0 < real.memory_free <= real.memory_total
    assert 0 < real.memory_available <= real.memory_total


def test_real_boot_time(real: HostFacts) -> None:
    now = time.time()
    assert now - 20 * 365 * 86400 < real.boot_time <= now
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    assert abs((now - uptime) - real.boot_time) < 5


# ---- xapi maps --------------------------------------------------------------------------------


def test_cpu_info_of_this_host(real: HostFacts) -> None:
    info = cpu_info(real)
    assert set(info) == {
        "cpu_count",
        "socket_count",
        "threads_per_core",
        "vendor",
        "speed",
        "modelname",
        "family",
        "model",
        "stepping",
        "flags",
        "features",
        "features_pv",
        "features_hvm",
        "features_pv_host",
        "features_hvm_host",
    }
    assert all(isinstance(v, str) for v in info.values())
    assert info["cpu_count"] == str(real.cpu_count)
    assert re.fullmatch(r"\d+\.\d{3}", info["speed"])
    assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){3}", info["features"])
    for key in ("family", "model", "stepping", "socket_count", "threads_per_core"):
        assert info[key].isdigit()
    assert info["flags"].split() == list(real.cpus[0].flags)


def test_cpu_info_topology(tmp_path: Path) -> None:
    facts = read_host_facts(_fake_root(tmp_path))
    info = cpu_info(facts)
    assert (info["cpu_count"], info["socket_count"], info["threads_per_core"]) == ("8", "2", "2")
    assert (info["vendor"], info["family"], info["model"], info["stepping"]) == ("GenuineIntel", "6", "85", "4")
    assert info["speed"] == "2000.000"
    assert info["features_hvm"] == info["features"] == cpu_features(facts.cpus[0].flags)


def test_cpu_info_without_x86_details(tmp_path: Path) -> None:
    facts = replace(
        read_host_facts(_fake_root(tmp_path)),
        cpus=(CpuInfo(0, "", "", None, None, None, None, ("fp", "asimd")),),
        cpu_count=1,
    )
    info = cpu_info(facts)
    assert info["speed"] == "0.000"
    assert (info["family"], info["model"], info["stepping"]) == ("0", "0", "0")
    assert info["vendor"] == "unknown"
    assert info["modelname"] == facts.machine


def test_software_version(real: HostFacts) -> None:
    sv = software_version(real, api_version=(2, 23), xapi_version="24.39.1", db_schema="5.786")
    assert sv == {
        "product_version": pyxapi.__version__,
        "product_version_text": ".".join(pyxapi.__version__.split(".")[:2]),
        "product_version_text_short": ".".join(pyxapi.__version__.split(".")[:2]),
        "platform_name": "pyxapi",
        "platform_version": pyxapi.__version__,
        "product_brand": "pyxapi",
        "hostname": "localhost",
        "date": sv["date"],
        "xapi": "24.39",
        "xapi_build": "24.39.1",
        "linux": real.kernel_release,
        "xencenter_min": "2.23",
        "xencenter_max": "2.23",
        "network_backend": "bridge",
        "db_schema": "5.786",
    }
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", sv["date"])
    assert "xen" not in sv and "git_id" not in sv and "build_number" not in sv  # empty: left out


def test_software_version_options(real: HostFacts) -> None:
    sv = software_version(
        real,
        api_version=(2, 21),
        xapi_version="25.6.0",
        db_schema="5.790",
        product_version="8.3.0",
        platform_version="3.4.0",
        build_number="abc123",
        git_id="deadbeef",
        date="2025-01-02",
        xen_version="4.17.5",
        network_backend="openvswitch",
    )
    assert sv["xen"] == "4.17.5"
    assert (sv["product_version_text"], sv["platform_version"]) == ("8.3", "3.4.0")
    assert (sv["build_number"], sv["git_id"], sv["date"]) == ("abc123", "deadbeef", "2025-01-02")
    assert (sv["xapi"], sv["xencenter_min"], sv["network_backend"]) == ("25.6", "2.21", "openvswitch")
    assert all(isinstance(v, str) and v for v in sv.values())
