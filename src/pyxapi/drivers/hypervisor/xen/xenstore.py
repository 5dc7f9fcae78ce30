"""xenstore from dom0 through Debian's xenstore-utils, and the guest metrics guests write there.

A guest agent (XenServer's xe-guest-utilities, or the test guest's small shell agent) writes what
it knows under the guest's own ``/local/domain/<domid>``: ``data/os_name``, ``data/os_distro``,
``data/os_majorver``/``os_minorver``, ``data/os_uname``, ``data/host_name``, and per NIC
``attr/vif/<device>/ipv4/<n>`` and ``ipv6/<n>`` (plus ``name`` and ``mac``, which the test
guest adds). This module reads them back as the driver's GuestAgentInfo.
"""

from __future__ import annotations

import re

from pyxapi.drivers.hypervisor.base import GuestAgentInfo, GuestInterface, HypervisorError
from pyxapi.drivers.hypervisor.xen.tools import run_tool, tool

_LINE = re.compile(r'^(/\S*) = "(.*)"\s*(?:\(.*\))?$')


def _tool(name: str) -> str:
    return tool(name, "xenstore-utils")


def _unescape(value: str) -> str:
    # xenstore-ls escapes non-printable bytes and quotes C-style.
    return value.encode().decode("unicode_escape", errors="replace") if "\\" in value else value


def parse_ls(text: str) -> dict[str, str]:
    """``xenstore-ls -f`` output → {absolute path: value}."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out[m.group(1)] = _unescape(m.group(2))
    return out


async def read_tree(path: str, *, timeout: float = 10.0) -> dict[str, str]:
    """Every key under ``path`` (absolute paths); empty when the path does not exist."""
    try:
        return parse_ls(await run_tool(_tool("xenstore-ls"), "-f", path, timeout=timeout))
    except HypervisorError as e:
        if "No such file" in str(e) or "ENOENT" in str(e) or "could not read" in str(e).lower():
            return {}
        raise


async def write(path: str, value: str, *, timeout: float = 10.0) -> None:
    await run_tool(_tool("xenstore-write"), path, value, timeout=timeout)


def guest_info(domid: int, tree: dict[str, str], macs: dict[int, str]) -> GuestAgentInfo | None:
    """What the guest agent reported, or None when no agent has written anything.

    ``macs`` maps the NIC devices the domain has now to their MACs: a NIC the guest still
    mentions after it was unplugged is not reported.
    """
    home = f"/local/domain/{domid}"
    data = {k[len(home) + 6 :]: v for k, v in tree.items() if k.startswith(home + "/data/")}
    if not data.get("os_name") and not data.get("os_uname"):
        return None
    os_info = {
        "name": data.get("os_name", ""),
        "pretty-name": data.get("os_name", ""),
        "id": data.get("os_distro", ""),
        "distro": data.get("os_distro", ""),
        "version": ".".join(v for v in (data.get("os_majorver", ""), data.get("os_minorver", "")) if v),
        "major": data.get("os_majorver", ""),
        "minor": data.get("os_minorver", ""),
        "kernel-release": data.get("os_uname", ""),
        "uname": data.get("os_uname", ""),
    }
    vif_prefix = f"{home}/attr/vif/"
    reported: dict[int, dict[str, str]] = {}
    for key, value in tree.items():
        if not key.startswith(vif_prefix):
            continue
        number, _, rest = key[len(vif_prefix) :].partition("/")
        if number.isdigit() and rest:
            reported.setdefault(int(number), {})[rest] = value
    interfaces = []
    for device, keys in sorted(reported.items()):
        if device not in macs:
            continue
        ipv4 = tuple(v for k, v in sorted(keys.items()) if k.startswith("ipv4/") and v)
        ipv6 = tuple(v for k, v in sorted(keys.items()) if k.startswith("ipv6/") and v)
        interfaces.append(
            GuestInterface(keys.get("name", f"eth{device}"), keys.get("mac", macs[device]).lower(), ipv4, ipv6)
        )
    return GuestAgentInfo({k: v for k, v in os_info.items() if v}, data.get("host_name", ""), tuple(interfaces))
