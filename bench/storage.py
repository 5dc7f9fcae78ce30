"""Storage benchmark: VDI.clone time against disk size, disk import/export throughput through
pyxapi's HTTP handlers against plain `qemu-img convert` of the same image, and VBD hot-plug latency
into a running test guest.

    .venv/bin/python bench/storage.py [--quick]

Everything runs against one real daemon (QEMU hypervisor, the default file SR of qcow2 images) and
every figure is measured in this run. Clones: VDIs of 1, 20 and 2048 GiB holding the same 16 MiB of
data, each cloned several times (the median is shown); an O(1) clone takes the same time whatever
the size. Throughput: one incompressible image per wire format, pushed with PUT /import_raw_vdi
(sendfile from the client) and pulled with GET /export_raw_vdi (written to a file, as a client
would), each next to the `qemu-img convert` doing the same conversion between the same files;
sides alternate (ABAB) so machine drift hits both, and MB/s counts the disk's virtual size on both.
Hot-plug: VBD.plug of a 64 MiB disk into a booted guest, timed to the call's return and to the
guest's kernel showing the device (polled through the guest agent, so that figure is an upper
bound), then unplugged again.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: make `bench` and the tests' harness importable

from tests.server_harness import ROOT_PASSWORD, Daemon  # noqa: E402

from bench._common import RpcConn, table  # noqa: E402
from bench._daemon import run_on_qemu_daemon  # noqa: E402
from pyxapi.drivers.hypervisor.qga import qga_call  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
QEMU_FORMAT = {"raw": "raw", "qcow2": "qcow2", "vhd": "vpc"}
CONVERT_OPTIONS = {"vhd": ["-o", "subformat=dynamic,force_size=on"], "qcow2": ["-o", "compat=1.1"], "raw": []}
TRANSFER_TIMEOUT = 600.0
AGENT_TIMEOUT = 120.0
GUEST_POLL = 0.02
CLONE_SIZES_GIB = (1, 20, 2048)


@dataclass(frozen=True, slots=True)
class Settings:
    image_mib: int  # the throughput image's size
    rounds: int  # ABAB rounds per throughput figure
    clones: int  # clones per size
    plugs: int  # hot-plug/unplug cycles


FULL = Settings(image_mib=1024, rounds=3, clones=15, plugs=7)
QUICK = Settings(image_mib=256, rounds=2, clones=5, plugs=3)


class BenchError(RuntimeError):
    pass


# ---- the API --------------------------------------------------------------------------------------
@dataclass
class Api:
    daemon: Daemon
    conn: RpcConn
    session: str

    async def __call__(self, method: str, *args: Any) -> Any:
        return await self.conn.call(method, self.session, *args)

    async def wait_task(self, task: str, timeout: float = TRANSFER_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rec = await self("task.get_record", task)
            if rec["status"] not in ("pending", "cancelling"):
                return rec  # type: ignore[no-any-return]
            await asyncio.sleep(0.05)
        raise BenchError(f"task {task} still pending after {timeout}s")

    async def new_vdi(self, sr: str, size: int, name: str) -> str:
        rec = {
            "name_label": name,
            "SR": sr,
            "virtual_size": size,
            "type": "user",
            "sharable": False,
            "read_only": False,
            "other_config": {},
        }
        return str(await self("VDI.create", rec))


# ---- HTTP transfers (blocking, run in threads: the bench's own overhead stays small) ----------------
def _read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchError(f"connection closed before the answer: {data[:200]!r}")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split(" ", 2)[1]), headers, rest


def http_put(port: int, target: str, path: Path) -> str:
    """Upload a file the way xe does (head, wait for 200, then the body with sendfile); returns the
    task ref once the answer has ended (the import is then finished)."""
    size = path.stat().st_size
    with socket.create_connection(("127.0.0.1", port), timeout=TRANSFER_TIMEOUT) as sock:
        sock.sendall(f"PUT {target} HTTP/1.0\r\nContent-Length: {size}\r\n\r\n".encode())
        status, headers, _ = _read_head(sock)
        if status != 200:
            raise BenchError(f"PUT {target}: HTTP {status}")
        with open(path, "rb") as f:
            sock.sendfile(f)
        while sock.recv(65536):
            pass
    return headers["task-id"]


def http_get(port: int, target: str, dest: Path) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=TRANSFER_TIMEOUT) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        status, headers, rest = _read_head(sock)
        if status != 200:
            raise BenchError(f"GET {target}: HTTP {status}")
        length = int(headers["content-length"])
        buf = bytearray(4 * MiB)
        view = memoryview(buf)
        got = len(rest)
        with open(dest, "wb") as out:
            out.write(rest)
            while got < length:
                n = sock.recv_into(view)
                if not n:
                    raise BenchError(f"export cut short at {got} of {length} bytes")
                out.write(view[:n])
                got += n
    return headers["task-id"]


def qemu_img(*args: str) -> None:
    res = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=TRANSFER_TIMEOUT, check=False)
    if res.returncode != 0:
        raise BenchError(f"qemu-img {' '.join(args)}: {res.stderr.strip()}")


def convert(src: Path, src_fmt: str, dst: Path, dst_fmt: str) -> None:
    qemu_img(
        "convert", "-f", QEMU_FORMAT[src_fmt], "-O", QEMU_FORMAT[dst_fmt], *CONVERT_OPTIONS[dst_fmt], str(src), str(dst)
    )


def drop(path: Path) -> None:
    path.unlink(missing_ok=True)


# ---- 1. clones --------------------------------------------------------------------------------------
async def clone_times(api: Api, sr: str, work: Path, s: Settings) -> list[list[str]]:
    """Each size cloned in turn, round after round, so the machine's drift hits all sizes alike."""
    seed = work / "seed.qcow2"
    sources = {}
    for gib in CLONE_SIZES_GIB:
        qemu_img("create", "-q", "-f", "qcow2", str(seed), str(gib * GiB))
        res = subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", "write -P 0x6b 0 16M", str(seed)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if res.returncode != 0:
            raise BenchError(res.stderr)
        vdi = await api.new_vdi(sr, gib * GiB, f"clone source {gib} GiB")
        target = f"/import_raw_vdi?session_id={api.session}&vdi={vdi}&format=qcow2"
        rec = await api.wait_task(await asyncio.to_thread(http_put, api.daemon.port, target, seed))
        if rec["status"] != "success":
            raise BenchError(f"seeding the {gib} GiB disk failed: {rec['error_info']}")
        sources[gib] = vdi
        drop(seed)
    times: dict[int, list[float]] = {gib: [] for gib in CLONE_SIZES_GIB}
    clones: dict[int, list[str]] = {gib: [] for gib in CLONE_SIZES_GIB}
    for _ in range(s.clones):
        for gib, vdi in sources.items():
            t = time.perf_counter()
            clones[gib].append(await api("VDI.clone", vdi, {}))
            times[gib].append(time.perf_counter() - t)
    rows = []
    for gib, vdi in sources.items():
        used = await api("VDI.get_physical_utilisation", clones[gib][-1])
        for c in clones[gib]:
            await api("VDI.destroy", c)
        await api("VDI.destroy", vdi)
        ms = [t * 1000 for t in times[gib]]
        rows.append(
            [f"{gib} GiB", f"{statistics.median(ms):.1f}", f"{min(ms):.1f}", f"{max(ms):.1f}", f"{int(used) / MiB:.2f}"]
        )
    return rows


