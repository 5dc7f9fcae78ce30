"""API benchmark: VM.get_record throughput against a bare aiohttp baseline, event.from latency
with many objects, and the cost of idle event.from waiters.

    .venv/bin/python bench/api.py [--quick]

Every figure that matters is a ratio or a count measured in this run (design.md: speed goals
live here, never in timed tests). The daemon, the baseline server and this load generator are
three processes; the load generator is one asyncio loop on a hand-written HTTP/1.1 client so it
stays light next to the servers on a two-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: make `bench` and the tests' harness importable

from tests.server_harness import ROOT_PASSWORD, Daemon, new_daemon  # noqa: E402

from bench._common import (  # noqa: E402
    JSON,
    XML,
    HttpConn,
    RpcConn,
    Wire,
    cpu_seconds,
    percentile,
    raise_nofile,
    rss_mib,
    self_cpu_seconds,
    start_bare,
    stop_process,
    table,
)
from pyxapi.context import Config  # noqa: E402


@dataclass(frozen=True, slots=True)
class Settings:
    clients: int  # concurrent keep-alive connections for the throughput runs
    calls: int  # measured calls per client
    warmup: int  # unmeasured calls per client first
    repeats: int  # alternating pyxapi/baseline runs; the median one is shown
    max_seconds: float  # a throughput run stops here even if its calls are not done
    vms: int  # objects in the DB for the event.from figures
    create_conns: int  # concurrent connections creating them
    rounds: int  # change→event latency samples
    waiters: int  # idle event.from waiters
    idle_seconds: float  # how long the daemon's CPU is watched while they wait


FULL = Settings(
    clients=8, calls=2000, warmup=100, repeats=3, max_seconds=20.0,
    vms=10_000, create_conns=16, rounds=50, waiters=1000, idle_seconds=5.0,
)
QUICK = Settings(
    clients=8, calls=150, warmup=20, repeats=1, max_seconds=4.0,
    vms=1_000, create_conns=8, rounds=10, waiters=100, idle_seconds=1.0,
)
EVENT_TIMEOUT = 30.0
# The waiter must be parked in the server before the change is sent; loopback needs far less.
PARK_DELAY = 0.02


def _config_default(name: str) -> Any:
    return next(f.default for f in dataclasses.fields(Config) if f.name == name)


BATCH_DELAY = float(_config_default("event_batch_delay"))


# ---- 1. throughput and latency ------------------------------------------------------------------
@dataclass(slots=True)
class LoadResult:
    calls: int
    seconds: float
    latencies: list[float]  # sorted, seconds
    server_cpu: float  # seconds of the target server's CPU during the run
    client_cpu: float  # seconds of this process's CPU during the run

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)


async def _client_loop(conn: HttpConn, wire: Wire, body: bytes, calls: int, deadline: float, out: list[float]) -> None:
    clock = time.perf_counter
    for _ in range(calls):
        if clock() > deadline:
            return
        start = clock()
        await conn.post(wire.path, body, wire.content_type)
        out.append(clock() - start)


async def run_load(port: int, pid: int, wire: Wire, body: bytes, s: Settings) -> LoadResult:
    """`s.clients` connections each send the same pre-encoded call: warm-up, then measured."""
    conns = [await HttpConn("127.0.0.1", port).open() for _ in range(s.clients)]
    try:
        wire.result(await conns[0].post(wire.path, body, wire.content_type))  # fail loudly on a bad call
        far = time.perf_counter() + s.max_seconds
        await asyncio.gather(*(_client_loop(c, wire, body, s.warmup, far, []) for c in conns))
        per_client: list[list[float]] = [[] for _ in conns]
        cpu0, self0, t0 = cpu_seconds(pid), self_cpu_seconds(), time.perf_counter()
        deadline = t0 + s.max_seconds
        await asyncio.gather(*(_client_loop(c, wire, body, s.calls, deadline, out)
                               for c, out in zip(conns, per_client, strict=True)))
        seconds = time.perf_counter() - t0
        server_cpu, client_cpu = cpu_seconds(pid) - cpu0, self_cpu_seconds() - self0
    finally:
        for c in conns:
            await c.close()
    latencies = sorted(x for out in per_client for x in out)
    return LoadResult(len(latencies), seconds, latencies, server_cpu, client_cpu)


def _load_row(name: str, wire: Wire, r: LoadResult) -> list[str]:
    return [name, wire.name, f"{r.calls:,}", f"{r.rate:,.0f}", f"{r.p(50) * 1e3:.2f}", f"{r.p(99) * 1e3:.2f}",
            f"{r.server_cpu / r.calls * 1e6:,.0f}", f"{r.client_cpu / r.seconds * 100:.0f}"]


def _ratio_row(wire: Wire, ours: LoadResult, bare: LoadResult) -> list[str]:
    cpu = (ours.server_cpu / ours.calls) / (bare.server_cpu / bare.calls) if bare.server_cpu > 0 else float("nan")
    return ["pyxapi/bare", wire.name, "", f"{ours.rate / bare.rate:.2f}x", f"{ours.p(50) / bare.p(50):.2f}x",
            f"{ours.p(99) / bare.p(99):.2f}x", f"{cpu:.2f}x", ""]


async def bench_get_record(daemon: Daemon, session: str, vm: str, tmp: Path, s: Settings) -> str:
    pid = _pid(daemon)
    bodies = {w: w.request("VM.get_record", [session, vm]) for w in (XML, JSON)}
    # The baseline answers with the very bytes pyxapi sent for this call, so both write the same amount.
    replies: dict[Wire, bytes] = {}
    for w in (XML, JSON):
        conn = await HttpConn("127.0.0.1", daemon.port).open()
        replies[w] = await conn.post(w.path, bodies[w], w.content_type)
        await conn.close()
        (tmp / f"reply.{w.name}").write_bytes(replies[w])
    bare_proc, bare_port = start_bare(tmp / "reply.xml", tmp / "reply.json")
    rows: list[list[str]] = []
    spreads: list[str] = []
    try:
        for w in (XML, JSON):
            pairs = await _alternate(daemon.port, pid, bare_port, bare_proc.pid, w, bodies[w], s)
            ours, bare = _median([p[0] for p in pairs]), _median([p[1] for p in pairs])
            rows += [_load_row("pyxapi", w, ours), _load_row("bare aiohttp", w, bare), _ratio_row(w, ours, bare)]
            spreads.append(f"{w.name} " + " ".join(f"{o.rate / b.rate:.2f}" for o, b in pairs))
    finally:
        stop_process(bare_proc)
    head = (f"1. VM.get_record over HTTP/1.1 keep-alive: {s.clients} clients x {s.calls:,} calls "
            f"(after {s.warmup} warm-up each; reply {len(replies[XML]):,} B xml, {len(replies[JSON]):,} B json)\n"
            f"   median run of {s.repeats}, pyxapi and bare alternating")
    headers = ["target", "wire", "calls", "calls/s", "p50 ms", "p99 ms", "srv CPU us/call", "loadgen CPU %"]
    foot = ("calls/s ratio of each pyxapi/bare pair: " + "; ".join(spreads) + "\n"
            "srv CPU us/call is the steadiest figure on shared cores: time spent waiting for a core is not in it")
    return f"{head}\n{table(headers, rows)}\n{foot}"


async def _alternate(
    port: int, pid: int, bare_port: int, bare_pid: int, wire: Wire, body: bytes, s: Settings
) -> list[tuple[LoadResult, LoadResult]]:
    """Runs pyxapi and the baseline back to back, `s.repeats` times: on shared cores the load from
    other processes drifts, and adjacent runs see about the same drift."""
    pairs = []
    for _ in range(s.repeats):
        ours = await run_load(port, pid, wire, body, s)
        pairs.append((ours, await run_load(bare_port, bare_pid, wire, body, s)))
    return pairs


def _median(results: list[LoadResult]) -> LoadResult:
    return sorted(results, key=lambda r: r.rate)[len(results) // 2]


# ---- 2. event.from with many objects ------------------------------------------------------------
async def create_vms(port: int, session: str, count: int, conns: int) -> list[str]:
    """`count` VMs over `conns` concurrent keep-alive JSON-RPC connections."""
    names = iter(range(count))
    refs: list[str] = []

    async def worker() -> None:
        conn = await RpcConn.open(port)
        try:
            for i in names:  # the shared iterator hands each number to exactly one worker
                refs.append(await conn.call("VM.create", session, {"name_label": f"bench-{i}"}))
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(conns)))
    return refs


@dataclass(slots=True)
class Snapshot:
    seconds: float  # request sent -> last reply byte
    size: int  # reply bytes
    token: str
    stall: float  # the longest a small call from another client waited meanwhile
    cpu: float  # daemon CPU seconds meanwhile (steadier than wall time on shared cores)


async def snapshot(port: int, pid: int, session: str, wire: Wire) -> Snapshot:
    """One event.from(["*"], "", 0), while another connection keeps making a small call: the
    daemon has one event loop, so the snapshot's encoding delays everybody else."""
    conn, probe = await HttpConn("127.0.0.1", port).open(), await RpcConn.open(port)
    done = asyncio.Event()

    async def probing() -> float:
        worst = 0.0
        while not done.is_set():
            start = time.perf_counter()
            await probe.call("pool.get_all", session)
            worst = max(worst, time.perf_counter() - start)
            await asyncio.sleep(0.005)
        return worst

    prober = asyncio.create_task(probing())
    try:
        body = wire.request("event.from", [session, ["*"], "", 0.0])
        cpu0, start = cpu_seconds(pid), time.perf_counter()
        reply = await conn.post(wire.path, body, wire.content_type)
        seconds, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu0
    finally:
        done.set()
        stall = await prober
        await conn.close()
        await probe.close()
    return Snapshot(seconds, len(reply), wire.result(reply)["token"], stall, cpu)


