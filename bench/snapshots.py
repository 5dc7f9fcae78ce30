"""Snapshot benchmark: VM.snapshot / VM.clone time against disk size, checkpoints, and a fleet of clones.

    .venv/bin/python bench/snapshots.py [--quick] [--only SECTION ...]

One real daemon (QEMU under TCG here, the default file SR of qcow2 images); every figure comes from
this run, next to a baseline measured in the same run.

sizes       For disks of 1, 20 and 2048 GiB (virtual) holding the same 16 MiB of data: VM.snapshot of
            the halted VM, VM.clone of it, and VM.snapshot while its guest runs (live: the disk is
            switched to its new overlay over QMP). Baseline: the storage work an O(1) snapshot needs
            when done with the tool, two `qemu-img create` of an overlay. O(1) means the same time for
            2048 GiB as for 1 GiB.
checkpoint  VM.checkpoint of the running 256 MiB test guest (memory image + disk snapshots, the guest
            continues), then VM.revert to it and VM.resume; baseline: VM.suspend + VM.resume of the same
            guest, which write and read the same memory image.
fleet       VM.clone x10 from a template with a 20 GiB disk, in total; baseline: the 20 overlays those
            clones need, made with `qemu-img create`.

Each section is a function in SECTIONS taking the Bench; another one (XVA export/import throughput
next to qemu-img convert + tar) plugs in the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: make `bench` and the tests' harness importable

from tests.server_harness import ROOT_PASSWORD, Daemon  # noqa: E402

from bench._common import RpcConn, table  # noqa: E402
from bench._daemon import run_on_qemu_daemon  # noqa: E402
from pyxapi.drivers.hypervisor.base import GuestAgentUnavailable  # noqa: E402
from pyxapi.drivers.hypervisor.qga import qga_call  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
SIZES_GIB = (1, 20, 2048)
TASK_TIMEOUT = 600.0
AGENT_TIMEOUT = 180.0


@dataclass(frozen=True, slots=True)
class Settings:
    rounds: int  # timed calls per figure (the median is shown)


FULL = Settings(rounds=7)
QUICK = Settings(rounds=3)


class BenchError(RuntimeError):
    pass


@dataclass
class Bench:
    """What every section gets: the API, the default SR and its directory, a work dir, output."""

    daemon: Daemon
    conn: RpcConn
    session: str
    settings: Settings
    work: Path
    emit: Callable[[str], None]
    sr: str = ""
    sr_dir: Path = field(default_factory=Path)

    async def __call__(self, method: str, *args: Any) -> Any:
        return await self.conn.call(method, self.session, *args)

    async def timed(self, method: str, *args: Any) -> tuple[float, Any]:
        t = time.perf_counter()
        result = await self(method, *args)
        return time.perf_counter() - t, result

    async def wait_task(self, task: str) -> Any:
        deadline = time.monotonic() + TASK_TIMEOUT
        while time.monotonic() < deadline:
            rec = await self("task.get_record", task)
            if rec["status"] == "success":
                return rec
            if rec["status"] != "pending":
                raise BenchError(f"task failed: {rec['error_info']}")
            await asyncio.sleep(0.05)
        raise BenchError(f"task {task} still pending after {TASK_TIMEOUT}s")

    async def guest(self, name: str) -> str:
        """A halted copy of the built-in test guest (no disks yet)."""
        for template in await self("VM.get_by_name_label", "pyxapi test guest"):
            if await self("VM.get_is_a_template", template):
                break
        else:
            raise BenchError("no 'pyxapi test guest' template")
        vm = str(await self("VM.clone", template, name))
        await self("VM.provision", vm)
        return vm

    async def data_disk(self, vm: str, size: int, data_mib: int = 16) -> str:
        vdi = await self(
            "VDI.create",
            {
                "name_label": f"data {size // GiB} GiB",
                "SR": self.sr,
                "virtual_size": size,
                "type": "user",
                "sharable": False,
                "read_only": False,
                "other_config": {},
            },
        )
        location = await self("VDI.get_location", vdi)
        run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x6b 0 {data_mib}M", str(self.sr_dir / location)])
        await self(
            "VBD.create",
            {
                "VM": vm,
                "VDI": vdi,
                "userdevice": "1",
                "bootable": False,
                "mode": "RW",
                "type": "Disk",
                "empty": False,
                "other_config": {},
            },
        )
        return str(vdi)

    async def start(self, vm: str) -> str:
        await self.wait_task(await self("Async.VM.start", vm, False, False))
        uuid = str(await self("VM.get_uuid", vm))
        await self.agent_ready(uuid)
        return uuid

    async def agent_ready(self, uuid: str) -> None:
        sock = self.daemon.data_dir / "run" / "qemu" / uuid / "qga"
        deadline = time.monotonic() + AGENT_TIMEOUT
        while True:
            try:
                await qga_call(sock, uuid, "guest-ping", timeout=5)
                return
            except GuestAgentUnavailable:
                if time.monotonic() > deadline:
                    raise BenchError(f"the guest agent of {uuid} never answered") from None
                await asyncio.sleep(0.5)

    async def forget(self, vms: list[str]) -> None:
        """Destroy VMs (snapshots, clones) with their disks."""
        for vm in vms:
            if await self("VM.get_power_state", vm) != "Halted":
                await self("VM.hard_shutdown", vm)
            vdis = [
                await self("VBD.get_VDI", b)
                for b in await self("VM.get_VBDs", vm)
                if await self("VBD.get_type", b) == "Disk"
            ]
            suspend = await self("VM.get_suspend_VDI", vm)
            await self("VM.destroy", vm)
            for vdi in [*vdis, *([suspend] if suspend != "OpaqueRef:NULL" else [])]:
                await self("VDI.destroy", vdi)


def run(argv: list[str]) -> None:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=TASK_TIMEOUT, check=False)
    if res.returncode != 0:
        raise BenchError(f"{' '.join(argv)}: {res.stderr.strip()}")


def overlay_baseline(work: Path, size: int, rounds: int, overlays: int = 2) -> list[float]:
    """The tool doing an O(1) snapshot's storage work: `overlays` qemu-img create of a linked overlay."""
    times = []
    base = f"{uuidlib.uuid4()}.base.qcow2"
    for _ in range(rounds):
        t = time.perf_counter()
        for i in range(overlays):
            run(
                [
                    "qemu-img",
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-o",
                    "compat=1.1",
                    "-u",
                    "-b",
                    base,
                    "-F",
                    "qcow2",
                    str(work / f"overlay-{i}.qcow2"),
                    str(size),
                ]
            )
        times.append(time.perf_counter() - t)
        for i in range(overlays):
            (work / f"overlay-{i}.qcow2").unlink()
    return times


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f}"


