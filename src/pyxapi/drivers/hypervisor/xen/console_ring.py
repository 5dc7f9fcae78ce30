"""Xen's own console: the hypervisor's message ring (`xl dmesg`, what xapi's host.dmesg returns
on a Xen host) and its debug keys (`xl debug-keys`, host.send_debug_keys). libvirt exposes
neither, so they go through xl, as the driver's vCPU times do."""

from __future__ import annotations

import string

from pyxapi.drivers.hypervisor.base import InvalidArgument
from pyxapi.drivers.hypervisor.xen.tools import run_tool, tool

XL_TIMEOUT = 30.0
DEBUG_KEYS = frozenset(string.ascii_letters + string.digits + string.punctuation) - {"-"}
"""What `xl debug-keys` passes on: printable key characters. A leading '-' would be read as an
option, and Xen has no debug key for it anyway."""


async def _xl(*args: str) -> str:
    return await run_tool(tool("xl", "xen-utils-4.17"), *args, timeout=XL_TIMEOUT)


async def read_console_ring() -> str:
    return await _xl("dmesg")


def check_debug_keys(keys: str) -> str:
    if not keys or not set(keys) <= DEBUG_KEYS:
        raise InvalidArgument(f"debug keys must be printable key characters other than '-', got {keys!r}")
    return keys


async def send_debug_keys(keys: str) -> None:
    await _xl("debug-keys", check_debug_keys(keys))
