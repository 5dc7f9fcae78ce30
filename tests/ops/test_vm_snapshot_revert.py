"""VM.revert to snapshots and checkpoints, VM.destroy of snapshots, and the file SR's chains across
both (no orphaned image, none freed while something backs on it, unused layers merged by a
background SR.coalesce task), through dispatch on the simulated hypervisor."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from pyxapi.drivers.storage.filechain import list_images, referenced, visible
from tests.ops.test_storage_ops import NULL, GiB, new_sr, new_vbd, new_vdi, srv  # noqa: F401 - fixture
from tests.ops.test_vm_power import Api, api  # noqa: F401 - the fixture
from tests.ops.test_vm_snapshot import Disks, disks, guest, vbd_disks  # noqa: F401 - fixture


async def coalesced(server: Api) -> None:
    """Wait until every background SR.coalesce task has finished, and check none failed."""
    await asyncio.sleep(0)  # a coalesce just spawned records its task as soon as it runs
    for _ in range(3000):
        tasks = [r for _, r in server.ctx.store.items("task") if r["name_label"] == "SR.coalesce"]
        if all(t["status"] != "pending" for t in tasks):
            assert all(t["status"] == "success" for t in tasks), [t["error_info"] for t in tasks]
            return
        await asyncio.sleep(0.01)
    raise AssertionError("coalesce still running")


def check_chains(server: Api, sr: str, root: Path) -> dict[str, int]:
    """Every image in the SR is a VDI, a base something still backs on, or nothing of ours; returns
    each visible image's chain depth."""
    images = list_images(str(root))
    store = server.ctx.store
    records = {store.get("VDI", v)["location"] for v in store.get("SR", sr)["VDIs"]}
    assert {img.name for img in visible(images)} == records
    used = referenced(images.values())
    assert all(img.name in used for img in images.values() if img.is_base), "an orphaned base"
    assert all(b in images for b in used), "an image freed while something backs on it"
    for img in images.values():  # overlays are written without qemu-img: qemu-img must find them sound
        check = subprocess.run(
            ["qemu-img", "check", "-U", "-f", img.format, str(root / img.name)], capture_output=True, text=True
        )
        assert check.returncode == 0, (img.name, check.stdout, check.stderr)
    depth = {}
    for img in visible(images):
        n, cur = 0, img
        while cur.backing:
            n, cur = n + 1, images[cur.backing]
        depth[img.name] = n
    return depth


async def test_revert_brings_disks_and_config_back(srv: Api, disks: tuple[Disks, str]) -> None:  # noqa: F811
    data, sr = disks
    vm, [d0, d1] = await guest(srv, sr)
    data.write(d0, 0x11)
    data.write(d1, 0x12)
    vif = (await srv("VM.get_VIFs", vm))[0]
    mac = await srv("VIF.get_MAC", vif)
    snap = await srv("VM.snapshot", vm, "s1", [])
    snap_disks = vbd_disks(srv, snap)
    # life goes on: data, configuration and devices change
    data.write(d0, 0x21)
    await srv("VM.set_name_description", vm, "changed")
    await srv("VM.add_to_other_config", vm, "later", "yes")
    d2 = await new_vdi(srv, sr, GiB, name_label="added later")
    await new_vbd(srv, vm, d2, device="2")
    task = await srv("Async.VM.revert", snap)
    for _ in range(3000):
        if srv.ctx.store.get("task", task)["status"] != "pending":
            break
        await asyncio.sleep(0.01)
    done = srv.ctx.store.get("task", task)
    assert done["status"] == "success" and done["progress"] == 1.0, done["error_info"]
    rec = await srv("VM.get_record", vm)
    assert rec["power_state"] == "Halted" and rec["name_label"] == "v" and not rec["is_a_template"]
    assert rec["name_description"] == "original" and "later" not in rec["other_config"]
    assert rec["parent"] == snap and rec["snapshots"] == [snap]
    now = vbd_disks(srv, vm)
    assert set(now) == {"0", "1"} and set(now.values()).isdisjoint({d0, d1, *snap_disks.values()})
    assert data.read(now["0"]) == 0x11 and data.read(now["1"]) == 0x12
    assert not srv.ctx.store.exists("VDI", d0) and not srv.ctx.store.exists("VDI", d1)  # replaced: destroyed
    assert await srv("VDI.get_VBDs", d2) == []  # no counterpart in the snapshot: kept, detached
    assert [await srv("VDI.get_snapshot_of", snap_disks[k]) for k in ("0", "1")] == [now["0"], now["1"]]
    assert (await srv("VIF.get_MAC", rec["VIFs"][0])) == mac
    cds = [b for b in rec["VBDs"] if await srv("VBD.get_type", b) == "CD"]
    assert [await srv("VBD.get_VDI", b) for b in cds] == await srv("VDI.get_by_name_label", "tools.iso")
    # the snapshot itself is untouched: revert to it again
    data.write(now["0"], 0x31)
    await srv("VM.revert", snap)
    again = vbd_disks(srv, vm)
    assert data.read(again["0"]) == 0x11 and data.read(snap_disks["0"]) == 0x11
    if data.kind == "file":
        await srv("VDI.destroy", d2)
        await coalesced(srv)
        check_chains(srv, sr, data.root)


