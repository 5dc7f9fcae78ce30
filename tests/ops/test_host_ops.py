"""host.* on one host: enable/disable, evacuation, free memory, plugins, power refusal."""

from __future__ import annotations

import json

import pytest

from pyxapi.drivers.hypervisor.base import InvalidArgument
from pyxapi.drivers.hypervisor.xen.console_ring import check_debug_keys
from tests.ops.test_vm_power import Api, api, new_vm  # noqa: F401 - the fixture


async def test_disable_blocks_starts_until_enabled(api: Api) -> None:  # noqa: F811
    host = api.ctx.host_ref
    vm = await new_vm(api)
    await api("host.disable", host, False)
    assert await api("host.get_enabled", host) is False
    assert await api.error("VM.start", vm, False, False) == ["HOST_DISABLED", host]
    await api("host.enable", host)
    await api("VM.start", vm, False, False)
    assert await api("VM.get_power_state", vm) == "Running"


async def test_free_memory_follows_running_guests(api: Api) -> None:  # noqa: F811
    host = api.ctx.host_ref
    before = await api("host.compute_free_memory", host)
    vm = await new_vm(api)
    await api("VM.start", vm, False, False)
    after = await api("host.compute_free_memory", host)
    assert before - after == await api("VM.get_memory_static_max", vm)
    # evacuation has nowhere to go in a one-host pool while a guest runs
    assert await api("host.get_vms_which_prevent_evacuation", host) == {vm: ["NO_HOSTS_AVAILABLE"]}
    assert (await api.error("host.evacuate", host, "OpaqueRef:NULL", 0))[0] == "CANNOT_EVACUATE_HOST"
    await api("VM.hard_shutdown", vm)
    await api("host.evacuate", host, "OpaqueRef:NULL", 0)


async def test_plugins_and_power(api: Api) -> None:  # noqa: F811
    host = api.ctx.host_ref
    assert json.loads(await api("host.call_plugin", host, "pyxapi", "echo", {"a": "1"})) == {"a": "1"}
    assert float(await api("host.call_plugin", host, "pyxapi", "uptime", {})) > 0
    assert await api.error("host.call_plugin", host, "nope", "x", {}) == ["XENAPI_MISSING_PLUGIN", "nope"]
    assert (await api.error("host.call_plugin", host, "pyxapi", "nope", {}))[0] == "XENAPI_PLUGIN_FAILURE"
    assert await api.error("host.reboot", host) == ["HOST_NOT_DISABLED"]
    await api("host.disable", host, True)
    assert (await api.error("host.reboot", host))[0] == "OPERATION_NOT_ALLOWED"
    assert await api("host.get_enabled", host) is False


async def test_auto_enable_comes_back_at_the_next_start(api: Api) -> None:  # noqa: F811
    from pyxapi.ops.host import reenable_after_restart

    host = api.ctx.host_ref
    await api("host.disable", host, True)
    reenable_after_restart(api.ctx)
    assert await api("host.get_enabled", host) is True
    await api("host.disable", host, False)
    reenable_after_restart(api.ctx)
    assert await api("host.get_enabled", host) is False


async def test_debug_keys_need_a_hypervisor_with_a_console(api: Api) -> None:  # noqa: F811
    """Only Xen has debug keys (tested for real in tests/e2e/test_xen_host.py); elsewhere host.dmesg
    is the kernel's log."""
    host = api.ctx.host_ref
    error = await api.error("host.send_debug_keys", host, "h")
    assert error[0] == "OPERATION_NOT_ALLOWED" and "sim" in error[1]
    assert isinstance(await api("host.dmesg", host), str)


def test_debug_keys_are_key_characters() -> None:
    assert check_debug_keys("hq0*") == "hq0*"
    for bad in ("", "-h", "h q", "h\n", "é"):
        with pytest.raises(InvalidArgument):
            check_debug_keys(bad)
