"""Running dom0's Xen command-line tools (xenstore-utils, xl) for what libvirt does not expose."""

from __future__ import annotations

import asyncio
import shutil

from pyxapi.drivers.hypervisor.base import HypervisorError, HypervisorUnavailable


def tool(name: str, package: str) -> str:
    """The tool's path; HypervisorUnavailable naming the Debian package when it is missing."""
    path = shutil.which(name)
    if path is None:
        raise HypervisorUnavailable(name, package)
    return path


async def run_tool(*argv: str, timeout: float) -> str:
    """The command's output; HypervisorError when it fails or outlives `timeout`."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise HypervisorError(f"{argv[0]} timed out after {timeout:g}s") from None
    if proc.returncode != 0:
        raise HypervisorError(f"{' '.join(argv)}: {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")
