"""VM memory and vCPU settings, and the other one-call VM commands (selectors apply)."""

from __future__ import annotations

from pyxapi.cli.commands.declare import Arg, flag, mapping, on_selected, on_uuid, p, real, ref, size
from pyxapi.cli.errors import CliFailure
from pyxapi.cli.files import read_file
from pyxapi.cli.selectors import do_op

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyxapi.cli.ctx import Ctx
    from pyxapi.cli.records import CliRecord


def _vcpus() -> Arg:
    def read(c: Ctx) -> int:
        try:
            return int(c.req("new-vcpus"))
        except ValueError:
            raise CliFailure("Failed to parse parameter 'new-vcpus': expecting an integer") from None

    return Arg(read, ("new-vcpus",))


def _target() -> Arg:
    return Arg(lambda c: c.size("target"), ("target",))


def _memory_target_set(c: Ctx) -> None:
    """Set the selected VM's balloon target (dynamic-min = dynamic-max = target=)."""
    target = c.size("target")
    do_op(
        c,
        "vm",
        lambda vm: c.call("VM.set_memory_dynamic_range", vm.ref, target, target),
        ["target"],
        include_control=True,
    )


def _is_bios_customized(c: Ctx) -> None:
    """Say whether the selected VM's BIOS strings were set, and how."""

    def op(vm: CliRecord) -> None:
        strings = c.call("VM.get_bios_strings", vm.ref)
        if not strings:
            c.printer.msg("The BIOS strings of this VM have not yet been set.")
        elif strings.get("bios-vendor") == "Xen" and strings.get("system-manufacturer") == "Xen":
            c.printer.msg("This VM is BIOS-generic.")
        else:
            c.printer.msg("This VM is BIOS-customized.")

    do_op(c, "vm", op)


def _query_services(c: Ctx) -> None:
    """List the services the selected VM's guest agent reports."""

    def op(vm: CliRecord) -> None:
        services = c.call("VM.query_services", vm.ref)
        c.printer.table([[("Type", "Name"), *services.items()]])

    do_op(c, "vm", op)


def _retrieve_wlb(c: Ctx) -> None:
    """Print workload-balancing placement advice for the selected VM."""

    def op(vm: CliRecord) -> None:
        advice = c.call("VM.retrieve_wlb_recommendations", vm.ref)
        rows = [("Host(Uuid)", "Stars, RecID, ZeroScoreReason")]
        for host, rec in advice.items():
            rows.append((f"{c.resolver.name('host', host)}({c.resolver.uuid('host', host)})", " ".join(rec)))
        c.printer.table([rows])

    do_op(c, "vm", op, multiple=False)


def _sysprep(c: Ctx) -> None:
    """Run sysprep in the selected Windows VM with the unattend file filename=."""
    unattend = read_file(c, "filename")
    timeout = float(c.opt("timeout", "180") or 180)
    do_op(c, "vm", lambda vm: c.call("VM.sysprep", vm.ref, unattend, timeout), ["filename", "timeout"])


def _max_memory(c: Ctx) -> None:
    """Print the most memory the selected VM could have within total= (--approximate rounds)."""
    total = c.size("total")
    approximate = c.flag("approximate")
    do_op(
        c,
        "vm",
        lambda vm: c.printer.lines([str(c.call("VM.maximise_memory", vm.ref, total, approximate))]),
        ["total", "approximate"],
    )


