"""SR / PBD / VDI / VBD through dispatch, on the simulated hypervisor with real file SRs (qemu-img)
and simulated SRs; the qemu end-to-end run is tests/e2e/test_storage_e2e.py."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pyxapi.main import build
from tests.ops.test_vm_power import Api, api, new_vm  # noqa: F401 - the fixture

GiB = 1 << 30
MiB = 1 << 20
NULL = "OpaqueRef:NULL"


@pytest.fixture
async def srv(api: Api) -> AsyncIterator[Api]:  # noqa: F811
    """The api fixture with the storage runtime started, as `pyxapi serve` does."""
    storage = api.ctx.services["storage"]
    await storage.start()
    yield api
    await storage.stop()


async def host(srv: Api) -> str:
    return str(srv.ctx.host_ref)


async def default_sr(srv: Api) -> str:
    return str(await srv("pool.get_default_SR", srv.ctx.pool_ref))


async def new_sr(srv: Api, kind: str = "sim", **config: str) -> str:
    return str(await srv("SR.create", await host(srv), config, 0, f"{kind} SR", "", kind, "user", False, {}))


async def new_vdi(srv: Api, sr: str, size: int = GiB, **extra: Any) -> str:
    rec = {"SR": sr, "virtual_size": size, "type": "user", "sharable": False, "read_only": False,
           "other_config": {}, "name_label": "disk", **extra}
    return str(await srv("VDI.create", rec))


async def new_vbd(srv: Api, vm: str, vdi: str, device: str = "autodetect", **extra: Any) -> str:
    rec = {"VM": vm, "VDI": vdi, "userdevice": device, "bootable": False, "mode": "RW", "type": "Disk",
           "empty": False, "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {}, **extra}
    return str(await srv("VBD.create", rec))


async def wait_task(srv: Api, task: str) -> dict[str, Any]:
    for _ in range(1000):
        rec = srv.ctx.store.get("task", task)
        if rec["status"] != "pending":
            return rec
        await asyncio.sleep(0.01)
    raise AssertionError("task still pending")


async def test_first_start_makes_sms_and_the_default_srs(srv: Api) -> None:
    sms = {r["type"]: r for r in (await srv("SM.get_all_records")).values()}
    assert set(sms) == {"file", "iso", "sim", "nfs", "iscsi", "lvm"}
    assert "VDI_CLONE" in sms["file"]["capabilities"] and sms["file"]["features"]["VDI_SNAPSHOT"] == 1
    assert sms["iso"]["configuration"] == {"location": "Absolute path of an existing local directory of .iso files"}
    assert await srv("SR.get_supported_types") == ["file", "iscsi", "iso", "lvm", "nfs", "sim"]
    sr = await default_sr(srv)
    rec = await srv("SR.get_record", sr)
    assert (rec["name_label"], rec["type"], rec["content_type"]) == ("Local storage", "file", "user")
    assert rec["shared"] is False
    assert rec["physical_size"] > 0 and "vdi_create" in rec["allowed_operations"]
    pool = await srv("pool.get_record", srv.ctx.pool_ref)
    assert pool["suspend_image_SR"] == pool["crash_dump_SR"] == sr
    [pbd] = rec["PBDs"]
    pbd_rec = await srv("PBD.get_record", pbd)
    assert pbd_rec["currently_attached"] and pbd_rec["host"] == srv.ctx.host_ref
    assert pbd_rec["device_config"]["location"] == str(srv.ctx.config.data_dir / "sr" / rec["uuid"])
    [iso] = await srv("SR.get_by_name_label", "ISO library")
    assert await srv("SR.get_content_type", iso) == "iso"


async def test_sr_create_errors_leave_nothing_behind(srv: Api, tmp_path: Path) -> None:
    h = await host(srv)
    before = set(await srv("SR.get_all"))
    assert await srv.error("SR.create", h, {}, 0, "x", "", "nfs-ish", "user", False, {}) == [
        "SR_UNKNOWN_DRIVER", "nfs-ish"]
    missing = await srv.error("SR.create", h, {}, 0, "x", "", "file", "user", False, {})
    assert missing[0] == "SR_BACKEND_FAILURE_94" and len(missing) == 4
    relative = await srv.error("SR.create", h, {"location": "rel/dir"}, 0, "x", "", "file", "user", False, {})
    assert relative[0] == "SR_BACKEND_FAILURE_1"
    assert (await srv.error("SR.create", h, {"location": "/nonexistent-lib"}, 0, "x", "", "iso", "iso", False, {}))[
        0] == "SR_BACKEND_FAILURE_226"
    assert set(await srv("SR.get_all")) == before
    sr = await new_sr(srv, "file", location=str(tmp_path / "sr1"))
    again = await srv.error("SR.create", h, {"location": str(tmp_path / "sr1")}, 0, "x", "", "file", "", False, {})
    assert again[0] == "SR_BACKEND_FAILURE_42"
    assert "<UUID>" + await srv("SR.get_uuid", sr) in await srv("SR.probe", h, {"location": str(tmp_path / "sr1")},
                                                                  "file", {})
    [found] = await srv("SR.probe_ext", h, {"location": str(tmp_path / "sr1")}, "file", {})
    assert found["sr"]["uuid"] == await srv("SR.get_uuid", sr) and found["complete"] is True


async def test_vdi_create_clone_snapshot_destroy_on_a_file_sr(srv: Api, tmp_path: Path) -> None:
    sr = await new_sr(srv, "file", location=str(tmp_path / "sr"))
    vdi = await new_vdi(srv, sr, 10 * GiB, name_label="big")
    rec = await srv("VDI.get_record", vdi)
    assert rec["virtual_size"] == 10 * GiB and rec["physical_utilisation"] < 10 * MiB
    assert rec["location"] == rec["uuid"] + ".qcow2" and (tmp_path / "sr" / rec["location"]).exists()
    assert rec["managed"] and not rec["missing"] and rec["SR"] == sr and "destroy" in rec["allowed_operations"]
    assert await srv("SR.get_virtual_allocation", sr) == 10 * GiB
    clone = await srv("VDI.clone", vdi, {})
    crec = await srv("VDI.get_record", clone)
    assert crec["name_label"] == "big" and not crec["is_a_snapshot"] and crec["physical_utilisation"] < 10 * MiB
    snap = await srv("VDI.snapshot", vdi, {})
    srec = await srv("VDI.get_record", snap)
    assert srec["is_a_snapshot"] and srec["snapshot_of"] == vdi and srec["snapshot_time"] != "19700101T00:00:00Z"
    assert await srv("VDI.get_snapshots", vdi) == [snap]
    assert set(await srv("SR.get_VDIs", sr)) == {vdi, clone, snap}
    await srv("VDI.resize", vdi, 12 * GiB)
    assert await srv("VDI.get_virtual_size", vdi) == 12 * GiB
    assert await srv.error("VDI.resize", vdi, GiB) == ["VDI_TOO_SMALL", vdi, str(12 * GiB)]
    await srv("VDI.destroy", clone)
    assert not (tmp_path / "sr" / crec["location"]).exists()
    assert await srv.error("VDI.get_record", clone) == ["HANDLE_INVALID", "VDI", clone]
    # a read-only ISO library refuses writes with the real error
    [iso] = await srv("SR.get_by_name_label", "ISO library")
    assert await srv.error("VDI.create", {"SR": iso, "virtual_size": GiB, "type": "user"}) == [
        "SR_OPERATION_NOT_SUPPORTED", iso]


async def test_sizes_full_sr_copy_with_progress(srv: Api, tmp_path: Path) -> None:
    small = await new_sr(srv, "sim", size=str(64 * MiB))
    big_file = await new_sr(srv, "file", location=str(tmp_path / "f"))
    vdi = await new_vdi(srv, small, 256 * MiB)  # thin: fine until written
    storage = srv.ctx.services["storage"]
    sim = storage.drivers["sim"]
    sim.write(await srv("SR.get_uuid", small), await srv("VDI.get_location", vdi), 0, b"hello" * 60_000)
    # copy across driver types, asynchronously, with progress on the task
    tasks = srv.ctx.tasks
    reported: list[float] = []
    original = tasks.set_progress
    tasks.set_progress = lambda ref, p: (reported.append(p), original(ref, p))  # type: ignore[method-assign]
    task = await srv.d.call("Async.VDI.copy", [srv.session, vdi, big_file, NULL, NULL], "json")
    rec = await wait_task(srv, task)
    tasks.set_progress = original  # type: ignore[method-assign]
    assert rec["status"] == "success", rec["error_info"]
    assert rec["progress"] == 1.0 and reported and reported[-1] == 1.0 and reported == sorted(reported)
    copied = rec["result"].split("<value>")[-1].split("</value>")[0]
    crec = await srv("VDI.get_record", copied)
    assert crec["SR"] == big_file and crec["virtual_size"] == 256 * MiB and not crec["read_only"]
    # and back into an existing VDI, which must be large enough
    target = await new_vdi(srv, small, 256 * MiB)
    assert await srv("VDI.copy", copied, NULL, NULL, target) == target
    loc = await srv("VDI.get_location", target)
    assert sim.read(await srv("SR.get_uuid", small), loc, 0, 5) == b"hello"
    tiny = await new_vdi(srv, small, MiB)
    assert await srv.error("VDI.copy", copied, NULL, NULL, tiny) == ["VDI_TOO_SMALL", tiny, str(256 * MiB)]
    tiny_sr = await new_sr(srv, "sim", size=str(128 * 1024))
    assert (await srv.error("VDI.copy", copied, tiny_sr, NULL, NULL))[0] == "SR_FULL"


async def test_vbd_create_checks(srv: Api) -> None:
    vm = await new_vm(srv)
    sr = await default_sr(srv)
    vdi = await new_vdi(srv, sr, MiB)
    first = await new_vbd(srv, vm, vdi)
    assert await srv("VBD.get_userdevice", first) == "0"
    assert await srv("VM.get_allowed_VBD_devices", vm) == [
        str(i) for i in range(1, 12)]
    other = await new_vdi(srv, sr, MiB)
    assert await srv.error("VBD.create", {"VM": vm, "VDI": other, "userdevice": "0", "mode": "RW", "type": "Disk"}) == [
        "DEVICE_ALREADY_EXISTS", "0"]
    named = await srv.error("VBD.create", {"VM": vm, "VDI": other, "userdevice": "xvda", "type": "Disk"})
    assert named == ["DEVICE_ALREADY_EXISTS", "xvda"]
    assert await srv.error("VBD.create", {"VM": vm, "VDI": other, "userdevice": "42", "type": "Disk"}) == [
        "INVALID_DEVICE", "42"]
    assert await srv.error("VBD.create", {"VM": vm, "VDI": NULL, "empty": True, "type": "CD", "mode": "RW"}) == [
        "VBD_CDS_MUST_BE_READONLY"]
    assert await srv.error("VBD.create", {"VM": vm, "VDI": NULL, "empty": True, "type": "Disk"}) == [
        "VBD_NOT_REMOVABLE_MEDIA", "in constructor"]
    assert await srv.error("VBD.create", {"VM": vm, "VDI": other, "type": "CD", "mode": "RO"}) == [
        "VDI_IS_NOT_ISO", other, "user"]
    assert await srv.error("VBD.create", {"VM": vm, "VDI": "OpaqueRef:nope", "type": "Disk"}) == [
        "HANDLE_INVALID", "VDI", "OpaqueRef:nope"]
    await srv("VDI.set_read_only", other, True)
    assert await srv.error("VBD.create", {"VM": vm, "VDI": other, "type": "Disk", "mode": "RW"}) == [
        "VDI_READONLY", other]
    cd = await srv("VBD.create", {"VM": vm, "VDI": NULL, "empty": True, "type": "CD", "mode": "RO",
                                  "userdevice": "autodetect"})
    assert await srv("VBD.get_userdevice", cd) == "1"


async def test_start_attaches_halt_detaches_and_rw_disks_are_exclusive(srv: Api) -> None:
    sr = await default_sr(srv)
    vdi = await new_vdi(srv, sr, GiB)
    vm1, vm2 = await new_vm(srv), await new_vm(srv)
    vbd1 = await new_vbd(srv, vm1, vdi, bootable=True)
    vbd2 = await new_vbd(srv, vm2, vdi)
    await srv("VM.start", vm1, False, False)
    rec = await srv("VBD.get_record", vbd1)
    assert rec["currently_attached"] and rec["device"] == "xvda"
    assert {"unplug", "unplug_force"} <= set(rec["allowed_operations"]) and "plug" not in rec["allowed_operations"]
    uuid = await srv("VM.get_uuid", vm1)
    hv = srv.ctx.services["hypervisor"]
    [disk] = hv._dom(uuid).spec.disks
    [pbd] = await srv("SR.get_PBDs", sr)
    root = Path((await srv("PBD.get_device_config", pbd))["location"])
    assert disk.path == str(root / await srv("VDI.get_location", vdi)) and disk.format == "qcow2" and disk.bootable
    assert await srv.error("VDI.destroy", vdi) == ["VDI_IN_USE", vdi, "destroy"]
    assert "destroy" not in await srv("VDI.get_allowed_operations", vdi)
    assert await srv.error("VM.start", vm2, False, False) == ["VDI_IN_USE", vdi, "attach"]
    assert await srv("VM.get_power_state", vm2) == "Halted" and not await srv("VBD.get_currently_attached", vbd2)
    assert await srv.error("VBD.destroy", vbd1) == [
        "OPERATION_NOT_ALLOWED", f"VBD '{await srv('VBD.get_uuid', vbd1)}' still attached to '{uuid}'"]
    assert await srv.error("PBD.unplug", pbd) == ["VDI_IN_USE", vdi, "unplug"]
    await srv("VM.suspend", vm1)
    assert not await srv("VBD.get_currently_attached", vbd1)
    await srv("VM.resume", vm1, False, False)
    assert await srv("VBD.get_currently_attached", vbd1)
    await srv("VM.hard_shutdown", vm1)
    assert not await srv("VBD.get_currently_attached", vbd1)
    await srv("VM.start", vm2, False, False)  # now free
    await srv("VM.hard_shutdown", vm2)
    await srv("VDI.destroy", vdi)
    assert not await srv("VBD.get_all_records_where", f'field "VDI" = "{vdi}"')


async def test_hotplug_unplug_and_their_errors(srv: Api) -> None:
    sr = await new_sr(srv)
    vm = await new_vm(srv)
    vdi = await new_vdi(srv, sr, GiB)
    vbd = await new_vbd(srv, vm, vdi, device="2")
    assert await srv.error("VBD.plug", vbd) == ["VM_BAD_POWER_STATE", vm, "running", "halted"]
    await srv("VBD.destroy", vbd)
    await srv("VM.start", vm, False, False)
    vbd = await new_vbd(srv, vm, vdi, device="2")  # made while the VM runs: not plugged until asked
    assert not await srv("VBD.get_currently_attached", vbd)
    assert await srv.error("VBD.unplug", vbd) == ["DEVICE_ALREADY_DETACHED", vbd]
    await srv("VBD.plug", vbd)
    uuid = await srv("VM.get_uuid", vm)
    hv = srv.ctx.services["hypervisor"]
    assert 2 in (await hv.stats(uuid)).disks and await srv("VBD.get_device", vbd) == "xvdc"
    assert await srv.error("VBD.plug", vbd) == ["DEVICE_ALREADY_ATTACHED", vbd]
    assert await srv.error("VDI.resize", vdi, 2 * GiB) == ["VDI_IN_USE", vdi, "resize"]
    snap = await srv("VDI.snapshot", vdi, {})  # live: the running disk moves onto a new overlay
    assert await srv("VDI.get_snapshot_of", snap) == vdi
    await srv("VBD.set_unpluggable", vbd, False)
    assert await srv.error("VBD.unplug", vbd) == ["VBD_NOT_UNPLUGGABLE", vbd]
    await srv("VBD.set_unpluggable", vbd, True)
    await srv("VBD.unplug", vbd)
    assert 2 not in (await hv.stats(uuid)).disks and not await srv("VBD.get_currently_attached", vbd)
    # plugged disks survive a suspend/resume cycle (the saved spec follows hot-plugs)
    await srv("VBD.plug", vbd)
    await srv("VM.suspend", vm)
    await srv("VM.resume", vm, False, False)
    assert 2 in (await hv.stats(uuid)).disks and await srv("VBD.get_currently_attached", vbd)
    await srv("VBD.unplug_force", vbd)
    await srv("VDI.resize_online", vdi, 2 * GiB)
    assert await srv("VDI.get_virtual_size", vdi) == 2 * GiB
    await srv("VM.hard_shutdown", vm)


async def test_cd_insert_eject_and_iso_scan(srv: Api) -> None:
    [iso_sr] = await srv("SR.get_by_name_label", "ISO library")
    (srv.ctx.config.data_dir / "iso" / "install.iso").write_bytes(b"\0" * MiB)
    await srv("SR.scan", iso_sr)
    [iso] = await srv("VDI.get_by_name_label", "install.iso")
    rec = await srv("VDI.get_record", iso)
    assert rec["read_only"] and rec["virtual_size"] == MiB and rec["location"] == "install.iso"
    vm = await new_vm(srv)
    cd = await srv("VBD.create", {"VM": vm, "VDI": NULL, "empty": True, "type": "CD", "mode": "RO",
                                  "userdevice": "3"})
    disk = await new_vbd(srv, vm, await new_vdi(srv, await default_sr(srv), MiB))
    assert await srv.error("VBD.eject", cd) == ["VBD_IS_EMPTY", cd]
    assert await srv.error("VBD.insert", disk, iso) == ["VBD_NOT_REMOVABLE_MEDIA", disk]
    await srv("VBD.insert", cd, iso)
    assert await srv.error("VBD.insert", cd, iso) == ["VBD_NOT_EMPTY", cd]
    await srv("VM.start", vm, False, False)
    hv = srv.ctx.services["hypervisor"]
    uuid = await srv("VM.get_uuid", vm)
    drive = next(d for d in hv._dom(uuid).spec.disks if d.device == 3)
    assert drive.is_cdrom and drive.path and drive.path.endswith("install.iso") and drive.read_only
    assert await srv("VBD.get_device", cd) == "hdd"
    await srv("VBD.eject", cd)
    assert next(d for d in hv._dom(uuid).spec.disks if d.device == 3).path is None
    assert await srv("VBD.get_empty", cd) and await srv("VBD.get_VDI", cd) == NULL
    await srv("VBD.insert", cd, iso)
    assert next(d for d in hv._dom(uuid).spec.disks if d.device == 3).path.endswith("install.iso")
    assert (await srv.error("VBD.plug", cd))[0] == "DEVICE_ALREADY_ATTACHED"
    await srv("VM.hard_shutdown", vm)
    (srv.ctx.config.data_dir / "iso" / "install.iso").unlink()
    await srv("SR.scan", iso_sr)
    assert await srv("VDI.get_missing", iso)  # still named by the CD drive: kept, marked missing
    await srv("VBD.eject", cd)
    await srv("SR.scan", iso_sr)
    assert await srv("VDI.get_by_name_label", "install.iso") == []


async def test_scan_picks_up_files_added_and_removed_behind_our_back(srv: Api, tmp_path: Path) -> None:
    sr = await new_sr(srv, "file", location=str(tmp_path / "s"))
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "s" / "dropped.qcow2"), "1G"],
                   check=True)
    await srv("SR.scan", sr)
    [vdi] = await srv("VDI.get_by_name_label", "dropped.qcow2")
    assert await srv("VDI.get_virtual_size", vdi) == GiB and await srv("VDI.get_SR", vdi) == sr
    (tmp_path / "s" / "dropped.qcow2").unlink()
    await srv("SR.scan", sr)
    assert await srv.error("VDI.get_record", vdi) == ["HANDLE_INVALID", "VDI", vdi]


async def test_sr_destroy_forget_introduce(srv: Api, tmp_path: Path) -> None:
    where = str(tmp_path / "d")
    sr = await new_sr(srv, "file", location=where)
    vdi = await new_vdi(srv, sr, GiB)
    location = await srv("VDI.get_location", vdi)
    [pbd] = await srv("SR.get_PBDs", sr)
    assert await srv.error("SR.destroy", sr) == ["SR_HAS_PBD", sr]
    assert await srv.error("SR.forget", sr) == ["SR_HAS_PBD", sr]
    assert await srv.error("PBD.destroy", pbd) == ["OPERATION_NOT_ALLOWED", "PBD is currently attached"]
    assert (await srv.error("PBD.create", {"host": await host(srv), "SR": sr, "device_config": {}}))[0] == "PBD_EXISTS"
    await srv("PBD.unplug", pbd)
    assert await srv.error("SR.scan", sr) == ["SR_HAS_NO_PBDS", sr]
    assert await srv.error("VDI.create", {"SR": sr, "virtual_size": GiB, "type": "user"}) == ["SR_HAS_NO_PBDS", sr]
    assert await srv.error("SR.destroy", sr) == ["SR_NOT_EMPTY"]
    await srv("SR.forget", sr)
    assert await srv.error("VDI.get_record", vdi) == ["HANDLE_INVALID", "VDI", vdi]
    # the data outlived the records: introduce the SR again and plug a new PBD
    uuid = (await srv("SR.probe_ext", await host(srv), {"location": where}, "file", {}))[0]["sr"]["uuid"]
    again = await srv("SR.introduce", uuid, "back", "", "file", "user", False, {})
    assert await srv.error("SR.introduce", uuid, "twice", "", "file", "user", False, {}) == ["SR_UUID_EXISTS", uuid]
    pbd = await srv("PBD.create", {"host": await host(srv), "SR": again, "device_config": {"location": where}})
    await srv("PBD.plug", pbd)
    [back] = await srv("SR.get_VDIs", again)
    assert await srv("VDI.get_location", back) == location
    await srv("VDI.forget", back)
    assert await srv("SR.get_VDIs", again) == []
    missing = await srv.error("VDI.introduce", "", "", "", again, "user", False, False, {}, "nope.qcow2", {}, {},
                              True, 0, 0, NULL, False, "19700101T00:00:00Z", NULL)
    assert missing == ["VDI_LOCATION_MISSING", again, "nope.qcow2"]
    intro = await srv("VDI.introduce", "", "re", "", again, "user", False, False, {}, location, {}, {}, True,
                      0, 0, NULL, False, "19700101T00:00:00Z", NULL)
    assert await srv("VDI.get_virtual_size", intro) == GiB
    assert (await srv.error("VDI.introduce", "", "re", "", again, "user", False, False, {}, location, {}, {}, True,
                            0, 0, NULL, False, "19700101T00:00:00Z", NULL)) == ["LOCATION_NOT_UNIQUE", again, location]
    await srv("VDI.destroy", intro)
    await srv("PBD.unplug", pbd)
    await srv("SR.destroy", again)
    assert not Path(where).exists()
    assert await srv.error("SR.get_record", again) == ["HANDLE_INVALID", "SR", again]


async def test_provision_clone_and_copy_of_vms_with_disks(srv: Api, tmp_path: Path) -> None:
    templates = await srv("VM.get_by_name_label", "Other install media")
    [other] = [t for t in templates if await srv("VM.get_is_a_template", t)]
    vm = await srv("VM.clone", other, "installed")
    await srv("VM.provision", vm)
    [vbd] = await srv("VM.get_VBDs", vm)
    rec = await srv("VBD.get_record", vbd)
    vdi = rec["VDI"]
    vrec = await srv("VDI.get_record", vdi)
    assert vrec["virtual_size"] == 8 * GiB and vrec["SR"] == await default_sr(srv) and vrec["type"] == "system"
    assert vrec["name_label"] == "0" and vrec["name_description"] == "Created by template provisioner"
    assert rec["bootable"] and rec["userdevice"] == "0" and not rec["unpluggable"]
    assert "disks" not in await srv("VM.get_other_config", vm)
    clone = await srv("VM.clone", vm, "clone")
    [cvbd] = await srv("VM.get_VBDs", clone)
    cvdi = await srv("VBD.get_VDI", cvbd)
    assert cvdi != vdi and await srv("VDI.get_physical_utilisation", cvdi) < 10 * MiB
    elsewhere = await new_sr(srv, "file", location=str(tmp_path / "elsewhere"))
    copy = await srv("VM.copy", vm, "copy", elsewhere)
    [copy_vbd] = await srv("VM.get_VBDs", copy)
    copied = await srv("VBD.get_VDI", copy_vbd)
    assert await srv("VDI.get_SR", copied) == elsewhere and await srv("VDI.get_virtual_size", copied) == 8 * GiB
    # no SR to provision on
    await srv("pool.set_default_SR", srv.ctx.pool_ref, NULL)
    again = await srv("VM.clone", other, "nowhere")
    assert await srv.error("VM.provision", again) == ["DEFAULT_SR_NOT_FOUND", NULL]


@pytest.mark.parametrize("kind", ["sim", "file"])
async def test_on_boot_reset_discards_writes_at_each_start(srv: Api, kind: str, tmp_path: Path) -> None:
    sr = await new_sr(srv, kind, **({"location": str(tmp_path / "r")} if kind == "file" else {}))
    vdi = await new_vdi(srv, sr, GiB)
    sr_uuid = await srv("SR.get_uuid", sr)
    root = tmp_path / "r"

    def write(data: bytes) -> None:
        location = srv.ctx.store.get("VDI", vdi)["location"]
        if kind == "sim":
            srv.ctx.services["storage"].drivers["sim"].write(sr_uuid, location, 0, data)
        else:
            subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {data[0]} 0 64k", str(root / location)],
                           check=True, capture_output=True)

    def read() -> bytes:
        location = srv.ctx.store.get("VDI", vdi)["location"]
        if kind == "sim":
            return bytes(srv.ctx.services["storage"].drivers["sim"].read(sr_uuid, location, 0, 1))
        out = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read -v 0 1", str(root / location)],
                             check=True, capture_output=True, text=True).stdout
        return bytes([int(out.split(":", 1)[1].split()[0], 16)])

    write(b"\x11")
    await srv("VDI.set_on_boot", vdi, "reset")
    assert await srv.error("VDI.snapshot", vdi, {}) == ["VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION"]
    vm = await new_vm(srv)
    await new_vbd(srv, vm, vdi)
    for _ in range(3):
        await srv("VM.start", vm, False, False)
        assert read() == b"\x11"
        write(b"\x22")  # the guest writes; the next boot starts from the reset point again
        await srv("VM.hard_shutdown", vm)
    await srv("SR.scan", sr)
    assert await srv("SR.get_VDIs", sr) == [vdi]  # the hidden base never shows
    await srv("VDI.set_on_boot", vdi, "persist")
    await srv("VDI.destroy", vdi)
    await srv("SR.scan", sr)
    assert await srv("SR.get_VDIs", sr) == []


async def test_restart_reattaches_and_rescans(tmp_path: Path) -> None:
    from pyxapi.auth import AccountFile
    from pyxapi.context import Config
    from pyxapi.main import ensure_root_account

    config = Config(data_dir=tmp_path, hypervisor="sim")
    ensure_root_account(AccountFile(tmp_path / "accounts.json"))
    ctx, d = build(config)
    await ctx.services["storage"].start()
    a = Api(ctx, d)
    a.session = ctx.sessions.open("root", "pool-admin")
    sr = await default_sr(a)
    vdi = await new_vdi(a, sr, GiB)
    location = await a("VDI.get_location", vdi)
    await ctx.services["storage"].stop()
    ctx.store._log.close()
    # a second daemon on the same data directory
    ctx2, d2 = build(config)
    await ctx2.services["storage"].start()
    b = Api(ctx2, d2)
    b.session = ctx2.sessions.open("root", "pool-admin")
    assert await b("pool.get_default_SR", ctx2.pool_ref) == sr
    assert await b("VDI.get_location", vdi) == location
    assert await b("PBD.get_currently_attached", (await b("SR.get_PBDs", sr))[0])
    assert len([r for r in (await b("SR.get_all_records")).values() if r["name_label"] == "Local storage"]) == 1
    await b("VDI.destroy", vdi)
    await ctx2.services["storage"].stop()
