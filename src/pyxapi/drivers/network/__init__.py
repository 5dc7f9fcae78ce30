"""Network drivers: base.py (the contract), sim.py, bridge.py (Linux bridge), ovs.py (Open vSwitch).

dhcp.py is the DHCP service for host-internal networks. main.py picks a driver with
create_driver(); nothing here is a module-level instance.
"""

from __future__ import annotations

from pathlib import Path

from .base import InvalidArgument, NetworkDriver

DRIVER_KINDS = ("sim", "bridge", "ovs")


def create_driver(kind: str, *, netns: str | None = None, run_dir: str | Path | None = None) -> NetworkDriver:
    """``run_dir`` is only for ovs: where its private ovsdb-server and ovs-vswitchd live."""
    if kind == "sim":
        from .sim import SimNetworkDriver

        return SimNetworkDriver(netns=netns)
    if kind == "bridge":
        from .bridge import LinuxBridgeDriver

        return LinuxBridgeDriver(netns=netns)
    if kind == "ovs":
        from .ovs import OvsNetworkDriver

        return OvsNetworkDriver(netns=netns, run_dir=run_dir)
    raise InvalidArgument(f"unknown network driver {kind!r} (one of {', '.join(DRIVER_KINDS)})")
