"""VM.assert_operation_valid, update_allowed_operations, get_possible_hosts, get_cooperative and
maximise_memory through dispatch, on the simulator."""

from __future__ import annotations

import pytest

from pyxapi.ops.vm import memory_overhead
from tests.ops.test_vm_power import MIB, Api, api, new_vm  # noqa: F401 - the fixture


async def test_assert_operation_valid_follows_the_power_state(api: Api) -> None:  # noqa: F811
    vm = await new_vm(api)
    assert await api("VM.assert_operation_valid", vm, "start") == ""  # void
    assert await api.error("VM.assert_operation_valid", vm, "clean_shutdown") == [
        "VM_BAD_POWER_STATE", vm, "running", "halted"
    ]
    await api("VM.start", vm, False, False)
    assert await api("VM.assert_operation_valid", vm, "clean_shutdown") == ""  # void
    assert await api.error("VM.assert_operation_valid", vm, "start") == ["VM_BAD_POWER_STATE", vm, "halted", "running"]
    await api("VM.add_to_blocked_operations", vm, "clean_shutdown", "maintenance")
    assert await api.error("VM.assert_operation_valid", vm, "clean_shutdown") == [
        "OPERATION_BLOCKED", vm, "maintenance"
    ]
    not_an_operation = await api.error("VM.assert_operation_valid", vm, "no_such_op")
    assert not_an_operation[0] == "FIELD_TYPE_ERROR"  # refused at dispatch: not an enum value
    await api("VM.hard_shutdown", vm)


async def test_update_allowed_operations_recomputes_the_field(api: Api) -> None:  # noqa: F811
    vm = await new_vm(api)
    allowed = await api("VM.get_allowed_operations", vm)
    assert "start" in allowed
    api.ctx.store.set_field("VM", vm, "allowed_operations", [])  # as if it had gone stale
    assert await api("VM.get_allowed_operations", vm) == []
    assert await api("VM.update_allowed_operations", vm) == ""  # void
    assert await api("VM.get_allowed_operations", vm) == allowed
    assert (await api.error("VM.update_allowed_operations", "OpaqueRef:nope"))[0] == "HANDLE_INVALID"


async def test_possible_hosts_are_where_the_vm_could_boot(api: Api) -> None:  # noqa: F811
    vm = await new_vm(api)
    host = api.ctx.host_ref
    assert await api("VM.get_possible_hosts", vm) == [host]
    huge = await new_vm(api, memory_static_max=1 << 50, memory_dynamic_max=1 << 50)
    assert await api("VM.get_possible_hosts", huge) == []  # more memory than the host has
    await api("host.disable", host)
    assert await api("VM.get_possible_hosts", vm) == []
    await api("host.enable", host)
    template = await new_vm(api, is_a_template=True)
    assert await api("VM.get_possible_hosts", template) == []


async def test_cooperative_is_always_true(api: Api) -> None:  # noqa: F811
    vm = await new_vm(api)
    assert await api("VM.get_cooperative", vm) is True


@pytest.mark.parametrize("total_mib", [64, 512, 4096, 1 << 20])
async def test_maximise_memory_is_the_largest_fit_in_whole_mib(api: Api, total_mib: int) -> None:  # noqa: F811
    vm = await new_vm(api)  # 2 vCPUs
    total = total_mib * MIB
    exact = await api("VM.maximise_memory", vm, total, False)
    approximate = await api("VM.maximise_memory", vm, total, True)
    for value, vcpus in ((exact, 2), (approximate, 64)):
        assert value % MIB == 0 and value >= 0
        if value:
            assert value + memory_overhead(value, vcpus) <= total
        bigger = value + MIB
        assert bigger + memory_overhead(bigger, vcpus) > total  # one MiB more would not fit
    assert approximate <= exact  # room for 64 vCPUs is kept aside


async def test_maximise_memory_of_nothing_is_nothing(api: Api) -> None:  # noqa: F811
    vm = await new_vm(api)
    assert await api("VM.maximise_memory", vm, 0, False) == 0
    assert await api("VM.maximise_memory", vm, 16 * MIB, True) == 0
