"""A one-shot DHCP client for a host interface (a PIF's bridge): busybox udhcpc.

udhcpc asks once (a few tries), reports the lease through its script and exits: the caller
sets the address itself (set_ipv4_address), so the client changes nothing on the interface.
The caller also keeps the lease (ops/pif_realise.py): it asks again for the same address
(`requested`) when half the lease time has passed, as a DHCP client renews at T1.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from .base import CommandFailed, check_ifname
from .proc import run

# udhcpc runs its script with the lease in the environment; this one only prints it.
_SCRIPT = """#!/bin/sh
case "$1" in
  bound|renew) echo "PYXAPI-LEASE ip=$ip subnet=$subnet router=${router%% *} dns=$dns lease=$lease" ;;
esac
exit 0
"""


DEFAULT_LEASE_SECONDS = 3600
"""Assumed when a server names no lease time (option 51 is mandatory in an ACK, but be lenient)."""


@dataclass(frozen=True, slots=True)
class ClientLease:
    ip: str
    netmask: str
    router: str  # "" when the server gave none
    dns: tuple[str, ...]
    seconds: int = DEFAULT_LEASE_SECONDS  # the lease time the server gave

    @property
    def cidr(self) -> str:
        return str(ipaddress.IPv4Interface(f"{self.ip}/{self.netmask}"))


def parse_report(text: str) -> ClientLease | None:
    for line in text.splitlines():
        if not line.startswith("PYXAPI-LEASE "):
            continue
        fields = dict(item.partition("=")[::2] for item in line.split()[1:])
        try:
            ipaddress.IPv4Interface(f"{fields.get('ip', '')}/{fields.get('subnet', '')}")
        except ValueError:
            return None
        dns = tuple(d for d in fields.get("dns", "").split(",") if d)
        lease = fields.get("lease", "")
        seconds = int(lease) if lease.isdigit() and int(lease) > 0 else DEFAULT_LEASE_SECONDS
        return ClientLease(fields["ip"], fields["subnet"], fields.get("router", ""), dns, seconds)
    return None


async def request_lease(
    interface: str, run_dir: Path, netns: str | None, tries: int = 3, requested: str | None = None
) -> ClientLease | None:
    """The lease a DHCP server on ``interface``'s segment offers, or None when none answers.
    ``requested``: the address to ask for (the one held), which a server extends if it can."""
    check_ifname(interface)
    run_dir.mkdir(parents=True, exist_ok=True)
    script = run_dir / "udhcpc-report.sh"
    if not script.exists() or script.read_text() != _SCRIPT:
        script.write_text(_SCRIPT)
        script.chmod(0o755)
    argv = ["busybox", "udhcpc", "-f", "-q", "-n", "-i", interface, "-t", str(tries), "-T", "1", "-s", str(script)]
    if requested:
        argv += ["-r", str(ipaddress.IPv4Address(requested))]
    try:
        res = await run(argv, netns=netns, timeout=tries * 3 + 10)
    except CommandFailed:
        return None  # no offer (udhcpc -n exits 1)
    return parse_report(res.stdout)
