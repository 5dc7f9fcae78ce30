"""The `xen` column of bench/vm_start.py: boots the Xen test host (tests/xenhost) and, inside its
dom0, times VM.start → guest ready through pyxapi against `xl create` of the same guest
(bench/xen_dom0.py), in the same run, alternating."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

from tests.xenhost import host as xenhost

from bench._common import table


def run_xen(emit: Callable[[str], None], runs: int) -> int:
    t0 = time.monotonic()
    h = xenhost.acquire()
    try:
        emit(f"Xen test host up in {h.boot_seconds:.0f} s (nested Xen 4.17 under QEMU TCG, PV guests)")
        res = h.run(
            f"cd /opt/pyxapi && PYTHONPATH=/opt/pyxapi/src:/opt/pyxapi/lib PYXAPI_PASSWORD='{h.password}' "
            f"python3 bench/xen_dom0.py {runs} 2>&1",
            timeout=3600,
        )
        if res.rc != 0:
            emit(f"xen bench failed (rc {res.rc}):\n{res.out[-4000:]}")
            return 1
        data = json.loads(res.out.strip().splitlines()[-1])
    finally:
        xenhost.release()
    api, xl = data["pyxapi_ms"], data["xl_ms"]
    med_api, med_xl = statistics.median(api), statistics.median(xl)
    rows = [
        ["pyxapi VM.start (libvirt libxl)", f"{med_api:,.0f}", f"{min(api):,.0f}", f"{max(api):,.0f}"],
        ["xl create (same guest, same dom0)", f"{med_xl:,.0f}", f"{min(xl):,.0f}", f"{max(xl):,.0f}"],
        ["ratio / overhead (medians)", f"{med_api / med_xl:.3f}x", f"{med_api - med_xl:+,.0f} ms", ""],
    ]
    emit(
        f"\nxen: VM start -> GUEST READY on the PV console, {len(api)} runs per side, {data['memory_mib']} MiB PV guest"
    )
    emit(table(["xen", "median ms", "min ms", "max ms"], rows))
    emit(f"(xen part took {time.monotonic() - t0:.0f} s)")
    return 0
