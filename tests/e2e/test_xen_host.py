"""pyxapi as the toolstack of a real Xen host, seen from outside it through the official XenAPI SDK.

The session's Xen test host (tests/xenhost) runs pyxapi in dom0 (driver chosen automatically:
/proc/xen/capabilities says control_d), its XenAPI forwarded to 127.0.0.1. A PV VM is created
from the "pyxapi test guest" template, started, seen Running with a real domid through
event.from, and shut down cleanly; the host reports Xen's version and capabilities.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
import XenAPI

from tests.xenhost.fixtures import xen_host  # noqa: F401 - the shared session fixture
from tests.xenhost.host import XenHost

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

BOOT_SECONDS = 300.0  # a PV guest under nested TCG on a shared machine


@pytest.fixture(scope="module")
def xapi(xen_host: XenHost) -> Iterator[Any]:  # noqa: F811
    s = XenAPI.Session(xen_host.url)
    s.xenapi.login_with_password("root", xen_host.password, "2.23", "xen-e2e")
    yield s.xenapi
    with contextlib.suppress(Exception):
        s.xenapi.session.logout()


def wait_for(x: Any, vm: str, predicate: Any, seconds: float) -> dict[str, Any]:
    """Follow the VM through event.from until predicate(record) holds."""
    token = ""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch = x.event_from([f"vm/{vm}"], token, 5.0)
        token = batch["token"]
        for ev in batch["events"]:
            snapshot = ev.get("snapshot")
            if ev["class"] == "vm" and ev["ref"] == vm and snapshot and predicate(snapshot):
                return dict(snapshot)
    pytest.fail(f"VM {vm} did not reach the expected state within {seconds:g}s: {x.VM.get_record(vm)}")


def test_host_is_a_xen_host(xen_host: XenHost, xapi: Any) -> None:  # noqa: F811
    xl = xen_host.run("xl info", timeout=60)
    assert xl.rc == 0, xl.out
    info = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in xl.out.splitlines() if ":" in line)}
    [host] = xapi.host.get_all()
    version = xapi.host.get_software_version(host)
    assert version["xen"] == info["xen_version"], (version, info["xen_version"])  # e.g. 4.17.5
    caps = xapi.host.get_capabilities(host)
    assert "xen-3.0-x86_64" in caps and caps == info["xen_caps"].split(), caps
    metrics = xapi.host_metrics.get_record(xapi.host.get_metrics(host))
    assert int(metrics["memory_total"]) == int(info["total_memory"]) * (1 << 20), (metrics, info["total_memory"])
    dom0 = xapi.host.get_control_domain(host)
    assert xapi.VM.get_domid(dom0) == "0"
    dom0_mib = int(xen_host.run("xl list 0 | awk 'NR==2{print $3}'", timeout=60).out.strip())
    assert int(xapi.VM.get_memory_target(dom0)) == dom0_mib << 20
    assert xapi.VM.get_VCPUs_max(dom0) == "2"


def test_pv_vm_from_template_runs_on_xen(xen_host: XenHost, xapi: Any) -> None:  # noqa: F811
    template = next(t for t in xapi.VM.get_by_name_label("pyxapi test guest") if xapi.VM.get_is_a_template(t))
    vm = xapi.VM.clone(template, "xen-e2e-pv")
    xapi.VM.set_domain_type(vm, "pv")
    xapi.VM.set_PV_args(vm, "console=hvc0 quiet")
    xapi.VM.provision(vm)
    t0 = time.monotonic()
    xapi.VM.start(vm, False, False)
    rec = wait_for(xapi, vm, lambda r: r["power_state"] == "Running" and int(r["domid"]) > 0, BOOT_SECONDS)
    print(f"VM.start -> Running: {time.monotonic() - t0:.1f}s, domid {rec['domid']}")
    domid = rec["domid"]
    listed = xen_host.run(f"xl list {domid}", timeout=60)
    assert listed.rc == 0 and "xen-e2e-pv" in listed.out, listed.out  # a real Xen domain, under that domid
    assert xapi.VM.get_domain_type(vm) == "pv"
    # The guest's agent writes xenstore; pyxapi turns it into VM_guest_metrics.
    rec = wait_for(xapi, vm, lambda r: r["guest_metrics"] != "OpaqueRef:NULL", BOOT_SECONDS)
    os_version = xapi.VM_guest_metrics.get_os_version(rec["guest_metrics"])
    assert os_version.get("name") == "pyxapi test guest", os_version
    xapi.VM.clean_shutdown(vm)
    rec = wait_for(xapi, vm, lambda r: r["power_state"] == "Halted", 120)
    assert rec["domid"] == "-1"
    gone = xen_host.run(f"xl list {domid}", timeout=60)
    assert gone.rc != 0, gone.out
    xapi.VM.destroy(vm)
