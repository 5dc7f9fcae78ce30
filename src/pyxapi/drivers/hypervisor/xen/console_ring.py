"""Xen's own console: the hypervisor's message ring (`xl dmesg`, what xapi's host.dmesg returns
on a Xen host) and its debug keys (`xl debug-keys`, host.send_debug_keys). libvirt exposes
neither, so they go through xl, as the driver's vCPU times do."""

from __future__ import annotations

import asyncio
import string

from pyxapi.drivers.hypervisor.base import HypervisorError, InvalidArgument

XL_TIMEOUT = 30.0
DEBUG_KEYS = frozenset(string.ascii_letters + string.digits + string.punctuation) - {"-"}
"""What `xl debug-keys` passes on: printable key characters. A leading '-' would be read as an
option, and Xen has no debug key for it anyway."""


async def _xl(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "xl", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), XL_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise HypervisorError(f"xl {args[0]} did not answer in {XL_TIMEOUT:.0f} s") from None
    if proc.returncode != 0:
        raise HypervisorError(f"xl {args[0]}: {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


async def read_console_ring() -> str:
    return await _xl("dmesg")


def check_debug_keys(keys: str) -> str:
    if not keys or not set(keys) <= DEBUG_KEYS:
        raise InvalidArgument(f"debug keys must be printable key characters other than '-', got {keys!r}")
    return keys


async def send_debug_keys(keys: str) -> None:
    await _xl("debug-keys", check_debug_keys(keys))
