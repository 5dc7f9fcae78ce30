"""Host NICs become PIFs: PIF.scan's work, PIF records and their PIF_metrics.

As in xapi: a NIC without a PIF gets one, on the network whose bridge follows the naming
convention (eth<N> -> xenbr<N>, else br<device>), created as "Pool-wide network associated
with <device>" when missing. The NIC that carries the host's address is the management PIF.
NICs the daemon must not reconfigure (the machine's own, outside a namespace) become
unmanaged PIFs (managed = false): xapi's marker for interfaces the toolstack leaves alone.
"""

from __future__ import annotations

import ipaddress
import logging
import zlib
from typing import Any

from pyxapi.context import Context
from pyxapi.db.store import NULL_REF
from pyxapi.drivers.network import base as net
from pyxapi.ops.pif_realise import driver, may_manage_host_nics
from pyxapi.wire.marshal import now_datetime

log = logging.getLogger(__name__)

DEFAULT_PROPERTIES = {"gro": "on"}
EPOCH = "19700101T00:00:00Z"


def bridge_for_device(device: str) -> str:
    name = f"xenbr{device[3:]}" if device.startswith("eth") else f"br{device}"
    if len(name) > 15:  # a kernel interface name: keep it unique but short
        name = f"br{zlib.crc32(device.encode()):08x}"
    return name


def network_name_for_device(device: str) -> str:
    return f"Pool-wide network associated with {device}"


async def host_nics(ctx: Context) -> list[net.HostNic]:
    try:
        return await driver(ctx).list_host_nics()
    except net.NotSupported:
        return []


def physical_pifs(ctx: Context, host: str) -> dict[str, str]:
    """device -> PIF ref of this host's physical PIFs."""
    return {rec["device"]: ref for ref, rec in ctx.store.items("PIF") if rec["host"] == host and rec["physical"]}


def find_or_create_network(ctx: Context, device: str) -> str:
    bridge = bridge_for_device(device)
    nets = [ref for ref, rec in ctx.store.items("network") if rec["bridge"] == bridge]
    if len(nets) == 1:
        return nets[0]
    return ctx.store.create(
        "network",
        {
            "name_label": network_name_for_device(device),
            "name_description": "",
            "MTU": 1500,
            "bridge": bridge,
            "managed": True,
            "other_config": {},
        },
    )


def new_metrics(ctx: Context, nic: net.HostNic | None = None) -> str:
    return ctx.store.create("PIF_metrics", metrics_fields(nic) if nic else {"last_updated": EPOCH})


def metrics_fields(nic: net.HostNic) -> dict[str, Any]:
    hw = nic.hardware or net.NicHardware()
    return {
        "carrier": nic.carrier,
        "speed": nic.speed_mbps or 0,
        "duplex": bool(nic.duplex),
        "vendor_id": hw.vendor_id,
        "vendor_name": hw.vendor_name,
        "device_id": hw.device_id,
        "device_name": hw.device_name,
        "pci_bus_path": hw.pci_bus_path,
        "last_updated": now_datetime(),
    }


def _host_address_on(nic: net.HostNic, address: str) -> ipaddress.IPv4Interface | None:
    for cidr in nic.ipv4:
        iface = ipaddress.IPv4Interface(cidr)
        if str(iface.ip) == address:
            return iface
    return None


def introduce_physical(ctx: Context, host: str, nic: net.HostNic, managed: bool, network: str | None = None) -> str:
    """A PIF record for a host NIC (xapi's introduce_internal), with its metrics and network."""
    store = ctx.store
    fields: dict[str, Any] = {
        "device": nic.name,
        "device_name": nic.name,
        "network": network or find_or_create_network(ctx, nic.name),
        "host": host,
        "MAC": nic.mac,
        "MTU": nic.mtu,
        "VLAN": -1,
        "metrics": new_metrics(ctx, nic),
        "physical": True,
        "currently_attached": False,
        "ip_configuration_mode": "None",
        "management": False,
        "managed": managed,
        "properties": dict(DEFAULT_PROPERTIES),
        "primary_address_type": "IPv4",
    }
    mgmt = _host_address_on(nic, store.get("host", host)["address"])
    if mgmt is not None:
        # The interface the host is reached on: attached already, its address recorded as found.
        fields.update(
            management=True,
            currently_attached=True,
            ip_configuration_mode="Static",
            IP=str(mgmt.ip),
            netmask=str(mgmt.netmask),
        )
    return store.create("PIF", fields)


async def scan(ctx: Context, host: str) -> list[str]:
    """New PIFs for this host's NICs that have none; refreshes the others. Returns the new PIFs."""
    store = ctx.store
    nics = await host_nics(ctx)
    known = physical_pifs(ctx, host)
    our_bridges = {rec["bridge"] for _, rec in store.items("network") if rec["bridge"]}
    managed = may_manage_host_nics(ctx)
    created = []
    with store.transaction():
        refresh(ctx, host, nics)
        for nic in nics:
            if nic.name in known:
                continue
            if nic.master is not None and nic.master in our_bridges:
                continue  # a port on one of our bridges (a guest's veth), not an uplink
            created.append(introduce_physical(ctx, host, nic, managed))
    if created:
        log.info("PIF.scan: %d new PIFs: %s", len(created), ", ".join(n.name for n in nics if n.name not in known))
    return created


def refresh(ctx: Context, host: str, nics: list[net.HostNic]) -> None:
    """MAC and metrics of this host's physical PIFs from what the driver sees now."""
    store = ctx.store
    by_name = {n.name: n for n in nics}
    for device, pif in physical_pifs(ctx, host).items():
        nic = by_name.get(device)
        if nic is None:
            continue
        rec = store.get("PIF", pif)
        if rec["MAC"] != nic.mac and rec["bond_slave_of"] == NULL_REF:  # bonding rewrites members
            store.set_field("PIF", pif, "MAC", nic.mac)
        if rec["metrics"] != NULL_REF and store.exists("PIF_metrics", rec["metrics"]):
            store.update("PIF_metrics", rec["metrics"], metrics_fields(nic))
        else:
            store.set_field("PIF", pif, "metrics", new_metrics(ctx, nic))


async def refresh_metrics(ctx: Context, host: str) -> None:
    nics = await host_nics(ctx)
    with ctx.store.transaction():
        refresh(ctx, host, nics)