# ---- sections ---------------------------------------------------------------------------------------
async def sizes(b: Bench) -> None:
    n = b.settings.rounds
    b.emit(f"\nsizes: VM.snapshot and VM.clone against disk size (16 MiB of data each), median of {n}")
    rows = []
    medians: dict[tuple[int, str], float] = {}
    for gib in SIZES_GIB:
        vm = await b.guest(f"bench {gib} GiB")
        await b.data_disk(vm, gib * GiB)
        made: list[str] = []
        halted, clones, live = [], [], []
        for i in range(n):
            took, snap = await b.timed("VM.snapshot", vm, f"halted {i}", [])
            halted.append(took)
            made.append(snap)
        for i in range(n):
            took, clone = await b.timed("VM.clone", vm, f"clone {i}")
            clones.append(took)
            made.append(clone)
        await b.start(vm)
        for i in range(n):
            took, snap = await b.timed("VM.snapshot", vm, f"live {i}", [])
            live.append(took)
            made.append(snap)
        await b("VM.hard_shutdown", vm)
        base = overlay_baseline(b.work, gib * GiB, n)
        own = 0
        for vbd in await b("VM.get_VBDs", made[0]):
            own = max(own, await b("VDI.get_physical_utilisation", await b("VBD.get_VDI", vbd)))
        for name, values in (("snapshot, halted", halted), ("clone, halted", clones), ("snapshot, running", live)):
            medians[gib, name] = statistics.median(values)
            ratio = statistics.median(values) / statistics.median(base)
            rows.append([f"{gib} GiB: VM.{name}", ms(values), ms(base), f"{ratio:.2f}x"])
        rows.append([f"{gib} GiB: the snapshot's own disk", f"{own / MiB:.2f} MiB", "", ""])
        await b.forget([*made, vm])
    b.emit(table(["disk", "pyxapi ms", "2x qemu-img create ms", "ratio"], rows))
    for name in ("snapshot, halted", "clone, halted", "snapshot, running"):
        ratio = medians[SIZES_GIB[-1], name] / medians[SIZES_GIB[0], name]
        b.emit(f"   VM.{name}: {SIZES_GIB[-1]} GiB / {SIZES_GIB[0]} GiB = {ratio:.2f}x (O(1): about 1)")


