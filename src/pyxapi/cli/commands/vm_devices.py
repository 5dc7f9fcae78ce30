"""A VM's disks, CD drives and network interfaces: vm-disk-*, vm-cd-*, vm-vif-list, cd-list."""

from __future__ import annotations

import contextlib

from pyxapi.cli.errors import ApiFailure, CliFailure
from pyxapi.cli.records import NULL, CliRecord, choose_params, select_fields
from pyxapi.cli.selectors import do_op
from pyxapi.cli.table import class_spec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from pyxapi.cli.ctx import Ctx

XE_DISK_NAME = "Created by xe"


def vbd_record(vm: str, vdi: str, device: str, mode: str, kind: str, owner: bool = False) -> dict[str, Any]:
    return {
        "VM": vm,
        "VDI": vdi,
        "userdevice": device,
        "bootable": False,
        "mode": mode,
        "type": kind,
        "unpluggable": True,
        "empty": vdi == NULL,
        "other_config": {"owner": ""} if owner else {},
        "qos_algorithm_type": "",
        "qos_algorithm_params": {},
        "device": "",
        "currently_attached": False,
    }


def create_and_plug(c: Ctx, record: dict[str, Any]) -> str:
    """Create the VBD and hot-plug it when the VM runs (a halted VM simply keeps it)."""
    vbd = str(c.call("VBD.create", record))
    with contextlib.suppress(ApiFailure):
        c.call("VBD.plug", vbd)
    return vbd


def vm_disk_add(c: Ctx) -> None:
    """Add a new disk of disk-size= (e.g. 4GiB) as device= (a number, e.g. 1) to the selected
    VM(s), on sr-uuid= or the pool's default SR. Hot-plugged into running VMs."""
    size = c.size("disk-size")
    device = c.req("device")
    if c.has("sr-uuid"):
        sr = c.by_uuid("SR", c.req("sr-uuid"))
    else:
        default = c.default_sr()
        if default is None:
            raise CliFailure("No default Pool SR set; you must specify an SR on the commandline")
        sr = default

    def op(vm: CliRecord) -> None:
        vdi = str(
            c.call(
                "VDI.create",
                {
                    "name_label": XE_DISK_NAME,
                    "name_description": XE_DISK_NAME,
                    "SR": sr,
                    "virtual_size": size,
                    "type": "user",
                    "sharable": False,
                    "read_only": False,
                    "other_config": {},
                    "xenstore_data": {},
                    "sm_config": {"vm_hint": vm.rec["uuid"]},
                    "tags": [],
                },
            )
        )
        try:
            create_and_plug(c, vbd_record(vm.ref, vdi, device, "RW", "Disk", owner=True))
        except (ApiFailure, CliFailure):
            c.call("VDI.destroy", vdi)
            raise

    do_op(c, "vm", op, ["sr-uuid", "device", "disk-size"])


def _vbd_with_device(c: Ctx, vm: CliRecord, device: str) -> str:
    for vbd in vm.rec["VBDs"]:
        if c.call("VBD.get_userdevice", vbd) == device:
            return str(vbd)
    raise CliFailure("Disk not found")


def vm_disk_remove(c: Ctx) -> None:
    """Remove the disk at device= from the selected VM and destroy it."""

    def op(vm: CliRecord) -> None:
        vbd = _vbd_with_device(c, vm, c.req("device"))
        vdi = c.call("VBD.get_VDI", vbd)
        c.call("VBD.destroy", vbd)
        c.call("VDI.destroy", vdi)

    do_op(c, "vm", op, ["device"])


def _disk_list(c: Ctx, vm: CliRecord, cds: bool) -> None:
    vbd_spec, vdi_spec = class_spec("vbd"), class_spec("vdi")
    vbd_fields = select_fields(
        vbd_spec,
        choose_params(
            c.opt("vbd-params"),
            ["uuid", "vm-name-label", "userdevice", "empty"] if cds else ["uuid", "vm-name-label", "userdevice"],
        ),
    )
    vdi_fields = select_fields(
        vdi_spec, choose_params(c.opt("vdi-params"), ["uuid", "name-label", "virtual-size", "sr-name-label"])
    )
    n = 0
    for vbd in vm.rec["VBDs"]:
        rec = c.call("VBD.get_record", vbd)
        if rec["type"] != ("CD" if cds else "Disk"):
            continue
        label = ("CD " if cds else "Disk ") + str(n)
        c.printer.msg(label + " VBD:")
        c.printer.table([CliRecord(vbd_spec, str(vbd), rec, c.resolver).printed(vbd_fields)])
        if not rec["empty"]:
            vdi = str(rec["VDI"])
            vdi_rec = CliRecord(vdi_spec, vdi, c.call("VDI.get_record", vdi), c.resolver)
            c.printer.msg(label + " VDI:")
            c.printer.table([vdi_rec.printed(vdi_fields)])
        n += 1


def vm_disk_list(c: Ctx) -> None:
    """List the selected VM's disks: each VBD and its VDI (vbd-params=, vdi-params= pick fields)."""
    do_op(c, "vm", lambda vm: _disk_list(c, vm, False), ["vbd-params", "vdi-params"])


def vm_cd_list(c: Ctx) -> None:
    """List the selected VM's CD drives and the media in them (vbd-params=, vdi-params=)."""
    do_op(c, "vm", lambda vm: _disk_list(c, vm, True), ["vbd-params", "vdi-params"])


def _iso_vdis(c: Ctx, name: str) -> list[str]:
    out = []
    for vdi in c.call("VDI.get_by_name_label", name):
        sr = c.call("VDI.get_SR", vdi)
        if c.call("SR.get_content_type", sr) == "iso":
            out.append(str(vdi))
    return out


