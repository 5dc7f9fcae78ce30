"""VM lifecycle commands: install, start/shutdown/reboot/suspend/resume/pause/unpause, clone,
copy, create, destroy, uninstall, migrate, reset-powerstate."""

from __future__ import annotations

import contextlib

from pyxapi.cli.errors import ApiFailure, CliFailure
from pyxapi.cli.records import NULL
from pyxapi.cli.selectors import do_op
from pyxapi.cli.tasks import run_async

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyxapi.cli.ctx import Ctx
    from pyxapi.cli.records import CliRecord

DANGEROUS = (
    "This operation is extremely dangerous and may cause data loss. This operation must be forced (use --force)."
)
INSTALL_DESCRIPTION = "Installed via xe CLI"


def _find_template(c: Ctx) -> str:
    def by_name(name: str) -> str:
        where = f'field "name__label"="{name}" and field "is_a_template"="true" and field "is_control_domain"="false"'
        found = list(c.call("VM.get_all_records_where", where))
        if not found:
            raise CliFailure("No templates matched")
        if len(found) > 1:
            raise CliFailure("More than one matching template found")
        return str(found[0])

    if c.has("template-uuid"):
        try:
            return c.by_uuid("VM", c.req("template-uuid"))
        except ApiFailure:
            raise CliFailure("Cannot find template") from None
    name = c.opt("template-name-label") or c.opt("template-name")
    if name is not None:
        return by_name(name)
    if c.has("template"):
        try:
            return c.by_uuid("VM", c.req("template"))
        except ApiFailure:
            return by_name(c.req("template"))
    raise CliFailure(
        "Template must be specified by parameter 'template-uuid', 'template-name', 'template-name-label' or 'template'"
    )


def _install_sr(c: Ctx, template: str) -> str | None:
    """The SR named on the command line (None: clone onto the template's own storage)."""
    is_snapshot = c.call("VM.get_is_a_snapshot", template)
    if is_snapshot and (c.has("sr-uuid") or c.has("sr-name-label")):
        raise CliFailure(
            "Do not use the sr-name-label or sr-uuid argument when installing from a snapshot. By default, it will"
            " install each new disk on the same SR as the corresponding snapshot disks."
        )
    sr = c.by_uuid("SR", c.req("sr-uuid")) if c.has("sr-uuid") else None
    if c.has("sr-name-label"):
        named = c.call("SR.get_by_name_label", c.req("sr-name-label"))
        if not named:
            raise CliFailure("No SR with that name-label found")
        if sr is not None and sr not in named:
            raise CliFailure("SR specified via sr-uuid doesn't have the name specified via sr-name-label")
        if sr is None and len(named) > 1:
            raise CliFailure("Multiple SRs with that name-label found")
        sr = sr or str(named[0])
    return sr


def _rewrite_disks(c: Ctx, vm: str, sr_uuid: str) -> None:
    """Point the template's provisioning spec (other-config:disks) at the chosen SR."""
    other = c.call("VM.get_other_config", vm)
    if "disks" not in other:
        return
    import xml.etree.ElementTree as ET

    root = ET.fromstring(other["disks"])
    for disk in root.iter("disk"):
        if "sr" in disk.attrib:
            disk.set("sr", sr_uuid)
    c.call("VM.remove_from_other_config", vm, "disks")
    c.call("VM.add_to_other_config", vm, "disks", ET.tostring(root, encoding="unicode"))


def vm_install(c: Ctx) -> None:
    """Install a new VM from a template: template=<name or uuid> (or template-uuid=,
    template-name-label=), new-name-label=, and optionally sr-uuid= or sr-name-label= for its
    disks (the pool's default SR otherwise). Prints the new VM's uuid."""
    template = _find_template(c)
    if not c.call("VM.get_is_a_template", template):
        raise CliFailure("Can only install from templates")
    name = c.req("new-name-label")
    sr = _install_sr(c, template)
    suspend_sr = sr if sr is not None else str(c.call("VM.get_suspend_SR", template))
    if sr is not None:
        sr_uuid = c.uuid_of("SR", sr)
    else:
        default = c.default_sr()
        has_disks = "disks" in c.call("VM.get_other_config", template)
        if default is None and has_disks:
            raise CliFailure(
                "Failed to find a valid default SR for the Pool. Please provide an sr-name-label or sr-uuid parameter."
            )
        sr_uuid = c.uuid_of("SR", default) if default else ""
    new_vm = str(c.call("VM.copy", template, name, sr) if sr else c.call("VM.clone", template, name))
    try:
        c.call("VM.set_name_description", new_vm, INSTALL_DESCRIPTION)
        c.call("VM.set_suspend_SR", new_vm, suspend_sr)
        if sr_uuid:
            _rewrite_disks(c, new_vm, sr_uuid)
        c.call("VM.provision", new_vm)
        if c.has("copy-bios-strings-from"):
            c.call("VM.copy_bios_strings", new_vm, c.by_uuid("host", c.req("copy-bios-strings-from")))
    except (ApiFailure, CliFailure):
        with contextlib.suppress(ApiFailure):
            c.call("VM.destroy", new_vm)
        raise
    c.printer.lines([c.uuid_of("VM", new_vm)])


