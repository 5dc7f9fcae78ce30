"""The Xen side of bench/vm_start.py, run inside dom0 of the Xen test host (by bench/vm_start.py --xen).

Times, in the same dom0 and alternating, the Xen flavour of the test guest started two ways:
* pyxapi: XenAPI VM.start (a PV VM cloned from the "pyxapi test guest" template), and
* xl: `xl create` of the same kernel, initrd, command line, memory, vCPUs and VNC framebuffer.
"Ready" is the guest's `GUEST READY` line in its console log, which xenconsoled writes for both.
Prints one JSON object: the per-run milliseconds of both sides.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import XenAPI

LOGS = Path("/var/log/xen/console")
GUEST = Path("/var/lib/pyxapi/images/test-guest")
ARGS = "console=hvc0 quiet"
READY_TIMEOUT = 600.0


def wait_ready(log: Path, t0: float) -> float:
    deadline = t0 + READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if b"GUEST READY" in log.read_bytes():
                return time.monotonic()
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"no GUEST READY in {log} within {READY_TIMEOUT:g}s")


def fresh(log: Path) -> None:
    log.unlink(missing_ok=True)  # xenconsoled appends: the next boot starts an empty log


def domain_log(x: object, vm: str) -> Path:
    from pyxapi.drivers.hypervisor.base import DomainSpec
    from pyxapi.drivers.hypervisor.xen.domxml import domain_name

    rec = x.VM.get_record(vm)  # type: ignore[attr-defined]
    spec = DomainSpec(rec["uuid"], rec["name_label"], 1, 1, 1 << 20, 1 << 20)
    return LOGS / f"guest-{domain_name(spec)}.log"


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    s = XenAPI.Session("http://127.0.0.1:8080/")
    s.xenapi.login_with_password("root", os.environ["PYXAPI_PASSWORD"], "2.23", "bench-xen")
    x = s.xenapi
    template = next(t for t in x.VM.get_by_name_label("pyxapi test guest") if x.VM.get_is_a_template(t))
    vm = x.VM.clone(template, "bench-xen")
    x.VM.set_domain_type(vm, "pv")
    x.VM.set_PV_args(vm, ARGS)
    x.VM.provision(vm)
    memory = int(x.VM.get_memory_static_max(vm)) >> 20
    api_log = domain_log(x, vm)
    cfg = Path("/tmp/bench-xl.cfg")
    cfg.write_text(
        f'name = "bench-xl"\ntype = "pv"\nkernel = "{GUEST / "vmlinuz"}"\nramdisk = "{GUEST / "initrd.img"}"\n'
        f'extra = "{ARGS}"\nmemory = {memory}\nvcpus = 1\non_poweroff = "destroy"\non_reboot = "destroy"\n'
        # pyxapi gives every guest a VNC framebuffer where the device model exists: the same here.
        'vfb = ["vnc=1,vnclisten=127.0.0.1"]\n'
    )
    xl_log = LOGS / "guest-bench-xl.log"
    api_ms: list[float] = []
    xl_ms: list[float] = []
    try:
        for _ in range(runs):
            fresh(api_log)
            t0 = time.monotonic()
            x.VM.start(vm, False, False)
            api_ms.append((wait_ready(api_log, t0) - t0) * 1000)
            x.VM.hard_shutdown(vm)
            fresh(xl_log)
            t0 = time.monotonic()
            subprocess.run(["xl", "create", "-q", str(cfg)], check=True)
            xl_ms.append((wait_ready(xl_log, t0) - t0) * 1000)
            subprocess.run(["xl", "destroy", "bench-xl"], check=True)
    finally:
        subprocess.run(["xl", "destroy", "bench-xl"], capture_output=True)
        if x.VM.get_power_state(vm) != "Halted":
            x.VM.hard_shutdown(vm)
        x.VM.destroy(vm)
    print(json.dumps({"pyxapi_ms": api_ms, "xl_ms": xl_ms, "memory_mib": memory}))


if __name__ == "__main__":
    main()
