"""VM commands against a real daemon (simulated hypervisor): install, the power cycle, clone
and copy, selectors, disks, CDs, interfaces, memory, uninstall."""

from __future__ import annotations

import XenAPI

from tests.cli.conftest import Xe, records

TEMPLATE = "template=pyxapi test guest"


def power(api: XenAPI.Session, uuid: str) -> str:
    return str(api.xenapi.VM.get_power_state(api.xenapi.VM.get_by_uuid(uuid)))


def test_install_from_template_by_name_or_uuid(xe: Xe, api: XenAPI.Session) -> None:
    vm = xe.one("vm-install", TEMPLATE, "new-name-label=inst1")
    rec = api.xenapi.VM.get_record(api.xenapi.VM.get_by_uuid(vm))
    assert rec["name_label"] == "inst1" and not rec["is_a_template"]
    assert rec["name_description"] == "Installed via xe CLI"
    template = xe.one("template-list", "name-label=pyxapi test guest", "--minimal")
    by_uuid = xe.one("vm-install", f"template={template}", "new-name-label=inst2")
    assert by_uuid != vm
    sr = xe.one("sr-list", "name-label=Local storage", "--minimal")
    on_sr = xe.one("vm-install", f"template-uuid={template}", "new-name-label=inst3", f"sr-uuid={sr}")
    assert api.xenapi.VM.get_suspend_SR(api.xenapi.VM.get_by_uuid(on_sr)) == api.xenapi.SR.get_by_uuid(sr)
    r = xe("vm-install", "template=no such template", "new-name-label=x")
    assert (r.rc, r.err) == (1, "Error: No templates matched\n")
    r = xe("vm-install", f"template={vm}", "new-name-label=x")
    assert (r.rc, r.err) == (1, "Error: Can only install from templates\n")
    r = xe("vm-install", "new-name-label=x")
    assert r.rc == 1 and r.err.startswith("Error: Template must be specified")


def test_power_cycle_with_selectors(xe: Xe, api: XenAPI.Session) -> None:
    vm = xe.one("vm-install", TEMPLATE, "new-name-label=cycle")
    xe.ok("vm-start", "vm=cycle")
    assert power(api, vm) == "Running"
    assert xe.one("vm-list", "power-state=running", "name-label=cycle", "--minimal") == vm
    xe.ok("vm-pause", f"uuid={vm}")
    assert power(api, vm) == "Paused"
    xe.ok("vm-unpause", f"vm={vm}")
    xe.ok("vm-suspend", "vm=cycle")
    assert power(api, vm) == "Suspended"
    xe.ok("vm-resume", "vm=cycle")
    xe.ok("vm-reboot", "vm=cycle")
    xe.ok("vm-reboot", "vm=cycle", "--force")
    assert power(api, vm) == "Running"
    xe.ok("vm-shutdown", "vm=cycle")
    assert power(api, vm) == "Halted"
    r = xe("vm-shutdown", "vm=cycle")
    assert r.rc == 1
    assert r.err.splitlines() == [
        "The VM is not in the power state this operation needs.",
        f"vm: {vm} (cycle)",
        "expected: running",
        "actual: halted",
    ]
    r = xe("vm-start", "vm=cycle", "--progress")
    assert r.rc == 0 and r.err.startswith("\r") and "100% " in r.err and r.err.endswith("\n")
    xe.ok("vm-shutdown", "vm=cycle", "--force")
    assert power(api, vm) == "Halted"


def test_multiple_matches_need_multiple(xe: Xe, api: XenAPI.Session) -> None:
    a = xe.one("vm-install", TEMPLATE, "new-name-label=twin")
    b = xe.one("vm-install", TEMPLATE, "new-name-label=twin")
    r = xe("vm-start", "vm=twin")
    assert (r.rc, r.err) == (1, "Error: Multiple matches VMs found. --multiple required to complete the operation\n")
    xe.ok("vm-start", "vm=twin", "--multiple")
    assert power(api, a) == power(api, b) == "Running"
    r = xe("vm-start", "vm=twin", "--multiple")
    assert r.rc == 1
    failed = {line.split(":")[0] for line in r.out.splitlines() if line.startswith("operation failed on")}
    assert failed == {f"operation failed on {a}", f"operation failed on {b}"}
    xe.ok("vm-shutdown", "name-label=twin", "power-state=running", "--multiple", "--force")
    assert power(api, a) == power(api, b) == "Halted"
    r = xe("vm-start", "vm=nobody")
    assert (r.rc, r.err) == (1, "Error: No matching VMs found\n")
    r = xe("vm-start", "vm=twin", "colour=blue")
    assert r.rc == 1
    assert r.err == "Error: Parameter 'colour' is not a field of the VM class. Failed to select VM for operation.\n"


