"""Start-up facts a Xen host gives the daemon's wiring (main.py): the whole machine's CPUs and
memory instead of dom0's share, the Xen version and capabilities, and dom0's own size."""

from __future__ import annotations

from typing import Any

from pyxapi.drivers.hypervisor.xen.driver import XenDriver
from pyxapi.drivers.hypervisor.xen.host import adjust_linux_facts
from pyxapi.hostinfo import HostFacts


def xen_host_facts(driver: XenDriver, facts: HostFacts, services: dict[str, Any]) -> HostFacts:
    """Blocking (libvirt): called once while the daemon is wired up, before it serves."""
    xen, dom0 = driver.read_host()
    services["xen_version"] = xen.hypervisor_version
    services["hypervisor_capabilities"] = list(xen.capabilities)
    services["dom0_memory"] = dom0.memory
    services["control_domain"] = (dom0.memory, dom0.vcpus)
    return adjust_linux_facts(facts, xen)