# ---- 2. throughput ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Timing:
    done: float  # seconds until the transfer (or convert) finished
    durable: float  # ... and its output file was fsync'ed


@dataclass
class Pair:
    pyxapi: list[Timing]
    qemu: list[Timing]

    def row(self, name: str, size: int) -> list[str]:
        cells = [name]
        for pick in (lambda t: t.done, lambda t: t.durable):
            p = statistics.median(pick(t) for t in self.pyxapi)
            q = statistics.median(pick(t) for t in self.qemu)
            cells += [f"{size / MiB / p:.0f}", f"{size / MiB / q:.0f}", f"{q / p:.2f}"]
        return cells


def baseline(src: Path, src_fmt: str, dst: Path, dst_fmt: str) -> Path:
    convert(src, src_fmt, dst, dst_fmt)
    return dst


def upload(port: int, target: str, source: Path, vdi_file: Path, tasks: list[str]) -> Path:
    tasks.append(http_put(port, target, source))  # the answer ends once the import is finished
    return vdi_file


def download(port: int, target: str, out: Path, tasks: list[str]) -> Path:
    tasks.append(http_get(port, target, out))
    return out


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def measure(work: Callable[..., Path], *args: Any) -> Timing:
    """Time `work(*args)` (which returns the file it wrote), then until that file is on disk. The
    page cache is flushed first, untimed, so no side inherits the other's write-back."""
    os.sync()
    t = time.perf_counter()
    out = work(*args)
    done = time.perf_counter() - t
    fsync_file(out)
    return Timing(done, time.perf_counter() - t)