COMMANDS = {
    "vm-memory-dynamic-range-set": on_selected(
        "vm",
        "VM.set_memory_dynamic_range",
        size("min"),
        size("max"),
        include_control=True,
        include_templates=True,
        doc="Set the range (min=, max=) the VM's memory balloon may move in.",
    ),
    "vm-memory-static-range-set": on_selected(
        "vm",
        "VM.set_memory_static_range",
        size("min"),
        size("max"),
        include_control=True,
        include_templates=True,
        doc="Set the VM's static memory range (min=, max=; the VM must be halted).",
    ),
    "vm-memory-limits-set": on_selected(
        "vm",
        "VM.set_memory_limits",
        size("static-min"),
        size("static-max"),
        size("dynamic-min"),
        size("dynamic-max"),
        include_control=True,
        include_templates=True,
        doc="Set all four memory limits at once (static-min=, static-max=, dynamic-min=, dynamic-max=).",
    ),
    "vm-memory-set": on_selected(
        "vm",
        "VM.set_memory",
        size("memory"),
        include_control=True,
        include_templates=True,
        doc="Give the VM memory= (e.g. 512MiB): every limit set to it.",
    ),
    "vm-memory-target-set": _memory_target_set,
    "vm-memory-balloon": on_selected(
        "vm", "VM.set_memory_target_live", _target(), doc="Balloon the running VM to target= (deprecated)."
    ),
    "vm-memory-target-wait": on_selected(
        "vm", "VM.wait_memory_target_live", include_control=True, doc="Wait until the VM reaches its memory target."
    ),
    "vm-memory-shadow-multiplier-set": on_selected(
        "vm", "VM.set_shadow_multiplier_live", real("multiplier"), doc="Change the shadow memory multiplier live."
    ),
    "vm-vcpu-hotplug": on_selected(
        "vm", "VM.set_VCPUs_number_live", _vcpus(), doc="Set the number of vCPUs of the running VM to new-vcpus=."
    ),
    "vm-compute-memory-overhead": on_selected(
        "vm",
        "VM.compute_memory_overhead",
        show_as="msg",
        include_control=True,
        doc="Print the memory the host needs for the VM beyond its own.",
    ),
    "vm-compute-maximum-memory": _max_memory,
    "vm-data-source-list": on_selected(
        "vm",
        "VM.get_data_sources",
        show_as="records",
        multiple=False,
        include_control=True,
        doc="List the VM's data sources.",
    ),
    "vm-data-source-record": on_selected(
        "vm", "VM.record_data_source", p("data-source"), multiple=False, doc="Start recording a VM data source."
    ),
    "vm-data-source-query": on_selected(
        "vm", "VM.query_data_source", p("data-source"), show_as="value", multiple=False, doc="Print a VM data source."
    ),
    "vm-data-source-forget": on_selected(
        "vm", "VM.forget_data_source_archives", p("data-source"), multiple=False, doc="Forget a VM data source."
    ),
    "vm-query-services": _query_services,
    "vm-is-bios-customized": _is_bios_customized,
    "vm-copy-bios-strings": on_selected(
        "vm", "VM.copy_bios_strings", ref("host", "host-uuid"), doc="Copy host-uuid='s BIOS strings into the VM."
    ),
    "vm-restart-device-models": on_selected(
        "vm", "VM.restart_device_models", doc="Restart the device model (QEMU) of the selected VM(s)."
    ),
    "vm-update-secureboot-certificates-on-boot": on_selected(
        "vm",
        "VM.update_secureboot_certificates_on_boot",
        flag("mark"),
        doc="Update the VM's Secure Boot certificates at its next boot (mark=true).",
    ),
    "vm-retrieve-wlb-recommendations": _retrieve_wlb,
    "vm-sysprep": _sysprep,
    "vm-get-secureboot-readiness": on_uuid(
        "VM.get_secureboot_readiness", show_as="value", doc="Print whether the VM is ready for Secure Boot."
    ),
    "vm-set-uefi-mode": on_uuid("VM.set_uefi_mode", p("mode"), show_as="value", doc="Set the VM's UEFI mode=."),
    "vm-call-plugin": on_uuid(
        "VM.call_plugin",
        p("plugin"),
        p("fn"),
        mapping("args"),
        key="vm-uuid",
        show_as="value",
        doc="Call guest plug-in plugin= function fn= with args:key=value.",
    ),
    "vm-call-host-plugin": on_uuid(
        "VM.call_host_plugin",
        p("plugin"),
        p("fn"),
        mapping("args"),
        key="vm-uuid",
        show_as="value",
        doc="Call host plug-in plugin= function fn= on the VM's host, with args:key=value.",
    ),
}