def vm_cd_add(c: Ctx) -> None:
    """Add a CD drive as device= holding the ISO named cd-name= to the selected VM(s)."""
    name = c.req("cd-name")
    vdis = _iso_vdis(c, name)
    if not vdis:
        raise CliFailure(f"CD {name} not found!")
    device = c.req("device")
    do_op(
        c,
        "vm",
        lambda vm: create_and_plug(c, vbd_record(vm.ref, vdis[0], device, "RO", "CD")),
        ["cd-name", "device", "cd-location"],
    )


def vm_cd_remove(c: Ctx) -> None:
    """Remove the CD drive holding cd-name= (or an empty one: cd-name='<EMPTY>')."""
    name = c.req("cd-name")

    def matches(vbd: str) -> bool:
        try:
            vdi = c.call("VBD.get_VDI", vbd)
            sr = c.call("VDI.get_SR", vdi)
            return bool(c.call("SR.get_content_type", sr) == "iso" and c.call("VDI.get_name_label", vdi) == name)
        except ApiFailure:
            return name == "<EMPTY>"

    def op(vm: CliRecord) -> None:
        found = [v for v in vm.rec["VBDs"] if matches(str(v))]
        if not found:
            raise CliFailure("Disk not found")
        c.call("VBD.destroy", found[0])

    do_op(c, "vm", op, ["cd-name"])


def _cd_drives(c: Ctx, vm: CliRecord, empty_only: bool = False) -> list[str]:
    drives = []
    for vbd in vm.rec["VBDs"]:
        rec = c.call("VBD.get_record", vbd)
        if rec["type"] == "CD" and (rec["empty"] or not empty_only):
            drives.append(str(vbd))
    return drives


def vm_cd_eject(c: Ctx) -> None:
    """Eject the media from the selected VM's CD drive."""

    def op(vm: CliRecord) -> None:
        drives = _cd_drives(c, vm)
        if not drives:
            raise CliFailure("No CDs found")
        if len(drives) > 1:
            raise CliFailure("Two or more CDs found. Please use vbd-eject")
        c.call("VBD.eject", drives[0])

    do_op(c, "vm", op)


def vm_cd_insert(c: Ctx) -> None:
    """Insert the ISO named cd-name= into the selected VM's empty CD drive."""
    name = c.req("cd-name")
    vdis = _iso_vdis(c, name)
    if not vdis:
        raise CliFailure(f"CD {name} not found")
    if len(vdis) > 1:
        raise CliFailure(f"Multiple CDs named {name} found. Please use vbd-insert and specify uuids")

    def op(vm: CliRecord) -> None:
        drives = _cd_drives(c, vm, empty_only=True)
        if not drives:
            raise ApiFailure("VM_NO_EMPTY_CD_VBD", [vm.ref])
        if len(drives) > 1:
            raise CliFailure("Two or more empty CD devices found. Please use vbd-insert")
        c.call("VBD.insert", drives[0], vdis[0])

    do_op(c, "vm", op, ["cd-name"])


def vm_vif_list(c: Ctx) -> None:
    """List the network interfaces of the selected VM(s) (params= picks the fields)."""
    spec = class_spec("vif")
    fields = select_fields(
        spec,
        choose_params(
            c.opt("params"), ["uuid", "device", "MAC", "network-uuid", "network-name-label", "vm-name-label"]
        ),
    )

    def op(vm: CliRecord) -> None:
        rows = [
            CliRecord(spec, str(v), c.call("VIF.get_record", v), c.resolver).printed(fields) for v in vm.rec["VIFs"]
        ]
        c.printer.table(rows)

    c.params.pairs.insert(0, ("multiple", "true"))  # xe always lists every matching VM
    do_op(c, "vm", op, ["params"])


def cd_list(c: Ctx) -> None:
    """List the CD images (ISOs) in the ISO SRs (params= picks the fields)."""
    spec = class_spec("vdi")
    fields = select_fields(spec, choose_params(c.opt("params"), ["name-label", "uuid"]))
    rows = []
    for _sr, rec in c.call("SR.get_all_records_where", 'field "content_type"="iso"').items():
        for vdi in rec["VDIs"]:
            rows.append(CliRecord(spec, str(vdi), c.call("VDI.get_record", vdi), c.resolver).printed(fields))
    c.printer.table(rows)


def vm_crashdump_list(c: Ctx) -> None:
    """List the selected VM's crash dumps."""

    def op(vm: CliRecord) -> None:
        rows = []
        for cd in vm.rec.get("crash_dumps", []):
            rec = c.call("crashdump.get_record", cd)
            rows.append(
                [
                    ("uuid ( RO)", str(rec["uuid"])),
                    ("vm-uuid ( RO)", c.resolver.uuid("VM", str(rec["VM"]))),
                    ("vm-name-label ( RO)", c.resolver.name("VM", str(rec["VM"]))),
                    ("vdi-uuid ( RO)", c.resolver.uuid("VDI", str(rec["VDI"]))),
                ]
            )
        c.printer.table(rows)

    do_op(c, "vm", op)


COMMANDS = {
    "vm-disk-add": vm_disk_add,
    "vm-disk-remove": vm_disk_remove,
    "vm-disk-list": vm_disk_list,
    "vm-cd-add": vm_cd_add,
    "vm-cd-remove": vm_cd_remove,
    "vm-cd-eject": vm_cd_eject,
    "vm-cd-insert": vm_cd_insert,
    "vm-cd-list": vm_cd_list,
    "vm-vif-list": vm_vif_list,
    "vm-crashdump-list": vm_crashdump_list,
    "cd-list": cd_list,
}
