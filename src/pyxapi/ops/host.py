"""host.* messages of a single host: time, enable/disable, evacuation, memory, plugins, power.

Pools, NICs and storage bring their own host messages with their issues.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from pyxapi.api.dispatch import Call, Handler
from pyxapi.context import Context
from pyxapi.drivers.hypervisor import base as hv
from pyxapi.model.errors import INTERNAL_ERROR, INVALID_VALUE, OPERATION_NOT_ALLOWED, ApiError
from pyxapi.wire.marshal import now_datetime

AUTO_ENABLE_KEY = "pyxapi_auto_enable"  # other_config mark: re-enable at the next start


def get_servertime(call: Call, host: str) -> str:
    return now_datetime()


def get_server_localtime(call: Call, host: str) -> str:
    return time.strftime("%Y%m%dT%H:%M:%S", time.localtime())


def _this_host(call: Call, host: str) -> None:
    if host != call.ctx.host_ref:
        raise ApiError("HOST_OFFLINE", host)


def enable(call: Call, host: str) -> None:
    _this_host(call, host)
    store = call.ctx.store
    other = {k: v for k, v in store.get("host", host)["other_config"].items() if k != AUTO_ENABLE_KEY}
    store.update("host", host, {"enabled": True, "other_config": other})


def disable(call: Call, host: str, auto_enable: bool = True) -> None:
    """No new VMs start here until enable (or, with auto_enable, until the next start)."""
    _this_host(call, host)
    store = call.ctx.store
    other = dict(store.get("host", host)["other_config"])
    if auto_enable:
        other[AUTO_ENABLE_KEY] = "true"
    else:
        other.pop(AUTO_ENABLE_KEY, None)
    store.update("host", host, {"enabled": False, "other_config": other})


def reenable_after_restart(ctx: Context) -> None:
    """Start-up: a host disabled with auto_enable comes back enabled, as in xapi."""
    rec = ctx.store.get("host", ctx.host_ref)
    if not rec["enabled"] and rec["other_config"].get(AUTO_ENABLE_KEY) == "true":
        other = {k: v for k, v in rec["other_config"].items() if k != AUTO_ENABLE_KEY}
        ctx.store.update("host", ctx.host_ref, {"enabled": True, "other_config": other})


def _running_guests(call: Call, host: str) -> list[str]:
    store = call.ctx.store
    return [
        vm
        for vm in store.get("host", host)["resident_VMs"]
        if not store.get("VM", vm)["is_control_domain"]
        and store.get("VM", vm)["power_state"] in ("Running", "Paused")
    ]


def get_vms_which_prevent_evacuation(call: Call, host: str) -> dict[str, list[str]]:
    # A single-host pool has nowhere to move a running guest to.
    return {vm: ["NO_HOSTS_AVAILABLE"] for vm in _running_guests(call, host)}


def assert_can_evacuate(call: Call, host: str) -> None:
    _this_host(call, host)
    blockers = get_vms_which_prevent_evacuation(call, host)
    if blockers:
        raise ApiError("CANNOT_EVACUATE_HOST", ",".join(f"{vm}:{codes[0]}" for vm, codes in blockers.items()))


def evacuate(call: Call, host: str, network: str = "", evacuate_batch_size: int = 0) -> None:
    """Move every guest away; with no other host in the pool, refuse while guests run."""
    assert_can_evacuate(call, host)


def free_memory(ctx: Context) -> int:
    """What this host can still give guests: total less dom0's share and running guests'."""
    store = ctx.store
    host = store.get("host", ctx.host_ref)
    total = store.get("host_metrics", host["metrics"])["memory_total"]
    used = 0
    for vm in host["resident_VMs"]:
        rec = store.get("VM", vm)
        if rec["is_control_domain"]:
            used += int(ctx.services.get("dom0_memory", min(rec["memory_target"], 1 << 30)))
        elif rec["power_state"] in ("Running", "Paused"):
            used += rec["memory_static_max"]
    return max(0, total - used)


def compute_free_memory(call: Call, host: str) -> int:
    _this_host(call, host)
    return free_memory(call.ctx)


def compute_memory_overhead(call: Call, host: str) -> int:
    # What the toolstack itself takes from the host beyond dom0's share.
    return 64 << 20


async def _uptime(args: dict[str, str]) -> str:
    with open("/proc/uptime") as f:
        return f.read().split()[0]


async def _echo(args: dict[str, str]) -> str:
    return json.dumps(args, sort_keys=True)


# The plugins pyxapi offers through host.call_plugin: plugin name -> function name -> handler.
PLUGINS: dict[str, dict[str, Callable[[dict[str, str]], object]]] = {
    "pyxapi": {"echo": _echo, "uptime": _uptime},
}


async def call_plugin(call: Call, host: str, plugin: str, fn: str, args: dict[str, str]) -> str:
    _this_host(call, host)
    functions = PLUGINS.get(plugin)
    if functions is None:
        raise ApiError("XENAPI_MISSING_PLUGIN", plugin)
    handler = functions.get(fn)
    if handler is None:
        raise ApiError("XENAPI_PLUGIN_FAILURE", "missing function", "", f"{plugin} has no function {fn}")
    result = handler(args)
    if asyncio.iscoroutine(result):
        result = await result
    return str(result)


def _hypervisor_console(call: Call) -> hv.HypervisorConsole | None:
    driver = call.ctx.services.get("hypervisor")
    return driver if isinstance(driver, hv.HypervisorConsole) else None


async def dmesg(call: Call, host: str) -> str:
    """The hypervisor's messages: Xen's console ring on a Xen host (as xapi), else the kernel's log
    (KVM is part of the kernel)."""
    _this_host(call, host)
    console = _hypervisor_console(call)
    if console is not None:
        try:
            return await console.read_console_ring()
        except hv.HypervisorError as e:
            raise ApiError(INTERNAL_ERROR, f"reading the hypervisor's console ring: {e}") from None
    proc = await asyncio.create_subprocess_exec(
        "dmesg", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await proc.communicate()
    return out.decode(errors="replace")


async def send_debug_keys(call: Call, host: str, keys: str) -> None:
    """Xen's debug keys (`xl debug-keys`): diagnostics the hypervisor prints to its console ring."""
    _this_host(call, host)
    console = _hypervisor_console(call)
    if console is None:
        driver = call.ctx.services.get("hypervisor")
        name = getattr(driver, "name", "this")
        raise ApiError(OPERATION_NOT_ALLOWED, f"the {name} hypervisor has no debug keys (Xen has)")
    try:
        await console.send_debug_keys(keys)
    except hv.InvalidArgument:
        raise ApiError(INVALID_VALUE, "keys", keys) from None
    except hv.HypervisorError as e:
        raise ApiError(INTERNAL_ERROR, f"sending debug keys: {e}") from None


