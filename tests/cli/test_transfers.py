"""Files through the daemon's HTTP handlers: vm-export/-import (XVA), vdi-export/-import
(raw), each tied to a task; existing files are never overwritten; errors as xe prints them."""

from __future__ import annotations

import os
from pathlib import Path

import XenAPI

from tests.cli.conftest import Xe


def test_vm_export_then_import(xe: Xe, api: XenAPI.Session, tmp_path: Path) -> None:
    vm = xe.one("vm-install", "template=pyxapi test guest", "new-name-label=travelling")
    xe.ok("vm-disk-add", f"uuid={vm}", "disk-size=8MiB", "device=1")
    xva = tmp_path / "travelling.xva"
    tasks_before = set(api.xenapi.task.get_all())
    assert xe.ok("vm-export", "vm=travelling", f"filename={xva}") == "Export succeeded\n"
    assert xva.stat().st_size > 0 and (xva.stat().st_mode & 0o777) == 0o600
    with open(xva, "rb") as f:
        assert b"ova.xml" in f.read(512)  # a tar stream whose first member is ova.xml
    r = xe("vm-export", "vm=travelling", f"filename={xva}")  # never overwrites a file
    assert (r.rc, r.err) == (1, f"Operation failed. Error: {xva}: File exists\n")
    new = xe.one("vm-import", f"filename={xva}")
    assert new != vm
    ref = api.xenapi.VM.get_by_uuid(new)
    assert api.xenapi.VM.get_name_label(ref) == "travelling"
    disks = [v for v in api.xenapi.VM.get_VBDs(ref) if api.xenapi.VBD.get_type(v) == "Disk"]
    assert len(disks) == 1
    assert set(api.xenapi.task.get_all()) <= tasks_before | set()  # every transfer task was destroyed
    r = xe("vm-import", f"filename={tmp_path / 'missing.xva'}")
    assert (r.rc, r.err) == (1, f"Operation failed. Error: file '{tmp_path / 'missing.xva'}' does not exist\n")
    garbage = tmp_path / "garbage.xva"
    garbage.write_bytes(os.urandom(4096))
    r = xe("vm-import", f"filename={garbage}")
    assert r.rc == 1 and r.err  # the import's error, from the task, as xe prints it


def test_vdi_export_then_import_raw(xe: Xe, tmp_path: Path) -> None:
    sr = xe.one("sr-list", "name-label=Local storage", "--minimal")
    source = xe.one("vdi-create", f"sr-uuid={sr}", "name-label=src", "virtual-size=4MiB")
    image = tmp_path / "disk.raw"
    payload = os.urandom(1 << 20) + b"\0" * (3 << 20)
    image.write_bytes(payload)
    assert xe.ok("vdi-import", f"uuid={source}", f"filename={image}", "format=raw") == ""
    back = tmp_path / "back.raw"
    assert xe.ok("vdi-export", f"uuid={source}", f"filename={back}", "format=raw") == ""
    assert back.read_bytes() == payload
    target = xe.one("vdi-create", f"sr-uuid={sr}", "name-label=dst", "virtual-size=4MiB")
    xe.ok("vdi-import", f"uuid={target}", f"filename={back}")
    again = tmp_path / "again.raw"
    xe.ok("vdi-export", f"uuid={target}", f"filename={again}")
    assert again.read_bytes() == payload
    too_big = tmp_path / "big.raw"
    too_big.write_bytes(b"\1" * (8 << 20))
    r = xe("vdi-import", f"uuid={target}", f"filename={too_big}")
    assert r.rc == 1 and r.err  # the handler's refusal (VDI too small), as xe prints it
    assert again.read_bytes() == payload


def test_export_progress_bar_only_when_asked_or_on_a_terminal(xe: Xe, tmp_path: Path) -> None:
    sr = xe.one("sr-list", "name-label=Local storage", "--minimal")
    vdi = xe.one("vdi-create", f"sr-uuid={sr}", "name-label=bar", "virtual-size=2MiB")
    r = xe("vdi-export", f"uuid={vdi}", f"filename={tmp_path / 'quiet.raw'}")
    assert (r.rc, r.err) == (0, "")  # stderr is not a terminal here: nothing drawn
    r = xe("vdi-export", f"uuid={vdi}", f"filename={tmp_path / 'loud.raw'}", "--progress")
    assert r.rc == 0 and "100%" in r.err and r.err.endswith("\n")
