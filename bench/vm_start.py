"""VM start benchmark: VM.start until the guest is ready, against a bare QEMU of the same guest,
and a boot storm with the API's latency measured during it.

    .venv/bin/python bench/vm_start.py [--quick]

"Ready" is the line GUEST READY on the guest's serial console for both sides (the daemon's guest
agent poll is far too coarse to time a boot). The API side is timed from the VM.start call; the
baseline from spawning `qemu-system-x86_64` with the command line the driver itself ran (read
back from /proc) minus -S, -daemonize and -pidfile. Runs of the two sides alternate, so drift in
the machine's load (TCG, two shared cores) hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: make `bench` and the tests' harness importable

from tests.server_harness import ROOT_PASSWORD, Daemon, new_daemon  # noqa: E402

from bench._common import RpcConn, cpu_seconds, percentile, table  # noqa: E402
from bench._vm import (  # noqa: E402
    PROBE_PERIOD,
    Api,
    BareQemus,
    BenchError,
    Prober,
    SerialWatch,
    VcpuWatch,
    alive_check,
    baseline_argv,
    boottime,
    build_test_guest,
    cmdline,
    kill_leftover_domains,
    med,
    ms,
    ms_f,
    read_pid,
    started_after,
    wait_ready,
    watch_vcpus,
)


@dataclass(frozen=True, slots=True)
class Settings:
    starts: int  # sequential measured starts per side (after one unmeasured warm-up each)
    storm: int  # concurrent starts in the boot storm
    storm_rounds: int  # storm pairs, in ABBA order: bare, API, API, bare, ...
    idle_seconds: float  # how long the idle API latency is sampled before each API storm


FULL = Settings(starts=5, storm=8, storm_rounds=2, idle_seconds=3.0)
QUICK = Settings(starts=2, storm=3, storm_rounds=1, idle_seconds=1.5)
BOOT_TIMEOUT = 120.0  # per boot: TCG on two shared cores, generous but bounded
POLL = 0.01  # serial log poll period (the same for both sides)
VCPU_TIMEOUT = 10.0  # the vCPU start is watched this long at most
STORM_VCPU_POLL = 0.005  # coarser in the storm: many watches, and the cores are saturated
STATUS_PERIOD = 1.0  # how often the storm's tasks are checked for failure
GOAL_RATIO = 1.10
GOAL_OVERHEAD_MS = 100.0
TEMPLATE = "pyxapi test guest"


@dataclass(frozen=True, slots=True)
class Boot:
    ready: float  # seconds from the call (API) or the spawn (bare) to GUEST READY
    uptime: float | None  # the guest's own uptime when it printed the marker
    forked: float | None  # seconds until the QEMU process existed (10 ms resolution)
    running: float | None  # seconds until the guest's vCPU ran (had 2 ms of CPU)
    reply: float | None = None  # API only: seconds until VM.start replied
    daemon_cpu: float | None = None  # API only: CPU seconds the daemon used from the call to ready


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


# ---- single boots -------------------------------------------------------------------------------
async def api_boot(api: Api, conn: RpcConn, vm: str, uuid: str) -> Boot:
    dom = api.domain_dir(uuid)
    # The previous run's log stays for post-mortems and still holds the marker.
    (dom / "serial.log").unlink(missing_ok=True)
    watch = SerialWatch(dom / "serial.log")
    (dom / "qemu.pid").unlink(missing_ok=True)  # gone after a clean exit; never a stale pid
    vcpu = VcpuWatch(lambda: read_pid(dom / "qemu.pid"))
    cpu0 = cpu_seconds(api.pid)
    b0, t0 = boottime(), time.monotonic()
    call = asyncio.create_task(conn.call("VM.start", api.session, vm, False, False))
    vcpu_task = asyncio.create_task(watch_vcpus([vcpu], VCPU_TIMEOUT))
    replied: list[float] = []
    call.add_done_callback(lambda _: replied.append(time.monotonic()))

    def check() -> None:
        if call.done() and call.exception() is not None:
            raise BenchError(f"VM.start failed: {call.exception()}")

    try:
        await wait_ready([watch], BOOT_TIMEOUT, POLL, check)
        cpu = cpu_seconds(api.pid) - cpu0
    finally:
        vcpu_task.cancel()
        if not call.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(call, BOOT_TIMEOUT)  # keep the connection usable
    await call
    assert watch.ready_at is not None
    pid = read_pid(dom / "qemu.pid")
    return Boot(watch.ready_at - t0, watch.guest_uptime, started_after(pid, b0) if pid else None,
                _since(vcpu.running_at, t0), replied[0] - t0, cpu)


def _since(at: float | None, t0: float) -> float | None:
    return None if at is None else at - t0


async def bare_boot(bare: BareQemus, argv: Sequence[str], run_dir: Path) -> Boot:
    b0, t0 = boottime(), time.monotonic()
    proc, watch = bare.spawn(argv, run_dir)
    vcpu = VcpuWatch(lambda: proc.pid)
    vcpu_task = asyncio.create_task(watch_vcpus([vcpu], VCPU_TIMEOUT))
    try:
        await wait_ready([watch], BOOT_TIMEOUT, POLL, alive_check(proc, run_dir / "qemu.log"))
        forked = started_after(proc.pid, b0)
    finally:
        vcpu_task.cancel()
        bare.kill(proc)
    assert watch.ready_at is not None
    return Boot(watch.ready_at - t0, watch.guest_uptime, forked, _since(vcpu.running_at, t0))


async def hard_shutdown(api: Api, conn: RpcConn, vm: str) -> None:
    await conn.call("VM.hard_shutdown", api.session, vm)
    state = await conn.call("VM.get_power_state", api.session, vm)
    if state != "Halted":
        raise BenchError(f"VM {vm} is {state} after hard_shutdown")


# ---- 1. sequential starts -----------------------------------------------------------------------
@dataclass
class Sequential:
    api: list[Boot]
    bare: list[Boot]
    argv: list[str]  # the baseline's command line


async def warm_up(api: Api, conn: RpcConn, vm: str, uuid: str, bare: BareQemus, tmp: Path) -> list[str]:
    """One unmeasured start per side (page cache, the driver's first-use probes); the API's start
    also yields the exact QEMU command line the driver ran, which the baseline reuses."""
    await api_boot(api, conn, vm, uuid)
    dom = api.domain_dir(uuid)
    pid = read_pid(dom / "qemu.pid")
    if pid is None:
        raise BenchError(f"no QEMU pid file in {dom}")
    argv = baseline_argv(cmdline(pid), dom, uuid, tmp / "bare0")
    await hard_shutdown(api, conn, vm)
    await bare_boot(bare, argv, tmp / "bare0")
    return argv


async def sequential(api: Api, vm: str, uuid: str, bare: BareQemus, tmp: Path, s: Settings,
                     progress: Callable[[str], None]) -> Sequential:
    conn = await api.conn()
    try:
        argv = await warm_up(api, conn, vm, uuid, bare, tmp)
        out = Sequential([], [], argv)
        for i in range(s.starts):
            # Alternate which side goes first, so a trend in the machine's load favours neither.
            for side in (("api", "bare") if i % 2 == 0 else ("bare", "api")):
                if side == "api":
                    out.api.append(await api_boot(api, conn, vm, uuid))
                    await hard_shutdown(api, conn, vm)
                else:
                    out.bare.append(await bare_boot(bare, argv, tmp / "bare0"))
            a, b = out.api[-1], out.bare[-1]
            progress(f"  start {i + 1}/{s.starts}: API {ms(a.ready)} (vCPU ran at {ms(a.running)}), "
                     f"bare {ms(b.ready)} (vCPU ran at {ms(b.running)})")
        return out
    finally:
        await conn.close()


def report_sequential(r: Sequential, s: Settings) -> str:
    def row(name: str, boots: list[Boot]) -> list[str]:
        ready = [b.ready for b in boots]
        return [name, ms(statistics.median(ready)), ms(min(ready)), ms(max(ready)),
                ms(med([b.forked for b in boots])), ms(med([b.running for b in boots])),
                ms(med([b.reply for b in boots])),
                ms(med([b.ready - b.uptime if b.uptime is not None else None for b in boots])),
                ms(med([b.uptime for b in boots])), ms(med([b.daemon_cpu for b in boots]))]

    api_med = statistics.median(b.ready for b in r.api)
    bare_med = statistics.median(b.ready for b in r.bare)
    ratio = api_med / bare_med
    overhead_ms = (api_med - bare_med) * 1000
    paired = statistics.median(a.ready - b.ready for a, b in zip(r.api, r.bare, strict=True)) * 1000
    api_run, bare_run = med([b.running for b in r.api]), med([b.running for b in r.bare])
    critical = "-" if api_run is None or bare_run is None else f"{(api_run - bare_run) * 1000:+,.0f} ms"
    headers = ["side", "ready, median", "min", "max", "QEMU forked", "vCPU running", "call replied",
               "ready - uptime", "guest uptime", "daemon CPU"]
    lines = [
        f"1. Sequential starts until GUEST READY ({s.starts} per side, interleaved, hard_shutdown / kill between; "
        "medians unless marked)",
        table(headers, [row("API: VM.start call", r.api), row("bare qemu-system-x86_64 spawn", r.bare)]),
        "",
        "   runs, API  (ms): " + " ".join(f"{b.ready * 1000:.0f}" for b in r.api),
        "   runs, bare (ms): " + " ".join(f"{b.ready * 1000:.0f}" for b in r.bare),
        f"   ratio API/bare to ready (medians)      {ratio:.3f}x   goal <= {GOAL_RATIO:.2f}x: "
        f"{_met(ratio <= GOAL_RATIO)}",
        f"   overhead to ready (median - median)    {overhead_ms:+,.0f} ms   goal <= {GOAL_OVERHEAD_MS:.0f} ms: "
        f"{_met(overhead_ms <= GOAL_OVERHEAD_MS)}",
        f"   overhead to ready (median of run pairs) {paired:+,.0f} ms",
        f"   overhead until the vCPU runs           {critical}   (the toolstack's own share of the critical path)",
        "",
        "   QEMU forked: until the QEMU process existed (/proc start time, 10 ms ticks; the driver's is the",
        "   -daemonize child, forked after QEMU's early start-up, so the two sides differ by a few ms here).",
        "   vCPU running: until QEMU's vCPU thread had 2 ms of CPU (the guest runs; -S holds it at ~0 until the",
        "   driver's cont): the like-for-like start of the guest. ready - uptime: until the guest kernel's clock",
        "   started (QEMU start-up, cont, firmware, decompression); guest uptime: guest run time, the part the",
        "   machine's load moves most.",
        "   daemon CPU: user+system CPU time the pyxapi daemon used from the call until ready (10 ms ticks).",
    ]
    return "\n".join(lines)


# ---- 2. boot storm ------------------------------------------------------------------------------
async def probe_idle(api: Api, dom0: str, seconds: float) -> list[float]:
    async with Prober(api, dom0) as prober:
        await asyncio.sleep(seconds)
    return prober.latencies


@dataclass
class Storm:
    ready: list[float]  # per guest: seconds from the first call/spawn to GUEST READY
    running: list[float | None]  # per guest: seconds until its vCPU ran
    daemon_cpu: float  # CPU seconds the daemon used until all were ready (it answers the probe on both sides)
    qemu_cpu: float  # CPU seconds all the storm's QEMUs had used when the last guest was ready
    latencies: list[float]  # the probe's, while the storm ran
    calls_done: float | None = None  # API: all Async.VM.start calls answered (task refs back)


async def watch_tasks(api: Api, conn: RpcConn, tasks: list[str], failed: list[str]) -> None:
    """One call per period for all of them: the watcher must cost the storm next to nothing."""
    pending = set(tasks)
    while pending:
        await asyncio.sleep(STATUS_PERIOD)
        records: dict[str, Any] = await conn.call("task.get_all_records", api.session)
        for task in list(pending):
            rec = records.get(task)
            if rec is None or rec["status"] == "pending":
                continue
            pending.discard(task)
            if rec["status"] != "success":
                failed.append(f"{task}: {rec['status']} {rec['error_info']}")


async def api_storm(api: Api, vms: list[tuple[str, str]], dom0: str) -> Storm:
    conns = [await api.conn() for _ in vms]
    side = await api.conn()
    failed: list[str] = []
    watcher: asyncio.Task[None] | None = None
    vcpu_task: asyncio.Task[None] | None = None
    try:
        watches, vcpus = [], []
        for _, uuid in vms:
            dom = api.domain_dir(uuid)
            (dom / "serial.log").unlink(missing_ok=True)
            (dom / "qemu.pid").unlink(missing_ok=True)
            watches.append(SerialWatch(dom / "serial.log"))
            vcpus.append(VcpuWatch(functools.partial(read_pid, dom / "qemu.pid")))
        async with Prober(api, dom0) as prober:
            cpu0 = cpu_seconds(api.pid)
            t0 = time.monotonic()
            vcpu_task = asyncio.create_task(watch_vcpus(vcpus, VCPU_TIMEOUT, STORM_VCPU_POLL))
            tasks: list[str] = list(await asyncio.gather(*(
                c.call("Async.VM.start", api.session, vm, False, False)
                for c, (vm, _) in zip(conns, vms, strict=True))))
            calls_done = time.monotonic() - t0
            watcher = asyncio.create_task(watch_tasks(api, side, tasks, failed))

            def check() -> None:
                prober.check()
                if failed:
                    raise BenchError("Async.VM.start failed: " + "; ".join(failed))
                if watcher is not None and watcher.done() and watcher.exception() is not None:
                    raise BenchError(f"watching the start tasks failed: {watcher.exception()}")

            await wait_ready(watches, BOOT_TIMEOUT, POLL, check)
            cpu = cpu_seconds(api.pid) - cpu0
            qemu_cpu = sum(_cpu_of(read_pid(api.domain_dir(u) / "qemu.pid")) for _, u in vms)
            prober.stop()
        await watcher  # every task has finished: the domains run, so it cannot take long
        check()
        vcpu_task.cancel()
        running = [_since(v.running_at, t0) for v in vcpus]
        for task in tasks:
            await side.call("task.destroy", api.session, task)
        storm = Storm([w.ready_at - t0 for w in watches if w.ready_at is not None], running, cpu, qemu_cpu,
                      prober.latencies, calls_done)
        await asyncio.gather(*(hard_shutdown(api, c, vm) for c, (vm, _) in zip(conns, vms, strict=True)))
        return storm
    finally:
        for pending in (watcher, vcpu_task):
            if pending is not None:
                pending.cancel()
        for c in [*conns, side]:
            await c.close()


async def bare_storm(api: Api, dom0: str, bare: BareQemus, argv: Sequence[str], tmp: Path, n: int) -> Storm:
    template_dir = tmp / "bare0"
    argvs = [baseline_argv(argv, template_dir, _uuid_of(argv), tmp / f"storm{i}") for i in range(n)]
    spawned: list[tuple[subprocess.Popen[bytes], SerialWatch]] = []
    vcpu_task: asyncio.Task[None] | None = None
    try:
        async with Prober(api, dom0) as prober:
            cpu0 = cpu_seconds(api.pid)
            t0 = time.monotonic()
            for i, a in enumerate(argvs):
                spawned.append(bare.spawn(a, tmp / f"storm{i}"))
            vcpus = [VcpuWatch(functools.partial(int, p.pid)) for p, _ in spawned]
            vcpu_task = asyncio.create_task(watch_vcpus(vcpus, VCPU_TIMEOUT, STORM_VCPU_POLL))
            checks = [alive_check(p, tmp / f"storm{i}" / "qemu.log") for i, (p, _) in enumerate(spawned)]

            def check() -> None:
                prober.check()
                for c in checks:
                    c()

            await wait_ready([w for _, w in spawned], BOOT_TIMEOUT, POLL, check)
            cpu = cpu_seconds(api.pid) - cpu0
            qemu_cpu = sum(_cpu_of(p.pid) for p, _ in spawned)
            prober.stop()
        running = [_since(v.running_at, t0) for v in vcpus]
    finally:
        if vcpu_task is not None:
            vcpu_task.cancel()
        for p, _ in spawned:
            bare.kill(p)
    return Storm([w.ready_at - t0 for _, w in spawned if w.ready_at is not None], running, cpu, qemu_cpu,
                 prober.latencies)


def _cpu_of(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        return cpu_seconds(pid)
    except (OSError, ValueError):
        return 0.0


def _uuid_of(argv: Sequence[str]) -> str:
    return argv[list(argv).index("-uuid") + 1]


def report_storm(n: int, ours: list[Storm], base: list[Storm], idle: list[float]) -> str:
    def over_rounds(storms: list[Storm], pick: Callable[[Storm], float | None]) -> float | None:
        return med([pick(st) for st in storms])

    def figure(name: str, pick: Callable[[Storm], float | None], ratio: bool = True) -> list[str]:
        a, b = over_rounds(ours, pick), over_rounds(base, pick)
        return [name, ms(a), ms(b), f"{a / b:.3f}x" if ratio and a is not None and b else ""]

    def first_running(st: Storm) -> float | None:
        return min((r for r in st.running if r is not None), default=None)

    def last_running(st: Storm) -> float | None:
        known = [r for r in st.running if r is not None]
        return max(known) if len(known) == len(st.running) else None

    all_api = over_rounds(ours, lambda st: max(st.ready))
    all_bare = over_rounds(base, lambda st: max(st.ready))
    assert all_api is not None and all_bare is not None
    rows = [
        figure("all guests ready", lambda st: max(st.ready)),
        ["  difference", f"{(all_api - all_bare) * 1000:+,.0f} ms", "", ""],
        ["  each round", " ".join(f"{max(st.ready):.2f}" for st in ours) + " s",
         " ".join(f"{max(st.ready):.2f}" for st in base) + " s", ""],
        figure("first guest ready", lambda st: min(st.ready)),
        figure("median guest ready", lambda st: statistics.median(st.ready)),
        figure("all Async.VM.start calls answered", lambda st: st.calls_done, ratio=False),
        figure("first guest's vCPU running", first_running, ratio=False),
        figure("every guest's vCPU running", last_running, ratio=False),
        figure("daemon CPU until all ready", lambda st: st.daemon_cpu),
        figure("QEMUs' CPU until all ready (sum)", lambda st: st.qemu_cpu),
    ]

    def lat_row(name: str, values: list[float]) -> list[str]:
        v = sorted(values)
        return [name, str(len(v)), ms_f(percentile(v, 50)), ms_f(percentile(v, 99)), ms_f(v[-1]),
                f"{percentile(v, 50) / percentile(idle_s, 50):.1f}x",
                f"{percentile(v, 99) / percentile(idle_s, 99):.1f}x"]

    idle_s = sorted(idle)
    lat_rows = [
        lat_row("idle, just before each API storm", idle),
        lat_row("during the bare QEMU storms", [x for st in base for x in st.latencies]),
        lat_row("during the API storms", [x for st in ours for x in st.latencies]),
    ]
    return "\n".join([
        f"2. Boot storm: {n} guests at once (API: {n} concurrent Async.VM.start on {n} VMs; bare: {n} spawns; "
        f"times from the first call/spawn; {len(ours)} round(s) per side in ABBA order, medians over rounds)",
        table(["figure", "API", "bare QEMU", "API/bare"], rows),
        "",
        f"   API latency: VM.get_record(dom0), JSON-RPC keep-alive, one call every {PROBE_PERIOD * 1000:.0f} ms,",
        "   run during both sides' storms (the same extra load on each; during the bare storms the daemon has",
        "   nothing else to do, so that row is the machine's contention alone). The prober shares the two cores",
        "   with the guests: its own scheduling delay is included.",
        table(["VM.get_record(dom0)", "calls", "p50", "p99", "max", "p50/idle", "p99/idle"], lat_rows),
    ])


# ---- driver -------------------------------------------------------------------------------------
async def login(port: int) -> str:
    conn = await RpcConn.open(port)
    try:
        session: str = await conn.call("session.login_with_password", "root", ROOT_PASSWORD, "2.21", "bench-vm")
        return session
    finally:
        await conn.close()


async def install(api: Api, count: int) -> tuple[list[tuple[str, str]], str]:
    """count VMs from the test guest template, and dom0's ref (the latency probe's target)."""
    conn = await api.conn()
    try:
        refs = await conn.call("VM.get_by_name_label", api.session, TEMPLATE)
        template = None
        for ref in refs:
            if await conn.call("VM.get_is_a_template", api.session, ref):
                template = ref
        if template is None:
            raise BenchError(f"no template named {TEMPLATE!r}")
        vms: list[tuple[str, str]] = []
        for i in range(count):
            vm = await conn.call("VM.clone", api.session, template, f"bench-start-{i}")
            await conn.call("VM.provision", api.session, vm)
            vms.append((vm, await conn.call("VM.get_uuid", api.session, vm)))
        records: dict[str, Any] = await conn.call("VM.get_all_records", api.session)
        dom0 = next(ref for ref, rec in records.items() if rec["is_control_domain"])
        return vms, dom0
    finally:
        await conn.close()


async def run(daemon: Daemon, tmp: Path, bare: BareQemus, s: Settings, emit: Callable[[str], None]) -> None:
    assert daemon.proc is not None
    api = Api(daemon.port, daemon.proc.pid, await login(daemon.port), daemon.data_dir / "run" / "qemu")
    vms, dom0 = await install(api, max(1, s.storm))
    vm, uuid = vms[0]
    emit(f"1. sequential starts ({s.starts} per side, after one warm-up each; {machine_load(tmp)}) ...")
    seq = await sequential(api, vm, uuid, bare, tmp, s, emit)
    shown = shlex.join(seq.argv).replace(str(tmp), "$TMP")
    emit(f"baseline command line (the driver's own, minus -S -daemonize -pidfile):\n  {shown}")
    ours: list[Storm] = []
    base: list[Storm] = []
    idle: list[float] = []
    for r in range(s.storm_rounds):
        # ABBA: bare, API, API, bare, ... so a trend in the machine's load favours neither side.
        for side in (("bare", "api") if r % 2 == 0 else ("api", "bare")):
            emit(f"2. boot storm of {s.storm}, round {r + 1}/{s.storm_rounds}, {side} ({machine_load(tmp)}) ...")
            if side == "bare":
                base.append(await bare_storm(api, dom0, bare, seq.argv, tmp, s.storm))
                emit(f"  all ready after {max(base[-1].ready):.2f} s")
            else:
                idle += await probe_idle(api, dom0, s.idle_seconds)
                ours.append(await api_storm(api, vms[: s.storm], dom0))
                emit(f"  all ready after {max(ours[-1].ready):.2f} s")
    emit("\n" + report_sequential(seq, s))
    emit("\n" + report_storm(s.storm, ours, base, idle))


# ---- cleanup ------------------------------------------------------------------------------------
async def _halt_all(port: int) -> None:
    async with asyncio.timeout(60):
        conn = await RpcConn.open(port)
        try:
            session = await conn.call("session.login_with_password", "root", ROOT_PASSWORD, "2.21", "bench-vm")
            records: dict[str, Any] = await conn.call("VM.get_all_records", session)
            for ref, rec in records.items():
                if not rec["is_control_domain"] and rec["power_state"] != "Halted":
                    with contextlib.suppress(Exception):
                        await conn.call("VM.hard_shutdown", session, ref)
        finally:
            await conn.close()


def cleanup(daemon: Daemon | None, tmp: Path, bare: BareQemus) -> None:
    bare.kill_all()
    if daemon is not None and daemon.proc is not None and daemon.proc.poll() is None:
        with contextlib.suppress(Exception):
            asyncio.run(_halt_all(daemon.port))
        try:
            daemon.stop()
        except subprocess.TimeoutExpired:
            daemon.kill()  # ignored SIGTERM for 30 s: SIGKILL the one pid we started
    # A daemon that stopped (or was interrupted) leaves its guests running by design.
    leftovers = kill_leftover_domains(tmp / "data" / "run" / "qemu", str(tmp))
    if leftovers:
        print(f"killed {len(leftovers)} leftover QEMU process(es): {leftovers}", file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop everything


def machine_load(tmp: Path) -> str:
    """What else is loading the shared machine right now (other sessions run QEMU too)."""
    return f"load {os.getloadavg()[0]:.2f}, {_other_qemus(str(tmp))} other QEMU(s)"


def _other_qemus(mine: str) -> int:
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (entry / "cmdline").read_bytes()
                if cmd.startswith(b"qemu-system") or b"/qemu-system" in cmd.split(b"\0", 1)[0]:
                    count += mine.encode() not in cmd
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 starts per side and a storm of 3 (under 90 s)")
    parser.add_argument("--xen", type=int, metavar="RUNS", default=0,
                        help="only the xen column: pyxapi vs `xl create` in the Xen test host (bench/xen_start.py)")
    args = parser.parse_args()
    if args.xen:
        from bench.xen_start import run_xen

        return run_xen(lambda text: print(text, flush=True), args.xen)
    s = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, _sigterm)

    def emit(text: str) -> None:
        print(text, flush=True)

    started = time.perf_counter()
    # Short on purpose: QEMU's unix sockets live under the data dir (108-byte limit).
    tmp = Path(tempfile.mkdtemp(prefix="pyxb-", dir="/tmp"))
    bare = BareQemus()
    daemon: Daemon | None = None
    try:
        print(f"pyxapi VM start benchmark ({'quick' if s is QUICK else 'full'}): python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs, {machine_load(tmp)} at start", flush=True)
        kernel, initrd = build_test_guest()
        guest_dir = tmp / "data" / "images" / "test-guest"
        guest_dir.mkdir(parents=True)
        shutil.copy(kernel, guest_dir / "vmlinuz")
        shutil.copy(initrd, guest_dir / "initrd.img")
        daemon = new_daemon(tmp, hypervisor="qemu")
        daemon.start()
        asyncio.run(run(daemon, tmp, bare, s, emit))
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr, flush=True)
        return 130
    except Exception:  # not on SIGTERM or Ctrl-C: the log only helps when something broke
        if daemon is not None and daemon.log_path is not None and daemon.log_path.exists():
            tail = daemon.log_path.read_text(errors="replace").splitlines()[-30:]
            print("daemon log (last lines):\n" + "\n".join(tail), file=sys.stderr)
        raise
    finally:
        # A second Ctrl-C must not cut the cleanup short (every wait in it is bounded).
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            cleanup(daemon, tmp, bare)
        finally:
            signal.signal(signal.SIGINT, previous)
    print(f"\ndone in {time.perf_counter() - started:.0f} s ({machine_load(tmp)})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