def vm_start(c: Ctx) -> None:
    """Start the selected VM(s). on=<host> picks the host, --paused leaves them paused,
    --force ignores CPU-compatibility warnings, --progress shows a progress bar."""
    force, paused = c.flag("force"), c.flag("paused")

    def op(vm: CliRecord) -> None:
        if c.has("on"):
            run_async(c, "VM.start_on", vm.ref, c.host_by_name_or_id(c.req("on")), paused, force)
        else:
            run_async(c, "VM.start", vm.ref, paused, force)

    do_op(c, "vm", op, ["on", "paused", "progress"], include_control=True)


def vm_shutdown(c: Ctx) -> None:
    """Shut the selected VM(s) down cleanly, or power them off at once with --force."""
    method = "VM.hard_shutdown" if c.flag("force") else "VM.clean_shutdown"
    do_op(c, "vm", lambda vm: run_async(c, method, vm.ref), ["progress"])


def vm_reboot(c: Ctx) -> None:
    """Reboot the selected VM(s) cleanly, or reset them at once with --force."""
    method = "VM.hard_reboot" if c.flag("force") else "VM.clean_reboot"
    do_op(c, "vm", lambda vm: c.call(method, vm.ref))


def vm_suspend(c: Ctx) -> None:
    """Suspend the selected VM(s) to disk."""
    do_op(c, "vm", lambda vm: run_async(c, "VM.suspend", vm.ref), ["progress"])


def vm_resume(c: Ctx) -> None:
    """Resume the selected suspended VM(s); on=<host> picks where."""
    force = c.flag("force")

    def op(vm: CliRecord) -> None:
        if c.has("on"):
            run_async(c, "VM.resume_on", vm.ref, c.host_by_name_or_id(c.req("on")), False, force)
        else:
            run_async(c, "VM.resume", vm.ref, False, force)

    do_op(c, "vm", op, ["on", "progress"])


def vm_pause(c: Ctx) -> None:
    """Pause the selected running VM(s)."""
    do_op(c, "vm", lambda vm: c.call("VM.pause", vm.ref))


def vm_unpause(c: Ctx) -> None:
    """Unpause the selected paused VM(s)."""
    do_op(c, "vm", lambda vm: c.call("VM.unpause", vm.ref))


def vm_reset_powerstate(c: Ctx) -> None:
    """Mark the selected VM(s) halted without touching the hypervisor (after a host loss).
    Needs --force."""
    if not c.has("force"):
        raise CliFailure(DANGEROUS)
    do_op(c, "vm", lambda vm: c.call("VM.power_state_reset", vm.ref))


def vm_create(c: Ctx) -> None:
    """Create an empty VM record (no disks, no network): name-label=, name-description=."""
    mib = 1 << 20
    record = {
        "name_label": c.req("name-label"),
        "name_description": c.opt("name-description", ""),
        "user_version": 0,
        "is_a_template": False,
        "memory_static_max": 256 * mib,
        "memory_dynamic_max": 256 * mib,
        "memory_dynamic_min": 128 * mib,
        "memory_static_min": 128 * mib,
        "VCPUs_max": 1,
        "VCPUs_at_startup": 1,
        "actions_after_shutdown": "destroy",
        "actions_after_reboot": "restart",
        "actions_after_crash": "destroy",
    }
    c.printer.lines([c.uuid_of("VM", c.call("VM.create", record))])


def vm_destroy(c: Ctx) -> None:
    """Destroy the VM with this uuid: the record, its VBDs and VIFs (disks stay; see vm-uninstall)."""
    vm = c.by_uuid("VM", c.req("uuid"))
    if c.call("VM.get_is_control_domain", vm):
        raise ApiFailure("OPERATION_NOT_ALLOWED", ["You cannot destroy a control domain via the CLI"])
    c.call("VM.destroy", vm)


def _clone_like(c: Ctx, method: str, include_templates: bool) -> None:
    name = c.req("new-name-label")
    desc = c.opt("new-name-description")
    new_vms = do_op(
        c,
        "vm",
        lambda vm: str(c.call(method, vm.ref, name)),
        ["new-name-label", "new-name-description"],
        include_templates=include_templates,
    )
    if desc is not None and new_vms:
        c.call("VM.set_name_description", new_vms[0], desc)
    c.print_uuids("VM", new_vms)


def vm_clone(c: Ctx) -> None:
    """Clone the selected VM or template (fast, sharing disks copy-on-write where the SR can):
    new-name-label=, new-name-description=. Prints the new uuid."""
    _clone_like(c, "VM.clone", True)