async def throughput(api: Api, sr: str, sr_dir: Path, work: Path, s: Settings) -> list[list[str]]:
    size = s.image_mib * MiB
    raw = work / "image.raw"
    with open(raw, "wb") as f:  # incompressible and without zero blocks: every byte must move
        for _ in range(s.image_mib):
            f.write(os.urandom(MiB))
    rows = []
    port, session = api.daemon.port, api.session
    for fmt in ("raw", "qcow2", "vhd"):
        source = raw if fmt == "raw" else work / f"image.{fmt}"
        if fmt != "raw":
            convert(raw, "raw", source, fmt)
        vdi = await api.new_vdi(sr, size, f"bench {fmt}")
        query = f"session_id={session}&vdi={vdi}&format={fmt}"
        imports, exports = Pair([], []), Pair([], [])

        for round_no in range(s.rounds):
            order = ("pyxapi", "qemu") if round_no % 2 == 0 else ("qemu", "pyxapi")
            for side in order:
                vdi_path = sr_dir / await api("VDI.get_location", vdi)
                if side == "qemu":
                    target = work / "b.qcow2"
                    imports.qemu.append(await asyncio.to_thread(measure, baseline, source, fmt, target, "qcow2"))
                    target.unlink()
                    out = work / f"b.{fmt}"
                    exports.qemu.append(await asyncio.to_thread(measure, baseline, vdi_path, "qcow2", out, fmt))
                    out.unlink()
                    continue
                tasks: list[str] = []
                put = f"/import_raw_vdi?{query}"
                imports.pyxapi.append(await asyncio.to_thread(measure, upload, port, put, source, vdi_path, tasks))
                out = work / f"exported.{fmt}"
                get = f"/export_raw_vdi?{query}"
                exports.pyxapi.append(await asyncio.to_thread(measure, download, port, get, out, tasks))
                out.unlink()
                for task in tasks:
                    rec = await api.wait_task(task)
                    if rec["status"] != "success":
                        raise BenchError(f"{rec['name_label']} ({fmt}) failed: {rec['error_info']}")
        rows.append(imports.row(f"import {fmt}", size))
        rows.append(exports.row(f"export {fmt}", size))
        if fmt == "qcow2":  # the VDI now holds the image: copy it whole within the SR
            rows.append((await copies(api, vdi, sr, sr_dir, work, s)).row("VDI.copy", size))
        await api("VDI.destroy", vdi)
        if fmt != "raw":
            drop(source)
    drop(raw)
    return rows


async def copies(api: Api, vdi: str, sr: str, sr_dir: Path, work: Path, s: Settings) -> Pair:
    """VDI.copy into the same SR (a full, flattened qcow2 copy) against `qemu-img convert` of the VDI's
    file to a new qcow2, ABAB; "done" is the call's return, "durable" adds an fsync of the new file."""
    pair = Pair([], [])
    source = sr_dir / await api("VDI.get_location", vdi)
    for round_no in range(s.rounds):
        order = ("pyxapi", "qemu") if round_no % 2 == 0 else ("qemu", "pyxapi")
        for side in order:
            if side == "qemu":
                target = work / "copy.qcow2"
                pair.qemu.append(await asyncio.to_thread(measure, baseline, source, "qcow2", target, "qcow2"))
                target.unlink()
                continue
            await asyncio.to_thread(os.sync)
            t = time.perf_counter()
            copy = await api("VDI.copy", vdi, sr)
            done = time.perf_counter() - t
            await asyncio.to_thread(fsync_file, sr_dir / await api("VDI.get_location", copy))
            pair.pyxapi.append(Timing(done, time.perf_counter() - t))
            await api("VDI.destroy", copy)
    return pair


# ---- 3. hot-plug ------------------------------------------------------------------------------------
async def guest_sh(sock: Path, uuid: str, command: str) -> str:
    started = await qga_call(
        sock, uuid, "guest-exec", {"path": "/bin/sh", "arg": ["-c", command], "capture-output": True}
    )
    while True:
        status = await qga_call(sock, uuid, "guest-exec-status", {"pid": started["pid"]})
        if status.get("exited"):
            return base64.b64decode(status.get("out-data", "")).decode(errors="replace")
        await asyncio.sleep(0.005)


async def guest_disks(sock: Path, uuid: str) -> set[str]:
    out = await guest_sh(sock, uuid, "ls /sys/block")
    return {name for name in out.split() if name.startswith("vd")}


