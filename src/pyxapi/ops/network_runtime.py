"""Networks made real on this host: bridges, the internal network's address and DHCP, VIF taps.

Records say what should exist; this module asks the network driver to make it so at start-up
and when VMs start and stop. Devices live in the configured network namespace (the tests' own,
or the host's), never on the machine's real uplink unless a PIF says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from pyxapi.context import Context
from pyxapi.db.store import NULL_REF
from pyxapi.drivers.hypervisor.base import NicSpec
from pyxapi.drivers.network import base as net
from pyxapi.drivers.network.dhcp import DhcpConfig, DhcpService
from pyxapi.model.errors import ApiError
from pyxapi.ops import vif_rules, vif_spec
from pyxapi.ops.network_setup import ensure_attached, start_of_day

log = logging.getLogger(__name__)

INTERNAL_SUBNET_KEY = "pyxapi_internal_subnet"  # other_config: host address/prefix, e.g. 10.213.0.1/24
INTERNAL_NETWORK = "pyxapi internal network"
INTERNAL_BRIDGE = "xapi0"
DEFAULT_SUBNET = "10.213.0.1/24"
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def valid_mac(mac: str) -> bool:
    return bool(_MAC_RE.match(mac))


def tap_name(vm_uuid: str, device: str) -> str:
    # Kernel names are at most 15 characters; the VM uuid's head keeps them unique per host.
    return f"pyx{vm_uuid.replace('-', '')[:8]}.{device}"[:15]


def ensure_internal_network(ctx: Context) -> None:
    """First start: a host-internal network with DHCP, so new guests get an address offline."""
    store = ctx.store
    if any(rec["other_config"].get(INTERNAL_SUBNET_KEY) for _, rec in store.items("network")):
        return
    store.create(
        "network",
        {
            "name_label": INTERNAL_NETWORK,
            "name_description": "Host-internal network for guests, with DHCP (no uplink)",
            "bridge": INTERNAL_BRIDGE,
            "MTU": 1500,
            "managed": True,
            "other_config": {INTERNAL_SUBNET_KEY: DEFAULT_SUBNET, "automatic": "true"},
        },
    )


class NetworkRuntime:
    def __init__(self, ctx: Context, driver: net.NetworkDriver, run_dir: Path, netns: str | None) -> None:
        self.ctx = ctx
        self.driver = driver
        self.run_dir = run_dir
        self.netns = netns
        self._dhcp: dict[str, DhcpService] = {}
        self._lease_keepers: dict[str, asyncio.Task[None]] = {}  # PIF ref -> keeps its DHCP lease

    async def start(self) -> None:
        await self.driver.start()
        await start_of_day(self)  # PIFs: the first start's NIC scan, then bring-up (ops/network_setup.py)
        for _, rec in self.ctx.store.items("network"):
            if rec["managed"] and rec["bridge"] and not rec["PIFs"]:  # host-internal networks
                await self.realise(rec["bridge"], rec["MTU"], rec["other_config"].get(INTERNAL_SUBNET_KEY))

    async def realise(self, bridge: str, mtu: int, subnet: str | None) -> None:
        await self.driver.create_bridge(net.BridgeSpec(bridge, mtu=mtu))
        if not subnet or bridge in self._dhcp:
            return
        iface = ipaddress.ip_interface(subnet)
        hosts = list(iface.network.hosts())
        await self.driver.set_ipv4_address(bridge, subnet)
        if self.driver.name == "sim":
            return  # simulated bridges have no device for a real DHCP server to serve
        self.run_dir.mkdir(parents=True, exist_ok=True)
        service = DhcpService(
            DhcpConfig(
                interface=bridge,
                range_start=str(hosts[len(hosts) // 2]),
                range_end=str(hosts[-1]),
                netmask=str(iface.network.netmask),
                router=str(iface.ip),
            ),
            self.run_dir,
            netns=self.netns,
        )
        await service.start()
        self._dhcp[bridge] = service

    async def ensure_bridge(self, network: dict[str, Any]) -> None:
        """Networks are attached on demand, as xapi does when a VM starts: make the bridge if missing."""
        if network["PIFs"] or not network["managed"]:
            await ensure_attached(self.ctx, network)  # its PIFs plugged, or its bridge checked
            return
        try:
            await self.driver.get_bridge(network["bridge"])
        except net.NotFound:
            await self.realise(network["bridge"], network["MTU"], network["other_config"].get(INTERNAL_SUBNET_KEY))

    async def release(self, bridge: str) -> None:
        """A host-internal bridge no network needs any more: its DHCP service stops, the bridge goes."""
        service = self._dhcp.pop(bridge, None)
        if service is not None:
            with contextlib.suppress(Exception):
                await service.stop()
        with contextlib.suppress(net.NotFound):
            await self.driver.destroy_bridge(bridge)

    def keep_lease(self, pif: str, keeper: Coroutine[Any, Any, None] | None) -> None:
        """Replace the task keeping the PIF's DHCP lease (pif_realise.keep_lease); None: stop it."""
        old = self._lease_keepers.pop(pif, None)
        if old is not None and old is not asyncio.current_task():
            old.cancel()
        if keeper is not None:
            self._lease_keepers[pif] = asyncio.create_task(keeper, name=f"dhcp-lease {pif}")

    async def stop(self) -> None:
        keepers = list(self._lease_keepers.values())
        self._lease_keepers.clear()
        for task in keepers:
            task.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
        for service in self._dhcp.values():
            with contextlib.suppress(Exception):
                await service.stop()
        self._dhcp.clear()

    async def plug_vifs(self, vm: str) -> dict[str, NicSpec]:
        """Create and attach a tap for each of the VM's VIFs; returns VIF ref -> NIC spec."""
        store = self.ctx.store
        rec = store.get("VM", vm)
        nics: dict[str, NicSpec] = {}
        try:
            for vif in rec["VIFs"]:
                v = store.get("VIF", vif)
                network = store.get("network", v["network"]) if v["network"] != NULL_REF else None
                if network is None or not network["bridge"]:
                    continue
                tap = tap_name(rec["uuid"], v["device"])
                await self.ensure_bridge(network)
                with contextlib.suppress(net.NotFound):
                    await self.driver.detach_vif(tap)  # a leftover from a crash
                # Locking (with the network's default) and rate limit as VIF.plug applies them.
                await self.driver.attach_vif(vif_spec.driver_spec(v, network, tap))
                nics[vif] = vif_spec.nic_spec(v, tap, self.driver.capabilities)
        except net.NetworkError as e:
            await self.unplug_vifs(vm)
            raise ApiError("INTERNAL_ERROR", f"network: {e}") from None
        return nics

    async def unplug_vifs(self, vm: str) -> None:
        store = self.ctx.store
        if not store.exists("VM", vm):
            return
        rec = store.get("VM", vm)
        for vif in rec["VIFs"]:
            tap = tap_name(rec["uuid"], store.get("VIF", vif)["device"])
            try:
                await self.driver.detach_vif(tap)
            except net.NetworkError as e:
                log.debug("detach %s: %s", tap, e)

    def mark_attached(self, vm: str, attached: bool) -> None:
        store = self.ctx.store
        with store.transaction():
            for vif in store.get("VM", vm)["VIFs"]:
                if store.get("VIF", vif)["currently_attached"] != attached:
                    store.set_field("VIF", vif, "currently_attached", attached)
            vif_rules.refresh_vm_vifs(store, vm)
