"""The hypervisor contract suite on real Xen: run inside dom0 of the Xen test host.

The session's Xen test host (tests/xenhost) is booted once; pytest then runs
tests/drivers/test_hypervisor_contract.py in dom0 with its `xen` parameter (PYXAPI_CONTRACT_XEN=1),
against libvirt's libxl driver and the Xen flavour of the test guest. Its output is shown here and
any failure in there fails this test. Without QEMU, root or debootstrap it fails, never skips.
"""

from __future__ import annotations

import re

import pytest

from tests.xenhost.fixtures import xen_host  # noqa: F401 - the shared session fixture
from tests.xenhost.host import XenHost

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]

CONTRACT_TIMEOUT = 2400.0  # ~15 tests, each booting PV guests under nested TCG


def test_contract_suite_runs_on_xen_in_dom0(xen_host: XenHost) -> None:  # noqa: F811
    facts = xen_host.run("cat /proc/xen/capabilities; xl info | grep -E '^(xen_version|xen_caps)'", timeout=60)
    assert facts.rc == 0 and "control_d" in facts.out, facts.out
    res = xen_host.run(
        "cd /opt/pyxapi && PYXAPI_CONTRACT_XEN=1 PYTHONPATH=/opt/pyxapi/src:/opt/pyxapi/lib:/opt/pyxapi "
        "PYTHONDONTWRITEBYTECODE=1 python3 -m pytest -q -p no:cacheprovider -p tests.xenhost.plugin -rA "
        "--basetemp=/var/tmp/pyxapi-contract "  # on disk: dom0's /tmp is a small tmpfs, suspend images are big
        "tests/drivers/test_hypervisor_contract.py -k xen 2>&1",
        timeout=CONTRACT_TIMEOUT,
    )
    print(res.out)
    summary = res.out.strip().splitlines()[-1] if res.out.strip() else ""
    assert res.rc == 0, f"contract suite on Xen failed (rc {res.rc}): {summary}\n{res.out[-8000:]}"
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 15, summary  # every xen case ran, none skipped
    assert "skipped" not in summary and "failed" not in summary, summary