async def _stamped(awaitable: Awaitable[Any]) -> tuple[float, Any]:
    value = await awaitable
    return time.perf_counter(), value


async def change_latency(port: int, session: str, vm: str, token: str, rounds: int) -> tuple[list[float], str]:
    """Per round: a waiter parks in event.from, then another connection renames `vm`; the time
    from just before the rename is sent until the waiter's reply has fully arrived."""
    waiter, changer = await RpcConn.open(port), await RpcConn.open(port)
    samples = []
    try:
        for i in range(rounds):
            waiter.send("event.from", session, ["vm"], token, EVENT_TIMEOUT)
            reply = asyncio.create_task(_stamped(waiter.receive()))
            await asyncio.sleep(PARK_DELAY)
            start = time.perf_counter()
            await changer.call("VM.set_name_label", session, vm, f"round-{i}")
            arrived, result = await reply
            if not any(ev["ref"] == vm for ev in result["events"]):
                raise RuntimeError(f"event.from replied without the change: {result['events'][:3]}")
            samples.append(arrived - start)
            token = result["token"]
    finally:
        await waiter.close()
        await changer.close()
    return sorted(samples), token


async def bench_events(daemon: Daemon, session: str, s: Settings) -> tuple[str, str, str]:
    pid = _pid(daemon)
    rss_before = rss_mib(pid)
    cpu0, start = cpu_seconds(pid), time.perf_counter()
    refs = await create_vms(daemon.port, session, s.vms, s.create_conns)
    create_s, create_cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu0
    rss_after = rss_mib(pid)
    snaps = {w: await snapshot(daemon.port, pid, session, w) for w in (JSON, XML)}
    rss_snap = rss_mib(pid)
    lat, token = await change_latency(daemon.port, session, refs[len(refs) // 2], snaps[JSON].token, s.rounds)
    extra = [x - BATCH_DELAY for x in lat]
    rows = [
        [f"create {s.vms:,} VMs (JSON-RPC, {s.create_conns} conns)",
         f"{create_s:.2f} s ({s.vms / create_s:,.0f}/s; daemon CPU {create_cpu / s.vms * 1e6:,.0f} us/VM)"],
        ["daemon RSS before -> after the VMs",
         f"{rss_before:.1f} -> {rss_after:.1f} MiB ({(rss_after - rss_before) * 1024 / s.vms:.1f} KiB/VM)"],
        *([f'event.from(["*"], "", 0) {w.name}',
           f"{x.seconds:.2f} s (daemon CPU {x.cpu:.2f} s), {x.size / 1e6:.1f} MB; others stalled {x.stall:.2f} s"]
          for w, x in snaps.items()),
        ["daemon RSS after both snapshots", f"{rss_snap:.1f} MiB (the encoders' high-water mark)"],
        [f"change -> event reply p50 / p99 ({s.rounds} rounds)",
         f"{percentile(lat, 50) * 1e3:.1f} / {percentile(lat, 99) * 1e3:.1f} ms"],
        [f"  minus the deliberate {BATCH_DELAY * 1e3:.0f} ms batching",
         f"{percentile(extra, 50) * 1e3:.1f} / {percentile(extra, 99) * 1e3:.1f} ms"],
    ]
    head = f"2. event.from with {s.vms:,} VMs in the DB"
    return f"{head}\n{table(['figure', 'value'], rows)}", refs[0], token


# ---- 3. idle waiters ----------------------------------------------------------------------------
async def _park(port: int, session: str, token: str, gate: asyncio.Semaphore) -> RpcConn:
    async with gate:  # a bounded connect rate keeps the listen backlog from overflowing
        conn = await RpcConn.open(port)
    conn.send("event.from", session, ["vm"], token, EVENT_TIMEOUT)
    return conn


async def bench_waiters(daemon: Daemon, session: str, vm: str, token: str, s: Settings) -> str:
    pid = _pid(daemon)
    rss_before = rss_mib(pid)
    gate = asyncio.Semaphore(64)
    park_start = time.perf_counter()
    conns = list(await asyncio.gather(*(_park(daemon.port, session, token, gate) for _ in range(s.waiters))))
    changer = await RpcConn.open(daemon.port)
    try:
        replies = [asyncio.create_task(_stamped(c.receive())) for c in conns]
        await asyncio.sleep(1.0)  # let the daemon read and park every request before watching it
        park_s = time.perf_counter() - park_start
        rss_parked = rss_mib(pid)
        cpu0 = cpu_seconds(pid)
        await asyncio.sleep(s.idle_seconds)
        idle_cpu = cpu_seconds(pid) - cpu0
        # A change to a class nobody watches: it should cost the waiters nothing.
        (pool,) = await changer.call("pool.get_all", session)
        cpu0 = cpu_seconds(pid)
        await changer.call("pool.set_name_description", session, pool, "bench")
        await asyncio.sleep(0.5)
        other_cpu = cpu_seconds(pid) - cpu0
        early = sum(r.done() for r in replies)
        cpu0, start = cpu_seconds(pid), time.perf_counter()
        await changer.call("VM.set_name_label", session, vm, "wake-up")
        arrivals = sorted(t - start for t, _ in await asyncio.gather(*replies))
        wake_cpu = cpu_seconds(pid) - cpu0
    finally:
        await changer.close()
        for c in conns:
            await c.close()
    rows = [
        [f"{s.waiters:,} waiters connected and parked", f"{park_s:.2f} s"],
        ["daemon RSS before -> with them parked", f"{rss_before:.1f} -> {rss_parked:.1f} MiB"],
        [f"daemon CPU while they wait {s.idle_seconds:.0f} s",
         f"{idle_cpu:.2f} s ({idle_cpu / s.idle_seconds * 100:.1f} % of a core)"],
        ["daemon CPU for a pool change (unwatched)",
         f"{other_cpu:.2f} s ({other_cpu / s.waiters * 1e6:,.0f} us/waiter)"],
        ["replies before the VM change (want 0)", f"{early}"],
        ["VM change -> replies first / median / all",
         f"{arrivals[0] * 1e3:.0f} / {statistics.median(arrivals) * 1e3:.0f} / {arrivals[-1] * 1e3:.0f} ms"],
        ["daemon CPU for that wake-up", f"{wake_cpu:.2f} s ({wake_cpu / s.waiters * 1e6:,.0f} us/waiter)"],
    ]
    head = (f'3. {s.waiters:,} idle event.from(["vm"]) waiters (timeout {EVENT_TIMEOUT:.0f} s): '
            "a pool change, then a VM change")
    return f"{head}\n{table(['figure', 'value'], rows)}"


# ---- driver -------------------------------------------------------------------------------------
def _pid(daemon: Daemon) -> int:
    assert daemon.proc is not None
    return daemon.proc.pid


async def _login(port: int) -> str:
    conn = await RpcConn.open(port)
    try:
        session: str = await conn.call("session.login_with_password", "root", ROOT_PASSWORD, "2.21", "bench")
        return session
    finally:
        await conn.close()


async def run(daemon: Daemon, tmp: Path, s: Settings, emit: Callable[[str], None]) -> None:
    session = await _login(daemon.port)
    setup = await RpcConn.open(daemon.port)
    vm = await setup.call("VM.create", session, {"name_label": "bench-target"})
    await setup.close()
    emit(await bench_get_record(daemon, session, vm, tmp, s))
    events_text, some_vm, token = await bench_events(daemon, session, s)
    emit(events_text)
    emit(await bench_waiters(daemon, session, some_vm, token, s))


def _stop_daemon(daemon: Daemon) -> None:
    try:
        daemon.stop()
    except subprocess.TimeoutExpired:
        daemon.kill()  # it ignored SIGTERM for 30 s: SIGKILL the one pid we started


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop our servers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run of about 20 s")
    s = QUICK if parser.parse_args().quick else FULL
    signal.signal(signal.SIGTERM, _sigterm)
    # Set before the daemon starts, so it inherits room for the waiters' sockets as well.
    raise_nofile(s.waiters * 2 + 256)

    def emit(text: str) -> None:
        print(f"\n{text}", flush=True)

    started = time.perf_counter()
    print(f"pyxapi API benchmark ({'quick' if s is QUICK else 'full'}): python {sys.version.split()[0]}, "
          f"daemon --hypervisor sim, loopback HTTP/1.1, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at start", flush=True)
    with tempfile.TemporaryDirectory(prefix="pyxapi-bench-") as tmp:
        daemon = new_daemon(Path(tmp))
        try:
            daemon.start()
            asyncio.run(run(daemon, Path(tmp), s, emit))
        except Exception:  # not on SIGTERM or Ctrl-C: the log only helps when something broke
            if daemon.log_path is not None and daemon.log_path.exists():
                tail = daemon.log_path.read_text(errors="replace").splitlines()[-30:]
                print("daemon log (last lines):\n" + "\n".join(tail), file=sys.stderr)
            raise
        finally:
            _stop_daemon(daemon)
    print(f"\ndone in {time.perf_counter() - started:.0f} s (load average {os.getloadavg()[0]:.2f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