async def wait_guest_disks(sock: Path, uuid: str, want: set[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await guest_disks(sock, uuid) == want:
            return
        await asyncio.sleep(GUEST_POLL)
    raise BenchError(f"the guest's disks never became {sorted(want)} (now {sorted(await guest_disks(sock, uuid))})")


async def hotplug(api: Api, sr: str, s: Settings) -> list[list[str]]:
    template = None
    for ref in await api("VM.get_by_name_label", "pyxapi test guest"):
        if await api("VM.get_is_a_template", ref):
            template = ref
    if template is None:
        raise BenchError("no 'pyxapi test guest' template")
    vm = await api("VM.clone", template, "storage bench guest")
    await api("VM.provision", vm)
    await api("VM.start", vm, False, False)
    uuid = await api("VM.get_uuid", vm)
    sock = api.daemon.data_dir / "run" / "qemu" / uuid / "qga"
    deadline = time.monotonic() + AGENT_TIMEOUT
    while True:  # the guest agent answers once the guest has booted
        try:
            await guest_sh(sock, uuid, "true")
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    vdi = await api.new_vdi(sr, 64 * MiB, "hot-plug bench")
    vbd = await api(
        "VBD.create",
        {
            "VM": vm,
            "VDI": vdi,
            "userdevice": "1",
            "bootable": False,
            "mode": "RW",
            "type": "Disk",
            "unpluggable": True,
            "empty": False,
            "other_config": {},
            "qos_algorithm_type": "",
            "qos_algorithm_params": {},
        },
    )
    plug_call, plug_seen, unplug_call, unplug_gone = [], [], [], []
    before = await guest_disks(sock, uuid)
    try:
        for _ in range(s.plugs):
            t = time.perf_counter()
            await api("VBD.plug", vbd)
            plug_call.append(time.perf_counter() - t)
            if len(await guest_disks(sock, uuid)) <= len(before):  # else seen at once
                deadline = time.monotonic() + 60.0
                while len(await guest_disks(sock, uuid)) <= len(before):
                    if time.monotonic() > deadline:
                        raise BenchError("the guest never saw the hot-plugged disk")
                    await asyncio.sleep(GUEST_POLL)
            plug_seen.append(time.perf_counter() - t)
            t = time.perf_counter()
            await api("VBD.unplug", vbd)
            unplug_call.append(time.perf_counter() - t)
            await wait_guest_disks(sock, uuid, before)
            unplug_gone.append(time.perf_counter() - t)
    finally:
        with contextlib.suppress(Exception):
            await api("VM.hard_shutdown", vm)
    await api("VBD.destroy", vbd)
    await api("VDI.destroy", vdi)

    def row(name: str, values: list[float]) -> list[str]:
        return [
            name,
            f"{statistics.median(values) * 1000:.0f}",
            f"{min(values) * 1000:.0f}",
            f"{max(values) * 1000:.0f}",
        ]

    return [
        row("VBD.plug returns", plug_call),
        row("guest kernel shows the disk", plug_seen),
        row("VBD.unplug returns", unplug_call),
        row("guest kernel drops the disk", unplug_gone),
    ]


# ---- running it ----------------------------------------------------------------------------------------
async def run(daemon: Daemon, work: Path, s: Settings, emit: Callable[[str], None]) -> None:
    conn = await RpcConn.open(daemon.port)
    try:
        session = await conn.call("session.login_with_password", "root", ROOT_PASSWORD, "2.23", "storage-bench")
        api = Api(daemon, conn, session)
        sr = await api("pool.get_default_SR", (await api("pool.get_all"))[0])
        [pbd] = await api("SR.get_PBDs", sr)
        sr_dir = Path((await api("PBD.get_device_config", pbd))["location"])
        emit("\n1. VDI.clone on the file SR (qcow2), each disk holding 16 MiB of data")
        rows = await clone_times(api, sr, work, s)
        emit(table(["disk", "median ms", "min ms", "max ms", "clone's own MiB"], rows))
        ratio = float(rows[-1][1]) / float(rows[0][1])
        emit(f"clone of 2048 GiB / clone of 1 GiB: {ratio:.2f}x (O(1): about 1)")
        emit(
            f"\n2. Throughput, {s.image_mib} MiB incompressible image, median of {s.rounds} (ABAB): "
            "pyxapi over HTTP vs qemu-img convert of the same files"
        )
        rows = await throughput(api, sr, sr_dir, work, s)
        emit(table(["transfer", "pyxapi MB/s", "qemu-img MB/s", "ratio", "durable: pyxapi", "qemu-img", "ratio"], rows))
        emit(
            "   import: PUT (xe-style, sendfile) of the image into a qcow2 VDI, until the task is done;"
            " baseline: qemu-img convert image -> qcow2"
        )
        emit("   export: GET into a client-side file; baseline: qemu-img convert VDI -> the format")
        emit("   VDI.copy: a full copy within the SR, until the call returns; baseline: qemu-img convert VDI -> qcow2")
        emit("   durable: until the written file (the VDI, the client's copy, the convert's output) is fsync'ed")
        emit(f"\n3. VBD hot-plug of a 64 MiB disk into a running test guest, {s.plugs} cycles")
        emit(table(["step", "median ms", "min ms", "max ms"], await hotplug(api, sr, s)))
        emit("   (the guest-side figures are polled through the guest agent: upper bounds)")
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 256 MiB image, fewer rounds")
    s = QUICK if parser.parse_args().quick else FULL
    title = f"pyxapi storage benchmark ({'quick' if s is QUICK else 'full'})"
    return run_on_qemu_daemon(title, "pyxs-", lambda daemon, work, emit: run(daemon, work, s, emit))


if __name__ == "__main__":
    sys.exit(main())