async def test_revert_halts_a_running_vm_first(srv: Api) -> None:  # noqa: F811
    sr = await new_sr(srv)
    vm, _ = await guest(srv, sr, n_disks=1, cd=False)
    snap = await srv("VM.snapshot", vm, "halted state", [])
    await srv("VM.start", vm, False, False)
    uuid = await srv("VM.get_uuid", vm)
    await srv("VM.revert", snap)
    assert await srv("VM.get_power_state", vm) == "Halted"
    assert uuid not in srv.ctx.services["hypervisor"].host.domains
    assert await srv("VM.get_current_operations", vm) == {} and await srv("VM.get_current_operations", snap) == {}
    await srv("VM.start", vm, False, False)  # and it boots from the reverted disks
    await srv("VM.hard_shutdown", vm)


async def test_revert_to_a_checkpoint_then_resume_continues_there(srv: Api) -> None:  # noqa: F811
    sr = await new_sr(srv)
    data = Disks(srv, "sim", Path())
    vm, [d0, _] = await guest(srv, sr)
    await srv("VM.start", vm, False, False)
    hv = srv.ctx.services["hypervisor"]
    uuid = await srv("VM.get_uuid", vm)
    hv.guest_write_file(uuid, "/root/progress", "at checkpoint")
    data.write(d0, 0x41)
    cp = await srv("VM.checkpoint", vm, "cp")
    hv.guest_write_file(uuid, "/root/progress", "later")
    data.write(d0, 0x42)
    await srv("VM.revert", cp)
    rec = await srv("VM.get_record", vm)
    assert rec["power_state"] == "Suspended" and uuid not in hv.host.domains
    assert rec["suspend_VDI"] not in (NULL, await srv("VM.get_suspend_VDI", cp))
    assert "resume" in rec["allowed_operations"]
    await srv("VM.resume", vm, False, False)
    assert await srv("VM.get_power_state", vm) == "Running"
    assert hv.guest_read_file(uuid, "/root/progress") == "at checkpoint"  # memory as it was
    assert data.read(vbd_disks(srv, vm)["0"]) == 0x41  # and the disk of the same instant
    assert await srv("VM.get_suspend_VDI", vm) == NULL
    # the checkpoint can be gone back to again, and again
    hv.guest_write_file(uuid, "/root/progress", "even later")
    await srv("VM.revert", cp)
    await srv("VM.resume", vm, False, False)
    assert hv.guest_read_file(uuid, "/root/progress") == "at checkpoint"
    await srv("VM.hard_shutdown", vm)


