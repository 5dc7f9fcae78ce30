"""Snapshots and templates: vm-snapshot/-checkpoint, snapshot-*, template-uninstall."""

from __future__ import annotations

from pyxapi.cli.commands.vm import DANGEROUS, uninstall
from pyxapi.cli.errors import CliFailure
from pyxapi.cli.records import NULL, CliRecord
from pyxapi.cli.selectors import do_op
from pyxapi.cli.table import class_spec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyxapi.cli.ctx import Ctx


def _snapshot_like(c: Ctx, method: str, with_ignore: bool) -> None:
    name = c.req("new-name-label")
    ignore = [c.by_uuid("VDI", u) for u in (c.opt("ignore-vdi-uuids") or "").split(",") if u]

    def op(vm: CliRecord) -> str:
        args = [vm.ref, name, ignore] if with_ignore else [vm.ref, name]
        return str(c.call(method, *args))

    new = do_op(c, "vm", op, ["new-name-label", "new-name-description", "ignore-vdi-uuids"])
    if c.has("new-name-description") and new:
        c.call("VM.set_name_description", new[0], c.req("new-name-description"))
    c.print_uuids("VM", new)


def vm_snapshot(c: Ctx) -> None:
    """Snapshot the selected VM's disks (new-name-label=); ignore-vdi-uuids= leaves some out.
    Prints the snapshot's uuid."""
    _snapshot_like(c, "VM.snapshot", True)


def vm_snapshot_with_quiesce(c: Ctx) -> None:
    """Snapshot the selected VM after asking the guest to quiesce its disks (new-name-label=)."""
    _snapshot_like(c, "VM.snapshot_with_quiesce", False)


def vm_checkpoint(c: Ctx) -> None:
    """Snapshot the selected VM's disks and memory (new-name-label=); prints the checkpoint's uuid."""
    _snapshot_like(c, "VM.checkpoint", False)


def _snapshot_uuid(c: Ctx) -> str:
    uuid = c.opt("snapshot-uuid") or c.opt("uuid")
    if uuid is None:
        raise CliFailure("Required parameter not found: snapshot-uuid or uuid.")
    return uuid


def _snapshot(c: Ctx) -> str:
    uuid = _snapshot_uuid(c)
    ref = c.by_uuid("VM", uuid)
    if not c.call("VM.get_is_a_snapshot", ref):
        raise CliFailure(f"This operation can only be performed on a VM snapshot. {uuid} is not a VM snapshot.")
    return ref


def snapshot_revert(c: Ctx) -> None:
    """Revert the VM to this snapshot (snapshot-uuid= or uuid=)."""
    c.call("VM.revert", _snapshot(c))


def _from_snapshot(c: Ctx, copy: bool) -> None:
    name = c.req("new-name-label")
    snap = _snapshot(c)
    if copy:
        sr = c.by_uuid("SR", c.req("sr-uuid")) if c.has("sr-uuid") else NULL
        new = str(c.call("VM.copy", snap, name, sr))
    else:
        new = str(c.call("VM.clone", snap, name))
    if c.has("new-name-description"):
        c.call("VM.set_name_description", new, c.req("new-name-description"))
    c.printer.lines([c.uuid_of("VM", new)])


def snapshot_clone(c: Ctx) -> None:
    """Make a new template from the snapshot by cloning it (new-name-label=); prints its uuid."""
    _from_snapshot(c, copy=False)


def snapshot_copy(c: Ctx) -> None:
    """Make a new template from the snapshot with full disk copies (new-name-label=, sr-uuid=)."""
    _from_snapshot(c, copy=True)


def snapshot_destroy(c: Ctx) -> None:
    """Destroy the snapshot record (its disks stay; see snapshot-uninstall)."""
    snap = _snapshot(c)
    if c.call("VM.get_power_state", snap) != "Halted":
        c.call("VM.hard_shutdown", snap)
    c.call("VM.destroy", snap)


def snapshot_uninstall(c: Ctx) -> None:
    """Destroy the snapshot and the disks it owns (asks for 'yes' unless --force)."""
    uninstall(c, [_snapshot(c)])


def snapshot_reset_powerstate(c: Ctx) -> None:
    """Mark a checkpoint's power state halted (needs --force)."""
    if not c.has("force"):
        raise CliFailure(DANGEROUS)
    c.call("VM.power_state_reset", _snapshot(c))


def _snapshot_disks(c: Ctx, cds: bool) -> None:
    snap = _snapshot(c)
    from pyxapi.cli.commands import vm_devices

    record = CliRecord(class_spec("snapshot"), snap, c.call("VM.get_record", snap), c.resolver)
    vm_devices._disk_list(c, record, cds)


def snapshot_disk_list(c: Ctx) -> None:
    """List the snapshot's disks (vbd-params=, vdi-params=)."""
    _snapshot_disks(c, False)


def template_uninstall(c: Ctx) -> None:
    """Destroy the custom template (template-uuid=) and the disks it owns (asks for 'yes'
    unless --force)."""
    uuid = c.req("template-uuid")
    ref = c.by_uuid("VM", uuid)
    if not c.call("VM.get_is_a_template", ref):
        raise CliFailure(f"This operation can only be performed on a VM template. {uuid} is not a VM template.")
    uninstall(c, [ref])


COMMANDS = {
    "vm-snapshot": vm_snapshot,
    "vm-snapshot-with-quiesce": vm_snapshot_with_quiesce,
    "vm-checkpoint": vm_checkpoint,
    "snapshot-revert": snapshot_revert,
    "snapshot-clone": snapshot_clone,
    "snapshot-copy": snapshot_copy,
    "snapshot-destroy": snapshot_destroy,
    "snapshot-uninstall": snapshot_uninstall,
    "snapshot-reset-powerstate": snapshot_reset_powerstate,
    "snapshot-disk-list": snapshot_disk_list,
    "template-uninstall": template_uninstall,
}