async def checkpoint(b: Bench) -> None:
    n = max(3, b.settings.rounds // 2)
    b.emit(f"\ncheckpoint: the running 256 MiB test guest with a 20 GiB data disk, median of {n}")
    vm = await b.guest("bench checkpoint")
    await b.data_disk(vm, 20 * GiB)
    await b.start(vm)
    made: list[str] = []
    cps, suspends, resumes, reverts, revert_resumes = [], [], [], [], []
    for i in range(n):
        t = time.perf_counter()
        cp = (await b.wait_task(await b("Async.VM.checkpoint", vm, f"cp {i}")))["result"]
        cps.append(time.perf_counter() - t)
        made.append(str(cp).replace("<value>", "").replace("</value>", ""))
    for _ in range(n):
        suspends.append((await b.timed("VM.suspend", vm))[0])
        resumes.append((await b.timed("VM.resume", vm, False, False))[0])
    for cp in made[:n]:
        reverts.append((await b.timed("VM.revert", cp))[0])
        revert_resumes.append((await b.timed("VM.resume", vm, False, False))[0])
    await b.agent_ready(str(await b("VM.get_uuid", vm)))  # the reverted guest really runs
    ratio = statistics.median(cps) / statistics.median(suspends)
    rows = [
        ["VM.checkpoint (guest continues)", ms(cps), ms(suspends), f"{ratio:.2f}x"],
        [
            "VM.revert to it + VM.resume",
            ms([a + c for a, c in zip(reverts, revert_resumes, strict=True)]),
            ms([a + c for a, c in zip(suspends, resumes, strict=True)]),
            "",
        ],
        ["   of which VM.revert", ms(reverts), "", ""],
        ["   of which VM.resume", ms(revert_resumes), ms(resumes), ""],
    ]
    b.emit(table(["step", "pyxapi ms", "VM.suspend (+resume) ms", "ratio"], rows))
    await b.forget([*made, vm])


async def fleet(b: Bench) -> None:
    b.emit("\nfleet: VM.clone x10 from a template with a 20 GiB disk")
    template = await b.guest("bench fleet")
    await b.data_disk(template, 20 * GiB)
    await b("VM.set_is_a_template", template, True)
    totals, base = [], []
    made: list[str] = []
    for _ in range(b.settings.rounds):
        t = time.perf_counter()
        made += [await b("VM.clone", template, f"fleet {i}") for i in range(10)]
        totals.append(time.perf_counter() - t)
        base.append(sum(overlay_baseline(b.work, 20 * GiB, 1, overlays=20)))
        await b.forget(made)
        made.clear()
    ratio = statistics.median(totals) / statistics.median(base)
    b.emit(
        table(
            ["10 clones", "pyxapi ms", "20x qemu-img create ms", "ratio"],
            [["VM.clone x10, total", ms(totals), ms(base), f"{ratio:.2f}x"]],
        )
    )
    await b("VM.set_is_a_template", template, False)
    await b.forget([template])


SECTIONS: dict[str, Callable[[Bench], Awaitable[None]]] = {"sizes": sizes, "checkpoint": checkpoint, "fleet": fleet}


# ---- running it --------------------------------------------------------------------------------------
async def run_sections(daemon: Daemon, work: Path, s: Settings, only: list[str], emit: Callable[[str], None]) -> None:
    conn = await RpcConn.open(daemon.port)
    try:
        session = await conn.call("session.login_with_password", "root", ROOT_PASSWORD, "2.23", "snapshot-bench")
        b = Bench(daemon, conn, session, s, work, emit)
        b.sr = await b("pool.get_default_SR", (await b("pool.get_all"))[0])
        [pbd] = await b("SR.get_PBDs", b.sr)
        b.sr_dir = Path((await b("PBD.get_device_config", pbd))["location"])
        for name in only or list(SECTIONS):
            await SECTIONS[name](b)
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=[], help="run these sections only")
    args = parser.parse_args()
    s = QUICK if args.quick else FULL
    title = f"pyxapi snapshot benchmark ({'quick' if s is QUICK else 'full'})"
    return run_on_qemu_daemon(title, "pyxn-", lambda daemon, work, emit: run_sections(daemon, work, s, args.only, emit))


if __name__ == "__main__":
    raise SystemExit(main())