def vm_copy(c: Ctx) -> None:
    """Copy the selected VM or template with full disk copies, onto sr-uuid= if given:
    new-name-label=, new-name-description=. Prints the new uuid."""
    name = c.req("new-name-label")
    sr = c.by_uuid("SR", c.req("sr-uuid")) if c.has("sr-uuid") else NULL
    new_vms = do_op(
        c,
        "vm",
        lambda vm: str(c.call("VM.copy", vm.ref, name, sr)),
        ["new-name-label", "sr-uuid", "new-name-description"],
        multiple=False,
        include_templates=True,
    )
    if c.has("new-name-description"):
        c.call("VM.set_name_description", new_vms[0], c.req("new-name-description"))
    c.print_uuids("VM", new_vms)


def _ask_yes(c: Ctx) -> bool:
    import sys

    c.printer.msg("Type 'yes' to continue")
    sys.stdout.flush()
    answer = sys.stdin.readline().rstrip("\n")
    if answer.strip().lower() == "yes":
        return True
    c.printer.msg(f"Aborted (you typed: '{answer}')")
    return False


def uninstall(c: Ctx, vms: list[str]) -> None:
    """Destroy VMs with the disks they own (VBD other-config:owner) and their suspend images."""
    plans, lines = [], []
    for vm in vms:
        rec = c.call("VM.get_record", vm)
        vdis = []
        for vbd in rec["VBDs"]:
            try:
                vbd_rec = c.call("VBD.get_record", vbd)
                if "owner" in vbd_rec["other_config"] and vbd_rec["VDI"] != NULL:
                    c.call("VDI.get_uuid", vbd_rec["VDI"])
                    vdis.append(str(vbd_rec["VDI"]))
            except ApiFailure:
                continue
        suspend = str(rec.get("suspend_VDI", NULL))
        try:
            if suspend != NULL:
                c.call("VDI.get_uuid", suspend)
                vdis.append(suspend)
        except ApiFailure:
            pass
        lines.append(f"VM : {rec['uuid']} ({rec['name_label']})")
        for vdi in vdis:
            vrec = c.call("VDI.get_record", vdi)
            shared = " ** WARNING: disk is shared by other VMs" if len(vrec["VBDs"]) > 1 else ""
            lines.append(f"VDI: {vrec['uuid']} ({vrec['name_label']}) {shared}")
        plans.append((vm, rec["power_state"], vdis))
    c.printer.msg("The following items are about to be destroyed")
    for line in lines:
        c.printer.msg(line)
    if not c.flag("force") and not _ask_yes(c):
        return
    for vm, power, vdis in plans:
        if power != "Halted":
            c.call("VM.hard_shutdown", vm)
        c.call("VM.destroy", vm)
        for vdi in vdis:
            with contextlib.suppress(ApiFailure):
                c.call("VDI.destroy", vdi)
    c.printer.msg("All objects destroyed")


def vm_uninstall(c: Ctx) -> None:
    """Destroy the selected VM(s), their snapshots and the disks they own. Asks for 'yes'
    unless --force is given."""
    vms = do_op(c, "vm", lambda vm: vm.ref)
    snapshots = [str(s) for vm in vms for s in c.call("VM.get_snapshots", vm)]
    uninstall(c, vms + snapshots)


def vm_migrate(c: Ctx) -> None:
    """Move the selected VM(s) to host=<name or uuid> within the pool (--live for running ones)."""
    sxm = ("remote-master", "remote-username", "remote-password", "remote-network", "vif:", "vdi:", "vgpu:")
    if any(k.startswith(sxm) for k in c.params):
        raise CliFailure("Storage XenMotion (remote-master=...) is not supported by pyxapi's xe yet.")
    target = c.opt("host") or c.opt("host-uuid") or c.opt("host-name")
    if target is None:
        raise CliFailure("No destination host specified")
    host = c.host_by_name_or_id(target)
    options = {k: "true" if c.flag(k) else "false" for k in ("force", "live", "copy")}
    do_op(
        c,
        "vm",
        lambda vm: c.call("VM.pool_migrate", vm.ref, host, options),
        ["host", "host-uuid", "host-name", "live", "copy"],
        include_control=True,
    )


COMMANDS = {
    "vm-install": vm_install,
    "vm-start": vm_start,
    "vm-shutdown": vm_shutdown,
    "vm-reboot": vm_reboot,
    "vm-suspend": vm_suspend,
    "vm-resume": vm_resume,
    "vm-pause": vm_pause,
    "vm-unpause": vm_unpause,
    "vm-reset-powerstate": vm_reset_powerstate,
    "vm-create": vm_create,
    "vm-destroy": vm_destroy,
    "vm-clone": vm_clone,
    "vm-copy": vm_copy,
    "vm-uninstall": vm_uninstall,
    "vm-migrate": vm_migrate,
}
