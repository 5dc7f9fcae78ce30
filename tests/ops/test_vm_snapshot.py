"""VM.snapshot / checkpoint / set_is_a_template, live disk snapshots and online resize, through
dispatch on the simulated hypervisor, with simulated SRs and real file SRs (qemu-img images).
VM.revert and the snapshot tree across destroys are in test_vm_snapshot_revert.py; the real-QEMU run
is tests/e2e/test_snapshots_qemu.py."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pyxapi.drivers.hypervisor.base import DeviceError
from pyxapi.engine.vm_lifecycle import VMView, check
from pyxapi.model import ApiError
from tests.ops.test_storage_ops import NULL, GiB, MiB, new_sr, new_vbd, new_vdi, srv  # noqa: F401 - fixture
from tests.ops.test_vm_power import Api, api, new_vm  # noqa: F401 - the fixture


class Disks:
    """Reads and writes a VDI's first byte as a guest would, on a sim SR (its test hooks) or a file
    SR (qemu-io on the image file, which is the VDI's current top layer)."""

    def __init__(self, server: Api, kind: str, root: Path) -> None:
        self.srv, self.kind, self.root = server, kind, root

    def _where(self, vdi: str) -> tuple[str, str]:
        rec = self.srv.ctx.store.get("VDI", vdi)
        return self.srv.ctx.store.get("SR", rec["SR"])["uuid"], rec["location"]

    def write(self, vdi: str, value: int) -> None:
        sr_uuid, location = self._where(vdi)
        if self.kind == "sim":
            self.srv.ctx.services["storage"].drivers["sim"].write(sr_uuid, location, 0, bytes([value]))
            return
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", f"write -P {value} 0 64k", str(self.root / location)],
            check=True,
            capture_output=True,
        )

    def read(self, vdi: str) -> int:
        sr_uuid, location = self._where(vdi)
        if self.kind == "sim":
            return self.srv.ctx.services["storage"].drivers["sim"].read(sr_uuid, location, 0, 1)[0]
        out = subprocess.run(
            ["qemu-io", "-r", "-U", "-f", "qcow2", "-c", "read -v 0 1", str(self.root / location)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return int(out.split(":", 1)[1].split()[0], 16)


@pytest.fixture(params=["sim", "file"])
async def disks(srv: Api, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Disks, str]]:  # noqa: F811
    kind = request.param
    root = tmp_path / "sr"
    sr = await new_sr(srv, kind, **({"location": str(root)} if kind == "file" else {}))
    yield Disks(srv, kind, root), sr


async def guest(srv: Api, sr: str, n_disks: int = 2, cd: bool = True, vif: bool = True) -> tuple[str, list[str]]:  # noqa: F811
    """A VM with n disks on sr (userdevice 0..n-1), an ISO in a CD drive and a NIC."""
    vm = await new_vm(srv, name_description="original")
    vdis = []
    for i in range(n_disks):
        vdi = await new_vdi(srv, sr, GiB, name_label=f"disk{i}")
        await new_vbd(srv, vm, vdi, device=str(i))
        vdis.append(vdi)
    if cd:
        [iso_sr] = await srv("SR.get_by_name_label", "ISO library")
        (srv.ctx.config.data_dir / "iso" / "tools.iso").write_bytes(b"\0" * MiB)
        await srv("SR.scan", iso_sr)
        [iso] = await srv("VDI.get_by_name_label", "tools.iso")
        await new_vbd(srv, vm, iso, device="3", type="CD", mode="RO")
    if vif:
        [net] = await srv("network.get_by_name_label", "pyxapi internal network")
        await srv(
            "VIF.create",
            {
                "VM": vm,
                "network": net,
                "device": "0",
                "MAC": "",
                "MTU": 1500,
                "other_config": {},
                "qos_algorithm_type": "",
                "qos_algorithm_params": {},
            },
        )
    return vm, vdis


def vbd_disks(server: Api, vm: str) -> dict[str, str]:
    """userdevice -> VDI of the VM's disk VBDs."""
    store = server.ctx.store
    return {
        store.get("VBD", b)["userdevice"]: store.get("VBD", b)["VDI"]
        for b in store.get("VM", vm)["VBDs"]
        if store.get("VBD", b)["type"] == "Disk"
    }


async def wait_task(server: Api, task: str) -> dict[str, Any]:
    for _ in range(3000):
        rec = server.ctx.store.get("task", task)
        if rec["status"] != "pending":
            return rec
        await asyncio.sleep(0.01)
    raise AssertionError("task still pending")


# ------------------------------------------------------------------------------------------ snapshot


async def test_snapshot_of_a_halted_vm_makes_a_snapshot_record(srv: Api, disks: tuple[Disks, str]) -> None:  # noqa: F811
    data, sr = disks
    vm, [d0, d1] = await guest(srv, sr)
    data.write(d0, 0x11)
    mac = (await srv("VIF.get_record", (await srv("VM.get_VIFs", vm))[0]))["MAC"]
    snap = await srv("VM.snapshot", vm, "before upgrade", [])
    rec = await srv("VM.get_record", snap)
    assert rec["is_a_snapshot"] and rec["is_a_template"] and rec["snapshot_of"] == vm
    assert rec["name_label"] == "before upgrade" and rec["name_description"] == "original"
    assert rec["power_state"] == "Halted" and rec["suspend_VDI"] == NULL
    assert rec["snapshot_time"] != "19700101T00:00:00Z"
    assert rec["snapshot_info"] == {"power-state-at-snapshot": "Halted", "disk-snapshot-type": "crash_consistent"}
    assert f"<name>uuid</name><value>{await srv('VM.get_uuid', vm)}</value>" in rec["snapshot_metadata"]
    assert await srv("VM.get_snapshots", vm) == [snap]
    assert rec["parent"] == NULL and await srv("VM.get_parent", vm) == snap and rec["children"] == [vm]
    assert {"revert", "clone", "copy", "destroy"} <= set(rec["allowed_operations"])
    assert "start" not in rec["allowed_operations"] and "snapshot" not in rec["allowed_operations"]
    # disks: VDI snapshots of the VM's; the CD keeps its ISO; the NIC keeps its MAC
    taken = vbd_disks(srv, snap)
    assert set(taken) == {"0", "1"} and set(taken.values()).isdisjoint({d0, d1})
    for device, source in (("0", d0), ("1", d1)):
        vrec = await srv("VDI.get_record", taken[device])
        assert vrec["is_a_snapshot"] and vrec["snapshot_of"] == source and vrec["name_label"] == f"disk{device}"
    snap_vbds = [await srv("VBD.get_record", b) for b in rec["VBDs"]]
    assert [b["VDI"] for b in snap_vbds if b["type"] == "CD"] == (await srv("VDI.get_by_name_label", "tools.iso"))
    assert all(b["other_config"].get("owner") == "" for b in snap_vbds if b["type"] == "Disk")
    assert (await srv("VIF.get_record", rec["VIFs"][0]))["MAC"] == mac
    # the snapshot is immutable; the VM goes on
    data.write(d0, 0x22)
    assert data.read(taken["0"]) == 0x11 and data.read(d0) == 0x22
    # a second snapshot continues the tree; ignore_vdis leaves a disk out
    snap2 = await srv("VM.snapshot", vm, "second", [d1])
    assert set(vbd_disks(srv, snap2)) == {"0"} and data.read(vbd_disks(srv, snap2)["0"]) == 0x22
    assert await srv("VM.get_parent", snap2) == snap and await srv("VM.get_parent", vm) == snap2
    assert await srv("VM.get_children", snap) == [snap2]
    assert sorted(await srv("VM.get_snapshots", vm)) == sorted([snap, snap2])


async def test_snapshot_errors(srv: Api) -> None:  # noqa: F811
    sr = await new_sr(srv)
    vm, _ = await guest(srv, sr, n_disks=1, cd=False, vif=False)
    snap = await srv("VM.snapshot", vm, "s", [])
    assert await srv.error("VM.snapshot", snap, "again", []) == [
        "OPERATION_NOT_ALLOWED",
        "snapshot is not allowed on a snapshot",
    ]
    assert await srv.error("VM.checkpoint", snap, "cp") == [
        "OPERATION_NOT_ALLOWED",
        "checkpoint is not allowed on a snapshot",
    ]
    assert await srv.error("VM.checkpoint", vm, "cp") == ["VM_BAD_POWER_STATE", vm, "running", "halted"]
    assert await srv.error("VM.snapshot", "OpaqueRef:nope", "x", []) == ["HANDLE_INVALID", "VM", "OpaqueRef:nope"]
    assert await srv.error("VM.revert", vm) == ["REVERT_ONLY_ALLOWED_ON_SNAPSHOT"]
    assert await srv.error("VM.start", snap, False, False) == [
        "OPERATION_NOT_ALLOWED",
        "start is not allowed on a snapshot",
    ]
    # quiesced snapshots needed the Windows VSS agent; the API removed the call (xapi answers the same)
    assert await srv.error("VM.snapshot_with_quiesce", vm, "q") == ["MESSAGE_REMOVED"]
    # a disk reset at every boot cannot be snapshotted, and nothing is left half-made
    before = set(await srv("VDI.get_all"))
    vdi = await new_vdi(srv, sr, GiB)
    await new_vbd(srv, vm, vdi, device="1")
    await srv("VDI.set_on_boot", vdi, "reset")
    vms = set(await srv("VM.get_all"))
    assert await srv.error("VM.snapshot", vm, "x", []) == ["VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION"]
    assert set(await srv("VM.get_all")) == vms and set(await srv("VDI.get_all")) == before | {vdi}
    # snapshots and checkpoints may overlap; nothing else may overlap a snapshot
    view = VMView("OpaqueRef:v", "Running", False, False, False, {"OpaqueRef:t": "snapshot"}, {})
    check(view, "checkpoint")
    check(view, "snapshot")
    with pytest.raises(ApiError) as e:
        check(view, "clean_shutdown")
    assert e.value.description[0] == "OTHER_OPERATION_IN_PROGRESS"
    with pytest.raises(ApiError) as e:
        check(VMView("OpaqueRef:v", "Running", False, False, False, {"OpaqueRef:t": "suspend"}, {}), "snapshot")
    assert e.value.description == ["OTHER_OPERATION_IN_PROGRESS", "VM", "OpaqueRef:v", "suspend", "OpaqueRef:t"]


# ------------------------------------------------------------------------------------- live disks


async def test_live_snapshot_switches_every_disk_of_a_running_vm(srv: Api, disks: tuple[Disks, str]) -> None:  # noqa: F811
    data, sr = disks
    vm, [d0, d1] = await guest(srv, sr)
    await srv("VM.start", vm, False, False)
    hv = srv.ctx.services["hypervisor"]
    domain = hv.host.domains[await srv("VM.get_uuid", vm)]
    data.write(d0, 0x31)
    snap = await srv("VM.snapshot", vm, "live", [])
    assert await srv("VM.get_power_state", vm) == "Running" and domain.state.value == "running"
    assert domain.disk_layers == {0: 1, 1: 1}  # both disks moved onto their new overlays
    assert (await srv("VM.get_snapshot_info", snap))["power-state-at-snapshot"] == "Running"
    taken = vbd_disks(srv, snap)
    data.write(d0, 0x32)  # the guest goes on writing
    assert data.read(taken["0"]) == 0x31 and data.read(d0) == 0x32
    # VDI.snapshot and VDI.clone of a disk in use work too (xapi allows both live)
    single = await srv("VDI.snapshot", d1, {})
    clone = await srv("VDI.clone", d0, {})
    assert domain.disk_layers == {0: 2, 1: 2} and data.read(clone) == 0x32
    assert await srv("VDI.get_snapshot_of", single) == d1
    assert "snapshot" in await srv("VDI.get_allowed_operations", d0)
    await srv("VM.hard_shutdown", vm)


async def test_live_snapshot_of_a_raw_disk_pauses_the_guest_while_copying(srv: Api, tmp_path: Path) -> None:  # noqa: F811
    sr = await new_sr(srv, "file", location=str(tmp_path / "raw"))
    vm = await new_vm(srv)
    vdi = await new_vdi(srv, sr, 4 * MiB, sm_config={"image-format": "raw"})
    await new_vbd(srv, vm, vdi)
    location = await srv("VDI.get_location", vdi)
    (tmp_path / "raw" / location).write_bytes(b"raw!" + bytes(4 * MiB - 4))
    await srv("VM.start", vm, False, False)
    hv = srv.ctx.services["hypervisor"]
    uuid = await srv("VM.get_uuid", vm)
    states = []
    real_pause = hv.pause

    async def pause(u: str) -> None:
        states.append("paused")
        await real_pause(u)

    hv.pause = pause
    snap = await srv("VDI.snapshot", vdi, {})
    assert states == ["paused"] and (await hv.state(uuid)).value == "running"
    assert (tmp_path / "raw" / await srv("VDI.get_location", snap)).read_bytes()[:4] == b"raw!"
    assert hv.host.domains[uuid].disk_layers == {}  # a raw copy leaves the running disk where it was
    await srv("VM.hard_shutdown", vm)


async def test_failed_live_switch_leaves_no_snapshot_behind(srv: Api, tmp_path: Path) -> None:  # noqa: F811
    root = tmp_path / "f"
    sr = await new_sr(srv, "file", location=str(root))
    vm, [d0] = await guest(srv, sr, n_disks=1, cd=False, vif=False)
    await srv("VM.start", vm, False, False)
    hv = srv.ctx.services["hypervisor"]

    async def refuse(uuid: str, disks: Any) -> None:
        raise DeviceError("QMP transaction: injected failure")

    hv.switch_disks = refuse
    vdis, vms = set(await srv("VDI.get_all")), set(await srv("VM.get_all"))
    err = await srv.error("VM.snapshot", vm, "doomed", [])
    assert err[0] == "INTERNAL_ERROR" and "injected failure" in err[1]
    assert set(await srv("VDI.get_all")) == vdis and set(await srv("VM.get_all")) == vms
    assert await srv("VM.get_current_operations", vm) == {} and await srv("VDI.get_current_operations", d0) == {}
    visible = {p.name for p in root.iterdir() if not p.name.startswith(".") and ".base." not in p.name}
    assert visible == {await srv("VDI.get_location", d0)}  # the snapshot's image went too
    del hv.switch_disks  # the class's own again: a later snapshot works
    snap = await srv("VM.snapshot", vm, "fine", [])
    assert len(vbd_disks(srv, snap)) == 1
    await srv("VM.hard_shutdown", vm)


async def test_resize_online_of_a_disk_in_use(srv: Api, disks: tuple[Disks, str]) -> None:  # noqa: F811
    _, sr = disks
    vm, [d0] = await guest(srv, sr, n_disks=1, cd=False, vif=False)
    await srv("VM.start", vm, False, False)
    uuid = await srv("VM.get_uuid", vm)
    await srv("VDI.resize_online", d0, 2 * GiB)
    assert await srv("VDI.get_virtual_size", d0) == 2 * GiB
    assert srv.ctx.services["hypervisor"].host.domains[uuid].disk_sizes == {0: 2 * GiB}
    assert await srv.error("VDI.resize_online", d0, GiB) == ["VDI_TOO_SMALL", d0, str(2 * GiB)]
    assert await srv.error("VDI.resize", d0, 3 * GiB) == ["VDI_IN_USE", d0, "resize"]
    await srv("VM.hard_shutdown", vm)
    await srv("VDI.resize_online", d0, 3 * GiB)  # not in use: the storage grows it by itself
    assert await srv("VDI.get_virtual_size", d0) == 3 * GiB


# ---------------------------------------------------------------------------------------- checkpoint


async def test_checkpoint_keeps_memory_and_the_guest_runs_on(srv: Api) -> None:  # noqa: F811
    sr = await new_sr(srv)
    vm, _ = await guest(srv, sr)
    await srv("VM.start", vm, False, False)
    hv = srv.ctx.services["hypervisor"]
    uuid = await srv("VM.get_uuid", vm)
    hv.guest_write_file(uuid, "/root/state", "at checkpoint")
    task = await srv("Async.VM.checkpoint", vm, "cp")
    done = await wait_task(srv, task)
    assert done["status"] == "success", done["error_info"]
    cp = re.sub(r"</?value>", "", done["result"])
    rec = await srv("VM.get_record", cp)
    assert rec["power_state"] == "Suspended" and rec["is_a_snapshot"] and rec["snapshot_of"] == vm
    assert rec["snapshot_info"]["power-state-at-snapshot"] == "Running"
    image = await srv("VDI.get_record", rec["suspend_VDI"])
    assert image["type"] == "suspend" and image["name_label"] == "Suspend image for cp"
    assert len(vbd_disks(srv, cp)) == 2
    assert (srv.ctx.config.data_dir / "domains" / f"{rec['uuid']}.json").exists()
    # the guest did not stop for good, and still has its memory
    assert await srv("VM.get_power_state", vm) == "Running" and (await hv.state(uuid)).value == "running"
    assert hv.guest_read_file(uuid, "/root/state") == "at checkpoint"
    assert await srv("VM.get_suspend_VDI", vm) == NULL
    # a paused VM is checkpointed and stays paused; a suspended one gets a copy of its image
    await srv("VM.pause", vm)
    cp2 = await srv("VM.checkpoint", vm, "cp2")
    assert (await hv.state(uuid)).value == "paused" and await srv("VM.get_power_state", vm) == "Paused"
    await srv("VM.unpause", vm)
    await srv("VM.suspend", vm)
    cp3 = await srv("VM.checkpoint", vm, "cp3")
    own, copied = await srv("VM.get_suspend_VDI", vm), await srv("VM.get_suspend_VDI", cp3)
    assert copied not in (NULL, own) and await srv("VM.get_power_state", cp3) == "Suspended"
    assert await srv("VM.get_power_state", cp2) == "Suspended"
    # destroying a checkpoint (Suspended) is allowed; its spec file goes with it
    cp2_uuid = await srv("VM.get_uuid", cp2)
    await srv("VM.destroy", cp2)
    assert not (srv.ctx.config.data_dir / "domains" / f"{cp2_uuid}.json").exists()
    await srv("VM.hard_shutdown", vm)


async def test_checkpoint_failures(srv: Api) -> None:  # noqa: F811
    sr = await new_sr(srv)
    vm, _ = await guest(srv, sr, n_disks=1, cd=False, vif=False)
    await srv("VM.start", vm, False, False)
    hv = srv.ctx.services["hypervisor"]
    uuid = await srv("VM.get_uuid", vm)

    async def broken(u: str, path: str, timeout: float = 0) -> None:
        raise DeviceError("migration stream: injected failure")

    hv.save_memory = broken
    vdis, vms = set(await srv("VDI.get_all")), set(await srv("VM.get_all"))
    assert await srv.error("VM.checkpoint", vm, "cp") == ["VM_CHECKPOINT_SUSPEND_FAILED", vm]
    assert set(await srv("VDI.get_all")) == vdis and set(await srv("VM.get_all")) == vms
    assert (await hv.state(uuid)).value == "running"  # and the guest was let go again
    del hv.save_memory
    srv.ctx.store.set_field("pool", srv.ctx.pool_ref, "suspend_image_SR", NULL)
    srv.ctx.store.set_field("host", srv.ctx.host_ref, "suspend_image_sr", NULL)
    assert await srv.error("VM.checkpoint", vm, "cp") == ["VM_NO_SUSPEND_SR", vm]
    assert set(await srv("VDI.get_all")) == vdis and (await hv.state(uuid)).value == "running"
    await srv("VM.hard_shutdown", vm)


# ----------------------------------------------------------------------------------------- templates


async def test_templates_from_snapshots_and_back(srv: Api, tmp_path: Path) -> None:  # noqa: F811
    sr = await new_sr(srv, "file", location=str(tmp_path / "t"))
    vm, _ = await guest(srv, sr, n_disks=1, cd=False)
    snap = await srv("VM.snapshot", vm, "golden", [])
    # xe snapshot-clone / snapshot-copy: a template from a snapshot
    template = await srv("VM.clone", snap, "golden template")
    rec = await srv("VM.get_record", template)
    assert rec["is_a_template"] and not rec["is_a_snapshot"] and rec["snapshot_of"] == NULL
    assert rec["parent"] == NULL and rec["other_config"]["base_template_name"] == "golden"
    assert vbd_disks(srv, template)["0"] != vbd_disks(srv, snap)["0"]
    elsewhere = await new_sr(srv, "file", location=str(tmp_path / "elsewhere"))
    task = await srv("Async.VM.copy", snap, "full copy", elsewhere)
    done = await wait_task(srv, task)
    assert done["status"] == "success" and done["progress"] == 1.0
    full = re.sub(r"</?value>", "", done["result"])
    copied = vbd_disks(srv, full)["0"]
    assert await srv("VDI.get_SR", copied) == elsewhere and await srv("VM.get_is_a_template", full)
    assert [p.name for p in (tmp_path / "elsewhere").iterdir() if ".base." in p.name] == []  # full: no chain
    # template -> VM -> template
    assert await srv.error("VM.start", template, False, False) == ["VM_IS_TEMPLATE", template]
    await srv("VM.set_is_a_template", template, False)
    assert not await srv("VM.get_is_a_template", template)
    assert "start" in await srv("VM.get_allowed_operations", template)
    metrics = await srv("VM.get_metrics", template)
    assert await srv("VM_metrics.get_install_time", metrics) != "19700101T00:00:00Z"
    await srv("VM.start", template, False, False)
    assert await srv.error("VM.set_is_a_template", template, True) == [
        "VM_BAD_POWER_STATE",
        template,
        "halted",
        "running",
    ]
    await srv("VM.hard_shutdown", template)
    await srv("VM.set_is_a_template", template, True)
    assert "start" not in await srv("VM.get_allowed_operations", template)
    assert await srv.error("VM.set_is_a_template", snap, True) == [
        "OPERATION_NOT_ALLOWED",
        "make_into_template is not allowed on a snapshot",
    ]
    assert await srv.error("VM.set_is_a_template", template, True) == ["VM_IS_TEMPLATE", template]


async def test_clone_ten_vms_from_a_template_is_linked(srv: Api, tmp_path: Path) -> None:  # noqa: F811
    root = tmp_path / "fleet"
    sr = await new_sr(srv, "file", location=str(root))
    vm, [d0] = await guest(srv, sr, n_disks=1, cd=False, vif=False)
    await srv("VDI.resize", d0, 20 * GiB)
    await srv("VM.set_is_a_template", vm, True)
    clones = [await srv("VM.clone", vm, f"fleet-{i}") for i in range(10)]
    allocated = [await srv("VDI.get_physical_utilisation", vbd_disks(srv, c)["0"]) for c in clones]
    assert len(set(clones)) == 10 and max(allocated) < 2 * MiB  # overlays only: nothing was copied
    assert [await srv("VM.get_is_a_template", c) for c in clones] == [True] * 10


async def test_copy_progress_runs_through_the_disks_once(srv: Api) -> None:  # noqa: F811
    sr = await new_sr(srv)
    vm, _ = await guest(srv, sr, n_disks=2, cd=False, vif=False)
    snap = await srv("VM.snapshot", vm, "to copy", [])
    seen: list[float] = []
    tasks = srv.ctx.tasks
    real = tasks.set_progress

    def record(ref: str, progress: float) -> None:
        seen.append(progress)
        real(ref, progress)

    tasks.set_progress = record  # type: ignore[method-assign]
    done = await wait_task(srv, await srv("Async.VM.copy", snap, "copied", sr))
    assert done["status"] == "success" and done["progress"] == 1.0
    # two disks of one size: the first ends half way, the second at the end; never backwards
    assert seen == sorted(seen) and 0.5 in seen and seen[-1] == 1.0, seen
