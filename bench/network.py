"""Guest networking benchmark: guest-to-guest TCP throughput and ping latency over the `bridge` and
the `ovs` network driver, next to a veth pair measured in the same run, and VIF hot-plug latency.

    .venv/bin/python bench/network.py [--quick]

For each driver a daemon runs in a network namespace of its own with two test guests (QEMU; TCG on
these machines) on its internal network. The baseline is two namespaces joined by a veth pair: the
same kernel path a guest's packets end on, without the emulator and the switch. Both sides use the
same tools (busybox dd | nc, busybox ping): the receiver starts its clock at the first byte and stops
it at EOF, reading /proc/uptime (10 ms), and every transfer grows until it lasts a couple of seconds.
Hot-plug: VIF.create + VIF.plug until the call returns, until the guest kernel shows the NIC
(a poller inside the guest, started before the call), and VIF.unplug (the guest's ACPI eject
acknowledged) until it returns.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: make `bench` and the tests' harness importable

import XenAPI  # noqa: E402
from tests.server_harness import ROOT_PASSWORD, Daemon, new_daemon  # noqa: E402

from bench._common import table  # noqa: E402
from bench._vm import BenchError, build_test_guest, kill_leftover_domains  # noqa: E402
from pyxapi.drivers.hypervisor.qga import qga_call  # noqa: E402


@dataclass(frozen=True, slots=True)
class Settings:
    transfers: int  # throughput runs per path (median)
    min_seconds: float  # a transfer grows until it lasts at least this long
    pings: int  # echo requests per latency run
    hotplugs: int  # plug/unplug cycles per driver (median)


FULL = Settings(transfers=3, min_seconds=2.0, pings=40, hotplugs=5)
QUICK = Settings(transfers=1, min_seconds=1.0, pings=15, hotplugs=2)
DRIVERS = ("bridge", "ovs")
SUBNET = "10.213.0"  # the daemon's internal network
BOOT_SECONDS = 180.0
EXEC_SECONDS = 300.0
MAX_BYTES = 2 << 30
_RTT = re.compile(r"min/avg/max = ([0-9.]+)/([0-9.]+)/([0-9.]+) ms")

# The receiver, run by `nc -l -e`: the socket is its stdin. The clock starts at the first byte.
RX_SCRIPT = """#!/bin/sh
dd bs=1 count=1 of=/dev/null 2>/dev/null
t0=$(cut -d' ' -f1 /proc/uptime)
n=$(wc -c)
t1=$(cut -d' ' -f1 /proc/uptime)
echo "$n $t0 $t1" > {out}
"""


# ---- endpoints: a guest (through its agent) or a host namespace ---------------------------------
class Endpoint:
    name: str
    ip: str
    tmp: str  # a directory for the receiver's script and result

    def run(self, command: str, timeout: float = EXEC_SECONDS, stdin: bytes = b"") -> tuple[int, str]:
        raise NotImplementedError

    def ok(self, command: str, timeout: float = EXEC_SECONDS, stdin: bytes = b"") -> str:
        rc, out = self.run(command, timeout, stdin)
        if rc != 0:
            raise BenchError(f"{self.name}: {command!r} exited {rc}: {out.strip()[-500:]}")
        return out


@dataclass
class GuestEnd(Endpoint):
    name: str
    ip: str
    vm: str
    uuid: str
    qga: Path
    tmp: str = "/tmp"

    def run(self, command: str, timeout: float = EXEC_SECONDS, stdin: bytes = b"") -> tuple[int, str]:
        return asyncio.run(self._exec(command, timeout, stdin))

    async def _exec(self, command: str, timeout: float, stdin: bytes) -> tuple[int, str]:
        args: dict[str, Any] = {"path": "/bin/sh", "arg": ["-c", command], "capture-output": True}
        if stdin:
            args["input-data"] = base64.b64encode(stdin).decode()
        started = await qga_call(self.qga, self.uuid, "guest-exec", args, timeout=30.0)
        deadline = time.monotonic() + timeout
        while True:
            st = await qga_call(self.qga, self.uuid, "guest-exec-status", {"pid": started["pid"]}, timeout=30.0)
            if st.get("exited"):
                out = base64.b64decode(st.get("out-data", "")) + base64.b64decode(st.get("err-data", ""))
                return int(st.get("exitcode", -1)), out.decode(errors="replace")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: {command!r} still running after {timeout:g}s")
            await asyncio.sleep(0.05)


@dataclass
class NetnsEnd(Endpoint):
    name: str
    ip: str
    netns: str
    tmp: str

    bin_dir: str  # busybox's applets, first on PATH: the same nc, dd and ping the guests have

    def run(self, command: str, timeout: float = EXEC_SECONDS, stdin: bytes = b"") -> tuple[int, str]:
        command = f'PATH="{self.bin_dir}:$PATH"; {command}'
        res = subprocess.run(["ip", "netns", "exec", self.netns, "busybox", "sh", "-c", command], input=stdin,
                             capture_output=True, timeout=timeout)  # fmt: skip
        return res.returncode, (res.stdout + res.stderr).decode(errors="replace")


# ---- measurements -------------------------------------------------------------------------------
_ports = iter(range(5201, 6000))


def transfer(sender: Endpoint, receiver: Endpoint, nbytes: int) -> tuple[int, float]:
    """One TCP stream of nbytes zeros: (bytes the receiver counted after its first, seconds)."""
    port = next(_ports)
    script, out = f"{receiver.tmp}/pyx-rx.sh", f"{receiver.tmp}/pyx-rx.out"
    receiver.ok(f"cat > {script} && chmod +x {script} && rm -f {out}", stdin=RX_SCRIPT.format(out=out).encode())
    receiver.ok(f"nc -l -p {port} -e {script} </dev/null >/dev/null 2>&1 &")
    deadline = time.monotonic() + 30
    while f":{port} " not in receiver.ok("netstat -ltn"):
        if time.monotonic() > deadline:
            raise BenchError(f"{receiver.name}: the receiver never listened on {port}")
        time.sleep(0.1)
    count = max(1, nbytes // 65536)
    sender.ok(f"dd if=/dev/zero bs=65536 count={count} 2>/dev/null | nc {receiver.ip} {port}")
    deadline = time.monotonic() + EXEC_SECONDS
    while True:
        rc, text = receiver.run(f"cat {out} 2>/dev/null")
        if rc == 0 and text.strip():
            n, t0, t1 = text.split()
            return int(n), max(float(t1) - float(t0), 0.01)
        if time.monotonic() > deadline:
            raise BenchError(f"{receiver.name}: no transfer result")
        time.sleep(0.2)


def throughput(sender: Endpoint, receiver: Endpoint, s: Settings, start_bytes: int) -> float:
    """Median Mbit/s over s.transfers streams, each grown until it lasts s.min_seconds."""
    nbytes, rates = start_bytes, list[float]()
    while len(rates) < s.transfers:
        got, seconds = transfer(sender, receiver, nbytes)
        if got < nbytes * 0.9:
            raise BenchError(f"{sender.name} -> {receiver.name}: {got} of {nbytes} bytes arrived")
        if seconds < s.min_seconds and nbytes < MAX_BYTES:
            nbytes = min(MAX_BYTES, int(nbytes * max(2.0, 1.5 * s.min_seconds / seconds)))
            continue
        rates.append(got * 8 / seconds / 1e6)
    return statistics.median(rates)


def latency(sender: Endpoint, receiver: Endpoint, s: Settings) -> tuple[float, float]:
    """(min, avg) round trip in ms from busybox ping."""
    sender.run(f"ping -c 3 -W 2 {receiver.ip}")  # ARP and MAC learning out of the way
    out = sender.ok(f"ping -q -c {s.pings} -i 0.1 -W 2 {receiver.ip}")
    m = _RTT.search(out)
    if m is None:
        raise BenchError(f"no ping summary from {sender.name}: {out}")
    return float(m.group(1)), float(m.group(2))


@dataclass
class PathFigures:
    name: str
    mbit: float
    rtt_min: float
    rtt_avg: float


@dataclass
class HotplugFigures:
    plug: list[float] = field(default_factory=list)  # VIF.plug call, seconds
    seen: list[float] = field(default_factory=list)  # from the call until the guest kernel had the NIC
    unplug: list[float] = field(default_factory=list)  # VIF.unplug call (guest acknowledged the eject)


# ---- the veth baseline --------------------------------------------------------------------------
@contextlib.contextmanager
def veth_pair(tmp: Path) -> Iterator[tuple[NetnsEnd, NetnsEnd]]:
    tag = uuidlib.uuid4().hex[:6]
    a, b = f"pyxba-{tag}", f"pyxbb-{tag}"
    try:
        for ns in (a, b):
            _sh("ip", "netns", "add", ns)
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        _sh("ip", "-n", a, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", b)
        for ns, ip in ((a, "10.251.0.1"), (b, "10.251.0.2")):
            _sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "veth0")
            _sh("ip", "-n", ns, "link", "set", "veth0", "up")
        bin_dir = tmp / "busybox"
        bin_dir.mkdir(exist_ok=True)
        _sh("busybox", "--install", "-s", str(bin_dir))
        yield (NetnsEnd("veth-a", "10.251.0.1", a, str(tmp), str(bin_dir)),
               NetnsEnd("veth-b", "10.251.0.2", b, str(tmp), str(bin_dir)))  # fmt: skip
    finally:
        for ns in (a, b):
            _kill_netns_processes(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _sh(*argv: str) -> None:
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        raise BenchError(f"{' '.join(argv)}: {res.stderr.strip()}")


def _kill_netns_processes(ns: str) -> None:
    """A receiver left behind by a failed run: only processes inside our own namespace."""
    res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    for pid in res.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


# ---- one driver: a daemon and two guests --------------------------------------------------------
@dataclass
class Lab:
    kind: str
    daemon: Daemon
    netns: str
    x: Any
    internal: str
    guests: list[GuestEnd]


def start_lab(kind: str, tmp: Path, kernel: Path, initrd: Path) -> Lab:
    root = tmp / kind
    guest_dir = root / "data" / "images" / "test-guest"
    guest_dir.mkdir(parents=True)
    shutil.copy(kernel, guest_dir / "vmlinuz")
    shutil.copy(initrd, guest_dir / "initrd.img")
    netns = f"pyxbn-{uuidlib.uuid4().hex[:8]}"
    _sh("ip", "netns", "add", netns)
    _sh("ip", "-n", netns, "link", "set", "lo", "up")
    daemon = new_daemon(root, hypervisor="qemu", network=kind, netns=netns)
    lab = Lab(kind, daemon, netns, None, "", [])
    daemon.start()
    s = XenAPI.Session(daemon.url)
    s.xenapi.login_with_password("root", ROOT_PASSWORD, "2.23", "bench-network")
    x = lab.x = s.xenapi
    [lab.internal] = x.network.get_by_name_label("pyxapi internal network")
    template = next(t for t in x.VM.get_by_name_label("pyxapi test guest") if x.VM.get_is_a_template(t))
    tasks = []
    for i, ip in enumerate((f"{SUBNET}.31", f"{SUBNET}.32"), 1):
        vm = x.VM.clone(template, f"bench-{kind}-{i}")
        x.VM.provision(vm)
        x.VM.set_PV_args(vm, f"console=ttyS0 quiet panic=-1 guestip={ip}/24")
        x.VIF.create({"VM": vm, "network": lab.internal, "device": "0", "MAC": "", "MTU": "1500",
                      "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})  # fmt: skip
        vm_uuid = x.VM.get_uuid(vm)
        qga = daemon.data_dir / "run" / "qemu" / vm_uuid / "qga"
        lab.guests.append(GuestEnd(f"{kind}-guest{i}", ip, vm, vm_uuid, qga))
        tasks.append(x.Async.VM.start(vm, False, False))
    for task in tasks:
        _wait_task(x, task)
    for g in lab.guests:
        _wait_guest(g)
    return lab


def _wait_task(x: Any, task: str) -> None:
    deadline = time.monotonic() + BOOT_SECONDS
    while (rec := x.task.get_record(task))["status"] == "pending":
        if time.monotonic() > deadline:
            raise BenchError(f"task {task} pending after {BOOT_SECONDS:g}s")
        time.sleep(0.2)
    if rec["status"] != "success":
        raise BenchError(f"VM.start failed: {rec['error_info']}")


def _wait_guest(g: GuestEnd) -> None:
    deadline = time.monotonic() + BOOT_SECONDS
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # the agent is not up yet
            if g.run(f"ip -4 -o addr show | grep -q '{g.ip}/'", timeout=20.0)[0] == 0:
                return
        time.sleep(1.0)
    raise BenchError(f"{g.name}: not ready after {BOOT_SECONDS:g}s")


def stop_lab(lab: Lab) -> None:
    with contextlib.suppress(Exception):
        for g in lab.guests:
            if lab.x.VM.get_power_state(g.vm) != "Halted":
                lab.x.VM.hard_shutdown(g.vm)
    lab.daemon.stop()
    kill_leftover_domains(lab.daemon.data_dir / "run" / "qemu", str(lab.daemon.data_dir))
    _stop_ovs_daemons(lab.daemon.data_dir / "run" / "net" / "ovs")
    subprocess.run(["ip", "netns", "del", lab.netns], capture_output=True)


def _stop_ovs_daemons(run_dir: Path) -> None:
    """The ovs driver's own ovsdb-server and ovs-vswitchd outlive the daemon on purpose: stop
    ours, by the pids in its run dir (and only if their command line names that dir)."""
    for pidfile in run_dir.glob("*.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip())
            if str(run_dir).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGTERM)


def hotplug(lab: Lab, s: Settings, figures: HotplugFigures) -> None:
    x, g = lab.x, lab.guests[1]
    for _ in range(s.hotplugs):
        vif = x.VIF.create({"VM": g.vm, "network": lab.internal, "device": "1", "MAC": "", "MTU": "1500",
                            "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}})  # fmt: skip
        mac = x.VIF.get_MAC(vif).lower()
        # A poller in the guest notes its uptime when the NIC shows up; the guest's clock at the
        # call is read just before it (the agent round trip makes `seen` a little long, not short).
        g.ok("rm -f /tmp/pyx-seen; (while ! grep -qi '" + mac + "' /sys/class/net/*/address; do usleep 5000; done;"
             " cut -d' ' -f1 /proc/uptime > /tmp/pyx-seen) </dev/null >/dev/null 2>&1 &")  # fmt: skip
        guest_t0 = float(g.ok("cut -d' ' -f1 /proc/uptime"))
        t = time.perf_counter()
        x.VIF.plug(vif)
        figures.plug.append(time.perf_counter() - t)
        deadline = time.monotonic() + 60
        while not (seen := g.ok("cat /tmp/pyx-seen 2>/dev/null || true").strip()):
            if time.monotonic() > deadline:
                raise BenchError(f"{g.name}: the hot-plugged NIC never appeared")
            time.sleep(0.1)
        figures.seen.append(float(seen) - guest_t0)
        t = time.perf_counter()
        x.VIF.unplug(vif)
        figures.unplug.append(time.perf_counter() - t)
        x.VIF.destroy(vif)


# ---- output -------------------------------------------------------------------------------------
def report(veth: PathFigures, paths: list[PathFigures], plugs: dict[str, HotplugFigures]) -> str:
    rows = [[veth.name, f"{veth.mbit:,.1f}", "1.000x", f"{veth.rtt_min:.3f}", f"{veth.rtt_avg:.3f}", "1.0x"]]
    for p in paths:
        rows.append([p.name, f"{p.mbit:,.1f}", f"{p.mbit / veth.mbit:.3f}x", f"{p.rtt_min:.3f}",
                     f"{p.rtt_avg:.3f}", f"{p.rtt_avg / veth.rtt_avg:.1f}x"])  # fmt: skip
    out = table(["path", "Mbit/s", "vs veth", "rtt min ms", "rtt avg ms", "rtt vs veth"], rows)
    hp_rows = []
    for kind, f in plugs.items():
        hp_rows.append([kind, _ms(f.plug), _ms(f.seen), _ms(f.unplug), str(len(f.plug))])
    hp = table(["VIF hot-plug", "plug call", "NIC in guest", "unplug call", "runs"], hp_rows)
    return f"{out}\n\n{hp}\n(medians; 'NIC in guest' counts from the plug call, guest clock, 10 ms resolution)"


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:,.0f} ms" if values else "-"


def run(tmp: Path, s: Settings, emit: Callable[[str], None], labs: list[Lab]) -> None:
    kernel, initrd = build_test_guest()
    paths: list[PathFigures] = []
    plugs: dict[str, HotplugFigures] = {}
    veth_rates: list[float] = []
    veth_rtts: list[tuple[float, float]] = []
    with veth_pair(tmp) as (va, vb):
        veth_rates.append(throughput(va, vb, s, 64 << 20))
        veth_rtts.append(latency(va, vb, s))
        emit(f"veth pair: {veth_rates[-1]:,.0f} Mbit/s, rtt avg {veth_rtts[-1][1]:.3f} ms")
        for kind in DRIVERS:
            t = time.perf_counter()
            lab = start_lab(kind, tmp, kernel, initrd)
            labs.append(lab)
            emit(f"{kind}: daemon and two guests up in {time.perf_counter() - t:.0f} s")
            g1, g2 = lab.guests
            mbit = throughput(g1, g2, s, 8 << 20)
            rtt = latency(g1, g2, s)
            paths.append(PathFigures(f"guest-guest ({kind})", mbit, *rtt))
            emit(f"{kind}: {mbit:,.0f} Mbit/s, rtt avg {rtt[1]:.3f} ms")
            plugs[kind] = HotplugFigures()
            hotplug(lab, s, plugs[kind])
            emit(f"{kind}: hot-plug {_ms(plugs[kind].plug)}, in guest {_ms(plugs[kind].seen)}, "
                 f"unplug {_ms(plugs[kind].unplug)}")  # fmt: skip
            stop_lab(labs.pop())
            # The baseline again after each driver: load drift on the shared machine hits both sides.
            veth_rates.append(throughput(va, vb, s, 64 << 20))
            veth_rtts.append(latency(va, vb, s))
    rtt_min, rtt_avg = (statistics.median(r[i] for r in veth_rtts) for i in (0, 1))
    veth = PathFigures("veth pair (baseline)", statistics.median(veth_rates), rtt_min, rtt_avg)
    emit("")
    emit(report(veth, paths, plugs))


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop everything


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one transfer per path, two hot-plugs per driver")
    s = QUICK if parser.parse_args().quick else FULL
    if os.geteuid() != 0:
        raise SystemExit("bench/network.py needs root (network namespaces, taps)")
    for tool in ("ip", "busybox", "qemu-system-x86_64", "nft", "ovs-vsctl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench/network.py needs {tool} (scripts/install-debian-deps.sh installs it)")
    signal.signal(signal.SIGTERM, _sigterm)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="pyxbn-", dir="/tmp"))  # short: QEMU's sockets live under it
    labs: list[Lab] = []
    print(f"pyxapi network benchmark ({'quick' if s is QUICK else 'full'}): {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    try:
        run(tmp, s, lambda text: print(text, flush=True), labs)
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr, flush=True)
        return 130
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for lab in labs:
                stop_lab(lab)
            shutil.rmtree(tmp, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous)
    print(f"\ndone in {time.perf_counter() - started:.0f} s (load {os.getloadavg()[0]:.2f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