def test_clone_copy_destroy_uninstall(xe: Xe, api: XenAPI.Session) -> None:
    xe.one("vm-install", TEMPLATE, "new-name-label=orig")
    xe.ok("vm-disk-add", "vm=orig", "disk-size=32MiB", "device=1")
    clone = xe.one("vm-clone", "vm=orig", "new-name-label=cl", "new-name-description=a clone")
    copy = xe.one("vm-copy", "vm=orig", "new-name-label=cp")
    assert api.xenapi.VM.get_name_description(api.xenapi.VM.get_by_uuid(clone)) == "a clone"
    assert {clone, copy} <= set(xe.one("vm-list", "--minimal").split(","))
    xe.ok("vm-destroy", f"uuid={copy}")
    assert copy not in xe.one("vm-list", "--minimal")
    disks = [x for x in xe.one("vbd-list", f"vm-uuid={clone}", "params=vdi-uuid", "--minimal").split(",") if x]
    r = xe("vm-uninstall", f"uuid={clone}", stdin="no\n")
    assert (
        r.rc == 0 and "Aborted (you typed: 'no')" in r.out and "The following items are about to be destroyed" in r.out
    )
    assert clone in xe.one("vm-list", "--minimal")
    out = xe.ok("vm-uninstall", f"uuid={clone}", "--force")
    assert out.splitlines()[-1] == "All objects destroyed"
    assert clone not in xe.one("vm-list", "--minimal")
    owned = [d for d in disks if d in out]
    for vdi in owned:
        assert vdi not in xe.one("vdi-list", "--minimal")
    dom0 = xe.one("vm-list", "is-control-domain=true", "--minimal")
    r = xe("vm-destroy", f"uuid={dom0}")
    assert r.rc == 1 and "You cannot destroy a control domain via the CLI" in r.err


def test_disks_cds_and_interfaces(xe: Xe, api: XenAPI.Session) -> None:
    vm = xe.one("vm-install", TEMPLATE, "new-name-label=devices")
    xe.ok("vm-disk-add", f"uuid={vm}", "disk-size=64MiB", "device=1")
    out = xe.ok("vm-disk-list", "vm=devices")
    assert "Disk 0 VBD:" in out and "Disk 0 VDI:" in out
    vdi_rec = records(out.split("Disk 0 VDI:\n")[1])[0]
    assert vdi_rec["virtual-size"] == str(64 << 20) and vdi_rec["name-label"] == "Created by xe"
    xe.ok("vm-disk-remove", "vm=devices", "device=1")
    assert "Disk 0 VBD:" not in xe.ok("vm-disk-list", "vm=devices")
    r = xe("vm-disk-remove", "vm=devices", "device=7")
    assert (r.rc, r.err) == (1, "Error: Disk not found\n")
    # CDs: an ISO dropped into the ISO library appears after sr-scan
    iso_sr = xe.one("sr-list", "name-label=ISO library", "--minimal")
    (xe.daemon.data_dir / "iso" / "tools.iso").write_bytes(b"\0" * 4096)
    xe.ok("sr-scan", f"uuid={iso_sr}")
    assert "tools.iso" in xe.ok("cd-list")
    xe.ok("vm-cd-add", "vm=devices", "cd-name=tools.iso", "device=3")
    cds = xe.ok("vm-cd-list", "vm=devices")
    assert "CD 0 VBD:" in cds and "tools.iso" in cds
    xe.ok("vm-cd-eject", "vm=devices")
    [cd] = records(xe.ok("vbd-list", f"vm-uuid={vm}", "type=CD", "params=empty"))
    assert cd["empty"] == "true"
    xe.ok("vm-cd-insert", "vm=devices", "cd-name=tools.iso")
    r = xe("vm-cd-insert", "vm=devices", "cd-name=tools.iso")
    assert r.rc == 1 and r.err.splitlines()[0] == "The VM has no empty CD drive."
    xe.ok("vm-cd-remove", "vm=devices", "cd-name=tools.iso")
    r = xe("vm-cd-add", "vm=devices", "cd-name=missing.iso", "device=3")
    assert (r.rc, r.err) == (1, "Error: CD missing.iso not found!\n")
    # interfaces
    net = xe.one("network-list", "name-label=pyxapi internal network", "--minimal")
    vif = xe.one("vif-create", f"vm-uuid={vm}", f"network-uuid={net}", "device=0")
    [row] = records(xe.ok("vm-vif-list", "vm=devices"))
    assert row["uuid"] == vif and row["network-uuid"] == net and row["network-name-label"] == "pyxapi internal network"
    assert row["MAC"] == api.xenapi.VIF.get_MAC(api.xenapi.VIF.get_by_uuid(vif))


