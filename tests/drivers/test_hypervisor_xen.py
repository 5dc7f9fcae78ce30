"""The hypervisor contract suite on real Xen: run inside dom0 of the Xen test host.

The session's Xen test host (tests/xenhost) is booted once; pytest then runs
tests/drivers/test_hypervisor_contract.py in dom0 for each guest type (PV, PVH, HVM: its xen,
xen-pvh and xen-hvm parameters), against libvirt's libxl driver and the Xen flavour of the test
guest. Its output is shown here and any failure in there fails this test. Without QEMU, root or
debootstrap it fails, never skips.
"""

from __future__ import annotations

import re

import pytest

from tests.xenhost.fixtures import xen_host  # noqa: F401 - the shared session fixture
from tests.xenhost.host import XenHost

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]

CONTRACT_TIMEOUT = 2400.0  # ~20 tests, each booting guests under nested TCG

# Per guest type: the contract tests to run (-k) and how many must pass. PV runs the whole suite.
# PVH and HVM run what depends on the guest type (booting, consoles, disk and NIC backends, saving
# and restoring memory with the vCPUs it had, re-adoption); the rest (balloon control, kill and
# crash reporting, refusals) goes through the same driver code whatever the type, and the suite
# would otherwise take most of make test's time budget under nested TCG. HVM is the slowest (every
# device access goes through the device model): it skips suspend/resume and reboot, and adds its
# CD-ROM drive.
PVH_TESTS = (
    "protocol or start_runs or pause_unpause or stats_move or disk_hotplug or live_disk or nic_hotplug"
    " or vcpu_hotplug or suspend_resume_keeps or (reboot_in_place and clean) or adopt"
)
HVM_TESTS = "protocol or start_runs or pause_unpause or stats_move or disk_hotplug or cdrom or nic_hotplug or adopt"
KINDS = [
    pytest.param("xen", "xen", 20, id="pv"),
    pytest.param("xen-pvh", f"xen-pvh and ({PVH_TESTS})", 12, id="pvh"),
    pytest.param("xen-hvm", f"xen-hvm and ({HVM_TESTS})", 9, id="hvm"),
]


@pytest.mark.parametrize(("kind", "selection", "at_least"), KINDS)
def test_contract_suite_runs_on_xen_in_dom0(xen_host: XenHost, kind: str, selection: str, at_least: int) -> None:  # noqa: F811
    facts = xen_host.run("cat /proc/xen/capabilities; xl info | grep -E '^(xen_version|xen_caps)'", timeout=60)
    assert facts.rc == 0 and "control_d" in facts.out, facts.out
    res = xen_host.run(
        f"cd /opt/pyxapi && PYXAPI_CONTRACT_XEN={kind} PYTHONPATH=/opt/pyxapi/src:/opt/pyxapi/lib:/opt/pyxapi "
        "PYTHONDONTWRITEBYTECODE=1 python3 -m pytest -q -p no:cacheprovider -p tests.xenhost.plugin -rA "
        f"--basetemp=/var/tmp/pyxapi-contract-{kind} "  # on disk: dom0's /tmp is a small tmpfs, suspend images are big
        f"tests/drivers/test_hypervisor_contract.py -k '{selection}' 2>&1",
        timeout=CONTRACT_TIMEOUT,
    )
    print(res.out)
    summary = res.out.strip().splitlines()[-1] if res.out.strip() else ""
    assert res.rc == 0, f"contract suite on Xen ({kind}) failed (rc {res.rc}): {summary}\n{res.out[-8000:]}"
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= at_least, summary  # every selected case ran, none skipped
    assert "skipped" not in summary and "failed" not in summary, summary
    # No domain left behind (a zombie held by its device model, a guest a test forgot).
    left = xen_host.run("xl list | awk 'NR > 2 {print $1}'", timeout=60)
    assert left.out.strip() == "", left.out