async def test_destroying_snapshots_keeps_the_tree_and_frees_the_layers(srv: Api, tmp_path: Path) -> None:  # noqa: F811
    root = tmp_path / "chain"
    sr = await new_sr(srv, "file", location=str(root))
    data = Disks(srv, "file", root)
    vm, [d0] = await guest(srv, sr, n_disks=1, cd=False, vif=False)
    snaps = []
    for i in range(3):
        data.write(d0, 0x50 + i)
        snaps.append(await srv("VM.snapshot", vm, f"s{i}", []))
    s0, s1, s2 = snaps
    assert [await srv("VM.get_parent", x) for x in (s0, s1, s2, vm)] == [NULL, s0, s1, s2]
    assert check_chains(srv, sr, root)[await srv("VDI.get_location", d0)] == 3
    # destroying the middle snapshot closes the tree over it; its disk stays a VDI until destroyed
    s1_disk = vbd_disks(srv, s1)["0"]
    await srv("VM.destroy", s1)
    assert await srv("VM.get_parent", s2) == s0 and await srv("VM.get_children", s0) == [s2]
    assert srv.ctx.store.exists("VDI", s1_disk) and await srv("VDI.get_VBDs", s1_disk) == []
    # while the VM runs, nothing under its disk is merged or freed
    await srv("VM.start", vm, False, False)
    await srv("VDI.destroy", s1_disk)
    await coalesced(srv)
    check_chains(srv, sr, root)
    assert check_chains(srv, sr, root)[await srv("VDI.get_location", d0)] == 3
    await srv("VM.hard_shutdown", vm)
    # halted, an SR.scan lets the garbage collector merge what nothing else uses
    await srv("SR.scan", sr)
    await coalesced(srv)
    assert check_chains(srv, sr, root)[await srv("VDI.get_location", d0)] == 2
    assert [t for _, t in srv.ctx.store.items("task") if t["name_label"] == "SR.coalesce"]
    # the last snapshots go, with their disks: one image is left, with everything the VM wrote
    for snap in (s2, s0):
        disk = vbd_disks(srv, snap)["0"]
        await srv("VM.destroy", snap)
        await srv("VDI.destroy", disk)
    await coalesced(srv)
    assert await srv("VM.get_parent", vm) == NULL and await srv("VM.get_snapshots", vm) == []
    assert check_chains(srv, sr, root) == {await srv("VDI.get_location", d0): 0}
    assert data.read(d0) == 0x52


async def test_revert_makes_a_destroyed_vm_again(srv: Api) -> None:  # noqa: F811
    sr = await new_sr(srv)
    data = Disks(srv, "sim", Path())
    vm, [d0] = await guest(srv, sr, n_disks=1, cd=False)
    data.write(d0, 0x61)
    uuid = await srv("VM.get_uuid", vm)
    snap = await srv("VM.snapshot", vm, "survivor", [])
    other = await srv("VM.snapshot", vm, "sibling", [])
    await srv("VM.destroy", vm)
    assert not srv.ctx.store.exists("VM", await srv("VM.get_snapshot_of", snap))  # dangling, as in xapi
    await srv("VM.revert", snap)
    again = await srv("VM.get_by_uuid", uuid)  # with its old uuid and name
    rec = await srv("VM.get_record", again)
    assert rec["name_label"] == "v" and not rec["is_a_snapshot"] and not rec["is_a_template"]
    assert sorted(rec["snapshots"]) == sorted([snap, other]) and rec["parent"] == snap
    assert data.read(vbd_disks(srv, again)["0"]) == 0x61


async def test_a_failed_revert_leaves_the_vm_and_says_why(srv: Api) -> None:  # noqa: F811
    sr = await new_sr(srv)
    vm, [d0] = await guest(srv, sr, n_disks=1, cd=False, vif=False)
    snap = await srv("VM.snapshot", vm, "s", [])
    [pbd] = await srv("SR.get_PBDs", sr)
    await srv("PBD.unplug", pbd)  # the snapshot's disk cannot be cloned now
    assert await srv.error("VM.revert", snap) == ["VM_REVERT_FAILED", vm, snap]
    assert vbd_disks(srv, vm) == {"0": d0} and srv.ctx.store.exists("VDI", d0)
    assert await srv("VM.get_power_state", vm) == "Halted"
    assert await srv("VM.get_current_operations", vm) == {} and await srv("VM.get_current_operations", snap) == {}
    await srv("PBD.plug", pbd)
    await srv("VM.revert", snap)
    assert vbd_disks(srv, vm)["0"] != d0