def test_memory_and_vcpus(xe: Xe, api: XenAPI.Session) -> None:
    vm = xe.one("vm-install", TEMPLATE, "new-name-label=mem")
    ref = api.xenapi.VM.get_by_uuid(vm)
    xe.ok(
        "vm-memory-limits-set",
        "vm=mem",
        "static-min=64MiB",
        "static-max=512MiB",
        "dynamic-min=256MiB",
        "dynamic-max=512MiB",
    )
    rec = api.xenapi.VM.get_record(ref)
    assert (rec["memory_static_min"], rec["memory_dynamic_min"]) == (str(64 << 20), str(256 << 20))
    xe.ok("vm-memory-dynamic-range-set", "vm=mem", "min=300MiB", "max=400MiB")
    assert api.xenapi.VM.get_memory_dynamic_max(ref) == str(400 << 20)
    xe.ok("vm-memory-set", "vm=mem", "memory=384MiB")
    assert api.xenapi.VM.get_memory_static_max(ref) == str(384 << 20)
    r = xe("vm-memory-set", "vm=mem", "memory=lots")
    assert r.rc == 1 and r.err.startswith("Error: Failed to parse parameter 'memory'")
    xe.ok("vm-param-set", f"uuid={vm}", "VCPUs-max=2")
    xe.ok("vm-start", "vm=mem")
    xe.ok("vm-vcpu-hotplug", "vm=mem", "new-vcpus=2")
    assert api.xenapi.VM_metrics.get_VCPUs_number(api.xenapi.VM.get_metrics(ref)) == "2"
    xe.ok("vm-shutdown", "vm=mem", "--force")


def test_snapshot_commands_answer_the_api(xe: Xe, api: XenAPI.Session) -> None:
    vm = xe.one("vm-install", TEMPLATE, "new-name-label=snapme")
    r = xe("vm-snapshot", "vm=snapme", "new-name-label=snap1")
    if r.rc != 0:  # the snapshot API lands in its own issue: until then, its error as xe prints it
        assert r.err.startswith(("This operation is not implemented by the server yet.", "Error code:")), r.err
        return
    snap = r.out.strip()
    assert xe.one("snapshot-list", f"snapshot-of={vm}", "--minimal") == snap
    assert xe.one("snapshot-param-get", f"uuid={snap}", "param-name=is-a-snapshot") == "true"
    xe.ok("snapshot-revert", f"snapshot-uuid={snap}")
    tpl = xe.one("snapshot-clone", f"uuid={snap}", "new-name-label=from-snap")
    assert xe.one("template-param-get", f"uuid={tpl}", "param-name=is-a-template") == "true"
    r = xe("snapshot-revert", f"uuid={vm}")
    assert (r.rc, r.err) == (
        1,
        f"Error: This operation can only be performed on a VM snapshot. {vm} is not a VM snapshot.\n",
    )
    xe.ok("snapshot-uninstall", f"uuid={snap}", "--force")
    assert snap not in xe.one("snapshot-list", "--minimal")
