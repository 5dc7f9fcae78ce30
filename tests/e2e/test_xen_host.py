"""pyxapi as the toolstack of a real Xen host, seen from outside it through the official XenAPI SDK.

The session's Xen test host (tests/xenhost) runs pyxapi in dom0 (driver chosen automatically:
/proc/xen/capabilities says control_d), its XenAPI forwarded to 127.0.0.1. A PV VM is created
from the "pyxapi test guest" template, started, seen Running with a real domid through
event.from, and shut down cleanly; the host reports Xen's version and capabilities.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import XenAPI

from tests.xenhost.fixtures import xen_host  # noqa: F401 - the shared session fixture
from tests.xenhost.host import XenHost

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

BOOT_SECONDS = 300.0  # a PV guest under nested TCG on a shared machine


@pytest.fixture(scope="module")
def session(xen_host: XenHost) -> Iterator[Any]:  # noqa: F811
    s = XenAPI.Session(xen_host.url)
    s.xenapi.login_with_password("root", xen_host.password, "2.23", "xen-e2e")
    yield s
    with contextlib.suppress(Exception):
        s.xenapi.session.logout()


@pytest.fixture(scope="module")
def xapi(session: Any) -> Any:
    return session.xenapi


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


def test_xen_console_ring_and_debug_keys(xapi: Any) -> None:
    """host.dmesg is Xen's console ring on a Xen host (as xapi's), and host.send_debug_keys
    reaches Xen: key 'h' makes it print its key table there."""
    [host] = xapi.host.get_all()
    assert "(XEN)" in xapi.host.dmesg(host)
    xapi.host.send_debug_keys(host, "h")
    assert "'h' pressed" in xapi.host.dmesg(host)
    with pytest.raises(XenAPI.Failure) as err:
        xapi.host.send_debug_keys(host, "-h")
    assert err.value.details == ["INVALID_VALUE", "keys", "-h"]


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


async def rfb_banner_through_console(url: str, session: str, console: str) -> bytes:
    """CONNECT to the daemon's console handler (plain HTTP here: the forwarded port) and read the
    first bytes the guest's VNC server sends."""
    parts = urlsplit(url)
    async with asyncio.timeout(60):
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            writer.write(f"CONNECT /console?ref={console}&session_id={session} HTTP/1.0\r\n\r\n".encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.split(b" ", 2)[1] == b"200", head
            return await reader.readexactly(12)
        finally:
            writer.close()


def test_pvh_vm_with_a_qcow2_disk_and_a_vnc_console(xen_host: XenHost, session: Any, xapi: Any) -> None:  # noqa: F811
    """PVH, a disk from the default SR (qcow2 files: libxl's qdisk backend, QEMU in dom0) hot-plugged
    into the running guest, snapshotted live and grown online, and the guest's VNC console (its PV
    framebuffer) through the API."""
    template = next(t for t in xapi.VM.get_by_name_label("pyxapi test guest") if xapi.VM.get_is_a_template(t))
    vm = xapi.VM.clone(template, "xen-e2e-pvh")
    xapi.VM.set_domain_type(vm, "pvh")
    xapi.VM.set_PV_args(vm, "console=hvc0 quiet")
    xapi.VM.provision(vm)
    [pool] = xapi.pool.get_all()
    sr = xapi.pool.get_default_SR(pool)
    vdi = xapi.VDI.create({
        "name_label": "xen-e2e-data", "name_description": "", "SR": sr, "virtual_size": str(16 << 20),
        "type": "user", "sharable": False, "read_only": False, "other_config": {},
    })  # fmt: skip
    try:
        xapi.VM.start(vm, False, False)
        rec = wait_for(xapi, vm, lambda r: r["power_state"] == "Running" and int(r["domid"]) > 0, BOOT_SECONDS)
        domid = rec["domid"]
        described = xen_host.run(f"xl list -l {domid}", timeout=60)
        assert described.rc == 0 and '"type": "pvh"' in described.out, described.out[:2000]
        vbd = xapi.VBD.create({
            "VM": vm, "VDI": vdi, "userdevice": "1", "bootable": False, "mode": "RW", "type": "Disk",
            "empty": False, "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {},
        })  # fmt: skip
        xapi.VBD.plug(vbd)
        assert xapi.VBD.get_currently_attached(vbd)
        # The disk is a qcow2 file, served by the domain's QEMU (qdisk), not by blkback.
        backends = xen_host.run(f"xenstore-ls /local/domain/0/backend/qdisk/{domid}", timeout=60)
        assert backends.rc == 0 and 'params = "qcow2:' in backends.out, backends.out[:2000]
        # A live, crash-consistent snapshot and an online resize: QEMU in dom0 switches the disk
        # onto its new overlay and grows it while the guest runs.
        snap = xapi.VM.snapshot(vm, "xen-e2e-live", [])
        assert xapi.VM.get_power_state(vm) == "Running" and xapi.VM.get_is_a_snapshot(snap)
        xapi.VDI.resize_online(vdi, str(32 << 20))
        assert int(xapi.VDI.get_virtual_size(vdi)) == 32 << 20
        sectors = xen_host.run(f"xenstore-read /local/domain/0/backend/qdisk/{domid}/51728/sectors", timeout=60)
        assert sectors.out.strip() == str((32 << 20) // 512), sectors.out
        consoles = {xapi.console.get_protocol(c): c for c in xapi.VM.get_consoles(vm)}
        assert "rfb" in consoles, consoles
        banner = asyncio.run(rfb_banner_through_console(xen_host.url, session._session, consoles["rfb"]))
        assert banner.startswith(b"RFB 003."), banner
        xapi.VBD.unplug(vbd)
        xapi.VM.clean_shutdown(vm)
        wait_for(xapi, vm, lambda r: r["power_state"] == "Halted", 120)
        gone = xen_host.run(f"xl list {domid}", timeout=60)
        assert gone.rc != 0, gone.out
        for snap_vbd in xapi.VM.get_VBDs(snap):
            if xapi.VBD.get_type(snap_vbd) == "Disk":
                xapi.VDI.destroy(xapi.VBD.get_VDI(snap_vbd))
        xapi.VM.destroy(snap)
    finally:
        with contextlib.suppress(Exception):
            xapi.VM.hard_shutdown(vm)
        xapi.VM.destroy(vm)
        xapi.VDI.destroy(vdi)
