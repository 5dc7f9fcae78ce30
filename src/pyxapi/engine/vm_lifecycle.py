"""Which VM operation is allowed when: pure tables, checked exhaustively by tests.

Mirrors xapi's VM lifecycle rules: each operation names the power states it may start from;
templates, snapshots and the control domain allow only a few; while an operation is in
progress only the ones that may cut it short are allowed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pyxapi.model.errors import OPERATION_NOT_ALLOWED, ApiError

HALTED, PAUSED, RUNNING, SUSPENDED = "Halted", "Paused", "Running", "Suspended"
ALL_STATES = frozenset({HALTED, PAUSED, RUNNING, SUSPENDED})

# operation -> the power states it may start from
POWER_STATES: Mapping[str, frozenset[str]] = {
    "start": frozenset({HALTED}),
    "start_on": frozenset({HALTED}),
    "clean_shutdown": frozenset({RUNNING}),
    "clean_reboot": frozenset({RUNNING}),
    "shutdown": frozenset({RUNNING, PAUSED, SUSPENDED}),
    "hard_shutdown": frozenset({RUNNING, PAUSED, SUSPENDED}),
    "hard_reboot": frozenset({RUNNING, PAUSED}),
    "pause": frozenset({RUNNING}),
    "unpause": frozenset({PAUSED}),
    "suspend": frozenset({RUNNING}),
    "resume": frozenset({SUSPENDED}),
    "resume_on": frozenset({SUSPENDED}),
    "checkpoint": frozenset({RUNNING, PAUSED, SUSPENDED}),
    "snapshot": ALL_STATES,
    "snapshot_with_quiesce": frozenset({RUNNING}),
    "clone": frozenset({HALTED, SUSPENDED}),
    "copy": frozenset({HALTED, SUSPENDED}),
    "create_template": frozenset({HALTED, SUSPENDED}),
    "revert": ALL_STATES,
    "provision": frozenset({HALTED}),
    "destroy": frozenset({HALTED, SUSPENDED}),  # a checkpoint is a Suspended snapshot
    "make_into_template": frozenset({HALTED}),
    "export": frozenset({HALTED, SUSPENDED}),
    "metadata_export": ALL_STATES,
    "pool_migrate": frozenset({RUNNING}),
    "migrate_send": frozenset({RUNNING, HALTED, SUSPENDED}),
    "power_state_reset": ALL_STATES,
    "send_sysrq": frozenset({RUNNING}),
    "send_trigger": frozenset({RUNNING}),
    "call_plugin": frozenset({RUNNING}),
    "query_services": frozenset({RUNNING}),
    "get_boot_record": ALL_STATES,
    "changing_VCPUs_live": frozenset({RUNNING}),
    "changing_memory_live": frozenset({RUNNING}),
    "changing_dynamic_range": frozenset({HALTED, RUNNING}),
    "changing_static_range": frozenset({HALTED}),
    "changing_memory_limits": frozenset({HALTED}),
    "changing_VCPUs": frozenset({HALTED}),
    "changing_shadow_memory": frozenset({HALTED}),
    "changing_shadow_memory_live": frozenset({RUNNING}),
    "changing_NVRAM": frozenset({HALTED}),
    "create_vtpm": frozenset({HALTED}),
    "assert_operation_valid": ALL_STATES,
    "update_allowed_operations": ALL_STATES,
    "data_source_op": frozenset({RUNNING}),
    "awaiting_memory_live": frozenset({RUNNING}),
    "sysprep": frozenset({RUNNING}),
    "csvm": frozenset({RUNNING}),
    "import": frozenset({HALTED}),
    "reverting": ALL_STATES,
}

# What a template or snapshot may still do (everything else is refused with VM_IS_TEMPLATE).
TEMPLATE_OPERATIONS = frozenset(
    {"clone", "copy", "provision", "destroy", "export", "metadata_export", "create_template", "revert", "snapshot"}
)
SNAPSHOT_OPERATIONS = frozenset(
    {"clone", "copy", "create_template", "revert", "destroy", "export", "metadata_export", "hard_shutdown"}
)
CONTROL_DOMAIN_OPERATIONS = frozenset(
    {"changing_memory_live", "changing_dynamic_range", "data_source_op", "metadata_export", "call_plugin"}
)

# While the key runs, only these may start too: the forceful operations that end it.
PREEMPTING: Mapping[str, frozenset[str]] = {
    "clean_shutdown": frozenset({"hard_shutdown", "hard_reboot", "power_state_reset"}),
    "clean_reboot": frozenset({"hard_shutdown", "hard_reboot", "power_state_reset"}),
    "shutdown": frozenset({"hard_shutdown", "power_state_reset"}),
    "start": frozenset({"hard_shutdown", "power_state_reset"}),
    "suspend": frozenset({"hard_shutdown", "power_state_reset"}),
    "resume": frozenset({"hard_shutdown", "power_state_reset"}),
    "reverting": frozenset({"hard_shutdown", "power_state_reset"}),  # revert halts the VM it reverts
}
ALWAYS_CONCURRENT = frozenset({"metadata_export", "data_source_op", "get_boot_record"})
# Operations that may overlap one another (xapi: snapshots with checkpoints, copies with copies).
CONCURRENT_GROUPS = (frozenset({"snapshot", "checkpoint"}), frozenset({"clone", "copy", "export"}))


@dataclass(frozen=True, slots=True)
class VMView:
    """The facts about a VM the rules look at."""

    ref: str
    power_state: str
    is_a_template: bool
    is_a_snapshot: bool
    is_control_domain: bool
    current_operations: Mapping[str, str]  # task ref -> operation
    blocked_operations: Mapping[str, str]  # operation -> reason code

    @classmethod
    def of(cls, ref: str, rec: Mapping[str, Any]) -> VMView:
        return cls(
            ref,
            rec["power_state"],
            rec["is_a_template"],
            rec["is_a_snapshot"],
            rec["is_control_domain"],
            rec["current_operations"],
            rec["blocked_operations"],
        )


def check(vm: VMView, op: str) -> None:
    """Raise the error xapi gives for starting `op` on this VM now; return if allowed."""
    if op in vm.blocked_operations:
        raise ApiError("OPERATION_BLOCKED", vm.ref, vm.blocked_operations[op])
    if vm.is_control_domain and op not in CONTROL_DOMAIN_OPERATIONS:
        raise ApiError(OPERATION_NOT_ALLOWED, f"{op} is not allowed on the control domain")
    if vm.is_a_snapshot and op not in SNAPSHOT_OPERATIONS:
        raise ApiError(OPERATION_NOT_ALLOWED, f"{op} is not allowed on a snapshot")
    if vm.is_a_template and not vm.is_a_snapshot and op not in TEMPLATE_OPERATIONS:
        raise ApiError("VM_IS_TEMPLATE", vm.ref)
    allowed_states = POWER_STATES.get(op)
    if allowed_states is None:
        raise ApiError(OPERATION_NOT_ALLOWED, f"unknown operation {op}")
    for task, running in vm.current_operations.items():
        if op in ALWAYS_CONCURRENT or op in PREEMPTING.get(running, frozenset()):
            continue
        if any(op in group and running in group for group in CONCURRENT_GROUPS):
            continue
        raise ApiError("OTHER_OPERATION_IN_PROGRESS", "VM", vm.ref, running, task)
    if vm.power_state not in allowed_states and not vm.is_control_domain:
        raise ApiError("VM_BAD_POWER_STATE", vm.ref, _expected(allowed_states), vm.power_state.lower())


def _expected(states: Iterable[str]) -> str:
    # xapi names the one state it wanted, lower-case; with several it names the first in its order.
    order = [HALTED, RUNNING, PAUSED, SUSPENDED]
    wanted = [s for s in order if s in states]
    return wanted[0].lower() if wanted else ""


def allowed_operations(vm: VMView, candidates: Iterable[str] = ()) -> list[str]:
    """The `allowed_operations` field: every operation `check` would let start now."""
    out = []
    for op in candidates or POWER_STATES:
        try:
            check(vm, op)
        except ApiError:
            continue
        out.append(op)
    return sorted(out)
