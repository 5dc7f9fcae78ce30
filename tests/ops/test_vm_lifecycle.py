"""Exhaustive checks of the VM lifecycle table against the rules it encodes."""

from __future__ import annotations

import itertools

import pytest

from pyxapi.engine.vm_lifecycle import (
    ALL_STATES,
    POWER_STATES,
    PREEMPTING,
    SNAPSHOT_OPERATIONS,
    TEMPLATE_OPERATIONS,
    VMView,
    allowed_operations,
    check,
)
from pyxapi.model import ApiError, load_model

MODEL = load_model()


def vm(state: str = "Halted", template: bool = False, snapshot: bool = False, current=None, blocked=None) -> VMView:  # type: ignore[no-untyped-def]
    return VMView("OpaqueRef:v", state, template, snapshot, False, current or {}, blocked or {})


def error(view: VMView, op: str) -> list[str] | None:
    try:
        check(view, op)
    except ApiError as e:
        return e.description
    return None


def test_table_covers_exactly_the_models_operations() -> None:
    assert set(POWER_STATES) == set(MODEL.enums["vm_operations"])


@pytest.mark.parametrize("op,state", list(itertools.product(sorted(POWER_STATES), sorted(ALL_STATES))))
def test_every_operation_in_every_power_state(op: str, state: str) -> None:
    got = error(vm(state), op)
    if state in POWER_STATES[op]:
        assert got is None
    else:
        assert got is not None and got[0] == "VM_BAD_POWER_STATE"
        assert got[1] == "OpaqueRef:v" and got[3] == state.lower()
        assert got[2].capitalize() in POWER_STATES[op]


@pytest.mark.parametrize("op", sorted(POWER_STATES))
def test_templates_and_snapshots(op: str) -> None:
    state = "Halted"
    t = error(vm(state, template=True), op)
    if op in TEMPLATE_OPERATIONS:
        assert t is None or t[0] == "VM_BAD_POWER_STATE"
    else:
        assert t == ["VM_IS_TEMPLATE", "OpaqueRef:v"]
    s = error(vm(state, template=True, snapshot=True), op)
    if op not in SNAPSHOT_OPERATIONS:
        assert s is not None and s[0] == "OPERATION_NOT_ALLOWED"


def test_operations_in_progress_exclude_others_except_preemption() -> None:
    busy = vm("Running", current={"OpaqueRef:t": "clean_shutdown"})
    assert error(busy, "pause") == ["OTHER_OPERATION_IN_PROGRESS", "VM", "OpaqueRef:v", "clean_shutdown", "OpaqueRef:t"]
    assert error(busy, "hard_shutdown") is None
    for running, allowed in PREEMPTING.items():
        for op in allowed:
            state = next(iter(POWER_STATES[op] & POWER_STATES.get(running, ALL_STATES)), None)
            if state:
                assert error(vm(state, current={"OpaqueRef:t": running}), op) is None


def test_blocked_operations_and_allowed_list() -> None:
    assert error(vm(blocked={"start": "MAINTENANCE"}), "start") == ["OPERATION_BLOCKED", "OpaqueRef:v", "MAINTENANCE"]
    halted = allowed_operations(vm("Halted"))
    assert "start" in halted and "destroy" in halted and "clean_shutdown" not in halted
    running = allowed_operations(vm("Running"))
    assert {"clean_shutdown", "hard_shutdown", "pause", "suspend"} <= set(running) and "start" not in running
    control = VMView("OpaqueRef:d", "Running", False, False, True, {}, {})
    assert error(control, "hard_shutdown") is not None and error(control, "changing_memory_live") is None
