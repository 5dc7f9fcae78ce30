"""XVA export/import throughput vs `qemu-img convert` + `tar` of the same disk, in the same run.

A daemon (simulated hypervisor, real file SR) holds a VM with one qcow2 disk of SIZE MiB filled with
incompressible data on FILL percent of it (the rest stays sparse, as real disks are). Measured:

  export  GET /export, the whole XVA read by the client        vs  qemu-img convert qcow2 -> raw, then tar cf
  import  PUT /import of that XVA, until the task result comes  vs  tar xf, then qemu-img convert raw -> qcow2

MB/s counts the disk's virtual size per second on both sides; the ratio is pyxapi / baseline
(above 1: pyxapi is faster). Usage: python bench/xva.py [--size MIB] [--fill PERCENT] [--runs N]
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import XenAPI

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.server_harness import ROOT_PASSWORD, new_daemon  # noqa: E402

MiB = 1 << 20


def fill_disk(path: Path, size: int, fill: float, work: Path) -> None:
    """Random data on `fill` of the disk, in 4 MiB runs spread evenly; the rest left unallocated."""
    raw = work / "fill.raw"
    with open(raw, "wb") as f:
        f.truncate(size)
        runs = max(1, int(size * fill) // (4 * MiB))
        stride = size // runs
        for n in range(runs):
            f.seek(n * stride)
            f.write(os.urandom(min(4 * MiB, size - n * stride)))
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True)
    raw.unlink()


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def http_get_to_file(port: int, path: str, dest: Path) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("GET", path)
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    with open(dest, "wb") as f:
        while block := resp.read(1 << 20):
            f.write(block)
    conn.close()


def http_put_file(port: int, path: str, src: Path) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    with open(src, "rb") as f:
        conn.request("PUT", path, body=f, headers={"Content-Length": str(src.stat().st_size)})
        resp = conn.getresponse()
        body = resp.read().decode()
    conn.close()
    assert resp.status == 200, body
    return body


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512, help="disk size in MiB")
    parser.add_argument("--fill", type=int, default=50, help="percent of the disk holding data")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.size * MiB
    root = Path(tempfile.mkdtemp(prefix="pyxbench-xva-"))
    daemon = new_daemon(root)
    daemon.start()
    try:
        s = XenAPI.Session(daemon.url)
        s.xenapi.login_with_password("root", ROOT_PASSWORD, "2.23", "bench-xva")
        x, session = s.xenapi, s._session
        sr = x.pool.get_default_SR(x.pool.get_all()[0])
        vm = x.VM.create(
            {
                "name_label": "bench",
                "memory_static_max": str(128 * MiB),
                "memory_dynamic_max": str(128 * MiB),
                "memory_dynamic_min": str(128 * MiB),
                "memory_static_min": str(16 * MiB),
                "VCPUs_max": "1",
                "VCPUs_at_startup": "1",
            }
        )
        vdi = x.VDI.create(
            {
                "name_label": "bench disk",
                "name_description": "",
                "SR": sr,
                "virtual_size": str(size),
                "type": "user",
                "sharable": False,
                "read_only": False,
                "other_config": {},
                "xenstore_data": {},
                "sm_config": {},
                "tags": [],
            }
        )
        x.VBD.create(
            {
                "VM": vm,
                "VDI": vdi,
                "userdevice": "0",
                "bootable": True,
                "mode": "RW",
                "type": "Disk",
                "unpluggable": True,
                "empty": False,
                "other_config": {},
                "qos_algorithm_type": "",
                "qos_algorithm_params": {},
            }
        )
        image = root / "data" / "sr" / x.SR.get_uuid(sr) / x.VDI.get_location(vdi)
        work = root / "work"
        work.mkdir()
        fill_disk(image, size, args.fill / 100, work)
        xva = work / "bench.xva"
        rows: dict[str, list[float]] = {k: [] for k in ("export", "import", "base_export", "base_import")}
        raw, tarball, back = work / "disk.raw", work / "disk.tar", work / "back.qcow2"
        result: list[str] = []

        def export() -> None:
            http_get_to_file(daemon.port, f"/export?ref={vm}&session_id={session}", xva)

        def import_() -> None:
            result.append(http_put_file(daemon.port, f"/import?session_id={session}", xva))

        def base_export() -> None:
            subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(raw)], check=True)
            subprocess.run(["tar", "-C", str(work), "-S", "-cf", str(tarball), raw.name], check=True)

        def base_import() -> None:
            raw.unlink()
            subprocess.run(["tar", "-C", str(work), "-xf", str(tarball)], check=True)
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(back)], check=True)

        for _ in range(args.runs):
            rows["export"].append(timed(export))
            rows["import"].append(timed(import_))
            new_vm = result.pop().split("<value>")[-1].split("</value>")[0]
            disks = [x.VBD.get_VDI(b) for b in x.VM.get_VBDs(new_vm)]
            x.VM.destroy(new_vm)
            for disk in disks:
                x.VDI.destroy(disk)
            rows["base_export"].append(timed(base_export))
            rows["base_import"].append(timed(base_import))
            for p in (raw, tarball, back):
                p.unlink(missing_ok=True)
        xva_size = xva.stat().st_size
        mbs = {k: size / MiB / statistics.median(v) for k, v in rows.items()}
        print(
            f"XVA throughput: disk {args.size} MiB ({args.fill}% data), XVA {xva_size / MiB:.0f} MiB, "
            f"median of {args.runs}, load average {os.getloadavg()[0]:.1f}"
        )
        print("| direction | pyxapi MB/s | qemu-img + tar MB/s | ratio |")
        print("|---|---|---|---|")
        for direction in ("export", "import"):
            ours, base = mbs[direction], mbs[f"base_{direction}"]
            print(f"| {direction} | {ours:,.0f} | {base:,.0f} | {ours / base:.2f}x |")
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