def _power(call: Call, host: str, what: str) -> None:
    _this_host(call, host)
    if call.ctx.store.get("host", host)["enabled"]:
        raise ApiError("HOST_NOT_DISABLED")
    if not call.ctx.services.get("allow_host_power", False):
        raise ApiError(
            OPERATION_NOT_ALLOWED,
            f"host {what} is disabled in pyxapi's configuration (pyxapi serve --allow-host-power)",
        )
    raise ApiError(OPERATION_NOT_ALLOWED, f"host {what} is not implemented on this platform yet")


def reboot(call: Call, host: str) -> None:
    _power(call, host, "reboot")


def shutdown(call: Call, host: str) -> None:
    _power(call, host, "shutdown")


def is_in_emergency_mode(call: Call) -> bool:
    """A pool member whose master is unreachable runs in emergency mode; a host that is its own
    pool's master (every pyxapi host, until pools land) never does."""
    return False


MESSAGES: dict[str, Handler] = {
    "is_in_emergency_mode": is_in_emergency_mode,
    "get_servertime": get_servertime,
    "get_server_localtime": get_server_localtime,
    "enable": enable,
    "disable": disable,
    "evacuate": evacuate,
    "assert_can_evacuate": assert_can_evacuate,
    "get_vms_which_prevent_evacuation": get_vms_which_prevent_evacuation,
    "compute_free_memory": compute_free_memory,
    "compute_memory_overhead": compute_memory_overhead,
    "call_plugin": call_plugin,
    "dmesg": dmesg,
    "send_debug_keys": send_debug_keys,
    "reboot": reboot,
    "shutdown": shutdown,
}
