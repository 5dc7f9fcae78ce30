"""network, VLAN and first-start networking through dispatch, on the simulated network driver.

The host's NICs are the simulator's (eth0..eth3, eth0 carrying the host's address); what the
records say is checked against what the driver really has (bridges, uplinks, VLAN tags).
The real bridge and Open vSwitch drivers run the same calls in tests/e2e/test_network_api.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pyxapi.auth import AccountFile
from pyxapi.context import Config
from pyxapi.drivers.network.base import Capability
from pyxapi.drivers.network.sim import SimNetworkDriver
from pyxapi.main import build, ensure_root_account
from pyxapi.ops.network_runtime import tap_name
from pyxapi.ops.vm_monitor import VMMonitor
from tests.ops.test_vm_power import Api, new_vm

NULL = "OpaqueRef:NULL"


async def make_api(tmp_path: Path, driver: SimNetworkDriver | None = None, **config: Any) -> Api:
    cfg = Config(data_dir=tmp_path, hypervisor="sim", **{"network": "sim", **config})
    ensure_root_account(AccountFile(tmp_path / "accounts.json"))
    ctx, dispatcher = build(cfg)
    api = Api(ctx, dispatcher)
    api.session = ctx.sessions.open("root", "pool-admin")
    runtime = ctx.services["network"]
    if driver is not None:
        runtime.driver = driver
    sim = runtime.driver
    for n in (2, 3):
        sim.add_host_nic(f"eth{n}", f"52:54:00:00:00:1{n}", 1500, speed_mbps=10000)
    address = ctx.store.get("host", ctx.host_ref)["address"]
    await sim.set_ipv4_address("eth0", f"{address}/24")  # the NIC the host is reached on
    await runtime.start()
    monitor = VMMonitor(ctx, ctx.services["hypervisor"])
    await monitor.start()
    ctx.services["monitor"] = monitor
    return api


async def close_api(api: Api) -> None:
    await api.ctx.services["monitor"].stop()
    await api.ctx.services["network"].stop()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    a = await make_api(tmp_path)
    yield a
    await close_api(a)


def sim_of(api: Api) -> SimNetworkDriver:
    driver = api.ctx.services["network"].driver
    assert isinstance(driver, SimNetworkDriver)
    return driver


async def pif_of(api: Api, device: str, vlan: int = -1) -> str:
    pifs = await api("PIF.get_all_records_where", f'field "device" = "{device}" and field "VLAN" = "{vlan}"')
    assert len(pifs) == 1, pifs
    return str(next(iter(pifs)))


async def bridges(api: Api) -> dict[str, Any]:
    return {b.name: b for b in await sim_of(api).list_bridges()}


async def snapshot(api: Api) -> dict[str, Any]:
    """Everything an error must leave as it was: records of the networking classes, the driver's bridges."""
    out: dict[str, Any] = {c: await api(f"{c}.get_all_records") for c in ("network", "PIF", "VLAN", "Bond")}
    out["bridges"] = await bridges(api)
    return out


async def vm_with_vif(api: Api, network: str, start: bool = True) -> tuple[str, str]:
    vm = await new_vm(api)
    vif = await api(
        "VIF.create",
        {"VM": vm, "network": network, "device": "0", "MAC": "", "MTU": 1500, "other_config": {},
         "qos_algorithm_type": "", "qos_algorithm_params": {}},
    )  # fmt: skip
    if start:
        await api("VM.start", vm, False, False)
        assert await api("VIF.get_currently_attached", vif) is True
    return vm, vif


# ------------------------------------------------------------ first start


async def test_first_start_scans_nics_into_pifs_and_networks(api: Api) -> None:
    records = await api("PIF.get_all_records")
    assert sorted(r["device"] for r in records.values()) == ["eth0", "eth1", "eth2", "eth3"]
    found = await bridges(api)
    for ref, rec in records.items():
        n = rec["device"][3:]
        net = await api("network.get_record", rec["network"])
        assert net["name_label"] == f"Pool-wide network associated with eth{n}"
        assert net["bridge"] == f"xenbr{n}" and net["PIFs"] == [ref] and net["MTU"] == 1500
        assert rec["physical"] is True and rec["VLAN"] == -1 and rec["managed"] is True
        assert rec["host"] == api.ctx.host_ref and rec["currently_attached"] is True
        assert rec["MAC"] == (await sim_of(api).list_host_nics())[int(n)].mac
        assert rec["properties"] == {"gro": "on"}
        metrics = await api("PIF_metrics.get_record", rec["metrics"])
        assert metrics["carrier"] is True and metrics["duplex"] is True
        assert metrics["speed"] == (1000 if n in "01" else 10000)
        assert metrics["last_updated"] > "2000"  # xapi datetimes: 20240102T03:04:05Z
        assert found[f"xenbr{n}"].uplink == f"eth{n}"  # the bridge really carries the NIC
    eth0 = await pif_of(api, "eth0")
    address = await api("host.get_address", api.ctx.host_ref)
    assert await api("host.get_management_interface", api.ctx.host_ref) == eth0
    rec = records[eth0]
    assert rec["management"] is True and rec["IP"] == address and rec["ip_configuration_mode"] == "Static"
    assert sim_of(api).get_ipv4_address("xenbr0") == f"{address}/24"  # the address moved to the bridge
    assert sum(r["management"] for r in records.values()) == 1
    # the host-internal network is as it was: no PIF, its own bridge, its address
    [internal] = await api("network.get_by_name_label", "pyxapi internal network")
    assert await api("network.get_PIFs", internal) == [] and "xapi0" in found


async def test_restart_keeps_pifs_and_brings_them_up_again(tmp_path: Path) -> None:
    api = await make_api(tmp_path)
    eth1 = await pif_of(api, "eth1")
    net = await api("network.create", {"name_label": "v7", "MTU": 1500})
    vlan = await api("VLAN.create", eth1, 7, net)
    await api("PIF.unplug", await pif_of(api, "eth3"))
    await api("PIF.reconfigure_ip", eth1, "Static", "10.7.0.9", "255.255.255.0", "", "")
    await api("host.management_reconfigure", eth1)
    before = await api("PIF.get_all_records")
    await close_api(api)
    again = await make_api(tmp_path)  # same database, a fresh (empty) simulator
    try:
        after = await again("PIF.get_all_records")
        assert after.keys() == before.keys()
        assert {r: a["currently_attached"] for r, a in after.items()} == {
            r: b["currently_attached"] for r, b in before.items()
        }
        found = await bridges(again)
        assert "xenbr3" not in found and found["xenbr1"].uplink == "eth1"
        vlan_bridge = await again("network.get_bridge", net)
        assert found[vlan_bridge].vlan == 7 and found[vlan_bridge].parent == "xenbr1"
        assert await again("VLAN.get_tag", vlan) == 7
        # the management interface and its address survive the restart
        assert await again("host.get_management_interface", again.ctx.host_ref) == eth1
        assert await again("host.get_address", again.ctx.host_ref) == "10.7.0.9"
        assert sim_of(again).get_ipv4_address("xenbr1") == "10.7.0.9/24"
    finally:
        await close_api(again)


# ------------------------------------------------------------ network


async def test_network_create_names_bridges_like_xapi(api: Api) -> None:
    a = await api("network.create", {"name_label": "a", "MTU": 0})
    b = await api("network.create", {"name_label": "b", "MTU": 9000, "bridge": "mybr0", "managed": True})
    assert await api("network.get_bridge", a) == "xapi1"  # xapi0 is the internal network's
    assert await api("network.get_MTU", a) == 1500 and await api("network.get_MTU", b) == 9000
    assert await api("network.get_bridge", b) == "mybr0"
    before = await snapshot(api)
    assert await api.error("network.create", {"name_label": "c", "bridge": "mybr0"}) == ["BRIDGE_NAME_EXISTS", "mybr0"]
    for bad in ("xenbr9", "xapi7", "tap1", "a-very-long-bridge-name", "br 0"):
        assert await api.error("network.create", {"name_label": "c", "bridge": bad}) == ["INVALID_VALUE", "bridge", bad]
    assert await api.error("network.create", {"name_label": "c", "MTU": 20}) == ["INVALID_VALUE", "MTU", "20"]
    assert await snapshot(api) == before
    # attach makes the internal bridge; the name is free again once the network is gone
    assert "xapi1" not in await bridges(api)
    await api("network.attach", a, api.ctx.host_ref)
    assert (await bridges(api))["xapi1"].uplink is None
    await api("network.destroy", a)
    assert "xapi1" not in await bridges(api)
    assert await api("network.get_bridge", await api("network.create", {"name_label": "d"})) == "xapi1"


async def test_network_destroy_refuses_pifs_vifs_and_system_networks(api: Api) -> None:
    eth1 = await pif_of(api, "eth1")
    phys = await api("PIF.get_network", eth1)
    assert await api.error("network.destroy", phys) == ["NETWORK_CONTAINS_PIF", eth1]
    net = await api("network.create", {"name_label": "guests"})
    vm, vif = await vm_with_vif(api, net)
    assert await api.error("network.destroy", net) == ["NETWORK_CONTAINS_VIF", vif]
    himn = await api(
        "network.create", {"name_label": "h", "other_config": {"is_host_internal_management_network": "true"}}
    )
    assert await api.error("network.destroy", himn) == ["CANNOT_DESTROY_SYSTEM_NETWORK", himn]
    assert await api.error("network.set_default_locking_mode", net, "disabled") == ["VIF_IN_USE", net, vif]
    await api("VM.hard_shutdown", vm)
    await api("network.set_default_locking_mode", net, "disabled")
    assert await api("network.get_default_locking_mode", net) == "disabled"
    await api("network.destroy", net)  # the halted VM's VIF goes with it, as in xapi
    assert await api("VM.get_VIFs", vm) == []
    assert await api.error("VIF.get_record", vif) == ["HANDLE_INVALID", "VIF", vif]


async def test_network_purposes_mtu_and_attach_for_vm(api: Api) -> None:
    a = await api("network.create", {"name_label": "a"})
    b = await api("network.create", {"name_label": "b"})
    await api("network.add_purpose", a, "nbd")
    await api("network.add_purpose", a, "nbd")  # already there: nothing changes
    assert await api("network.get_purpose", a) == ["nbd"]
    assert await api.error("network.add_purpose", b, "insecure_nbd") == [
        "NETWORK_INCOMPATIBLE_PURPOSES", "insecure_nbd", "nbd"]  # fmt: skip
    await api("network.remove_purpose", a, "nbd")
    await api("network.add_purpose", b, "insecure_nbd")
    assert await api("network.get_purpose", b) == ["insecure_nbd"]
    await api("network.set_MTU", a, 9000)
    assert await api("network.get_MTU", a) == 9000
    assert await api.error("network.set_MTU", a, 100000) == ["INVALID_VALUE", "MTU", "100000"]
    vm, _ = await vm_with_vif(api, a, start=False)
    await api("network.attach_for_vm", api.ctx.host_ref, vm)
    assert (await bridges(api))[await api("network.get_bridge", a)].mtu == 9000
    await api("network.detach_for_vm", api.ctx.host_ref, vm)
    other = api.ctx.store.create("host", {"name_label": "elsewhere"})
    assert await api.error("network.attach", a, other) == ["HOST_OFFLINE", other]
    unmanaged = await api("network.create", {"name_label": "u", "bridge": "ext0", "managed": False})
    assert await api.error("network.attach", unmanaged, api.ctx.host_ref) == ["BRIDGE_NOT_AVAILABLE", "ext0"]


# ------------------------------------------------------------ VLANs


async def test_vlan_create_and_destroy(api: Api) -> None:
    eth1 = await pif_of(api, "eth1")
    net = await api("network.create", {"name_label": "vlan 100"})
    vlan = await api("VLAN.create", eth1, 100, net)
    rec = await api("VLAN.get_record", vlan)
    assert rec["tagged_PIF"] == eth1 and rec["tag"] == 100
    untagged = rec["untagged_PIF"]
    pif = await api("PIF.get_record", untagged)
    assert pif["VLAN"] == 100 and pif["device"] == "eth1" and pif["network"] == net
    assert pif["MAC"] == "fe:ff:ff:ff:ff:ff" and pif["physical"] is False and pif["currently_attached"] is True
    assert pif["VLAN_master_of"] == vlan and pif["metrics"] == await api("PIF.get_metrics", eth1)
    assert await api("PIF.get_VLAN_slave_of", eth1) == [vlan]
    bridge = (await bridges(api))[await api("network.get_bridge", net)]
    assert bridge.vlan == 100 and bridge.parent == "xenbr1"
    # guests on the VLAN reach each other; the driver keeps them apart from other tags
    sim = sim_of(api)
    other = await api("network.create", {"name_label": "vlan 200"})
    await api("VLAN.create", eth1, 200, other)
    guests = []
    for i, network in enumerate((net, net, other)):
        vm, vif = await vm_with_vif(api, network)
        tap = tap_name(await api("VM.get_uuid", vm), "0")
        sim.plug_guest(tap, await api("VIF.get_MAC", vif), f"10.9.0.{i + 1}")
        guests.append((vm, tap))
    assert sim.ping(guests[0][1], "10.9.0.2") is True
    assert sim.ping(guests[0][1], "10.9.0.3") is False
    for vm, _ in guests:
        await api("VM.hard_shutdown", vm)
    await api("VLAN.destroy", vlan)
    assert await api.error("PIF.get_record", untagged) == ["HANDLE_INVALID", "PIF", untagged]
    assert await api("PIF.get_VLAN_slave_of", eth1) == [
        await api("PIF.get_VLAN_master_of", await pif_of(api, "eth1", 200))
    ]
    assert bridge.name not in await bridges(api)


async def test_vlan_errors_change_nothing(api: Api) -> None:
    eth1, eth2 = await pif_of(api, "eth1"), await pif_of(api, "eth2")
    net = await api("network.create", {"name_label": "v"})
    vlan = await api("VLAN.create", eth1, 10, net)
    untagged = await api("VLAN.get_untagged_PIF", vlan)
    free = await api("network.create", {"name_label": "free"})
    unmanaged = await api("network.create", {"name_label": "u", "bridge": "ext1", "managed": False})
    before = await snapshot(api)
    assert await api.error("VLAN.create", eth1, 10, free) == ["PIF_VLAN_EXISTS", "eth1"]
    assert await api.error("VLAN.create", eth1, 4095, free) == ["VLAN_TAG_INVALID", "4095"]
    assert await api.error("VLAN.create", eth1, -1, free) == ["VLAN_TAG_INVALID", "-1"]
    assert await api.error("VLAN.create", untagged, 11, free) == ["PIF_IS_VLAN", untagged]
    assert await api.error("VLAN.create", eth2, 10, net) == ["NETWORK_ALREADY_CONNECTED", net, untagged]
    assert await api.error("VLAN.create", eth2, 10, unmanaged) == ["NETWORK_UNMANAGED", unmanaged]
    assert await api.error("VLAN.create", eth1, 12, "OpaqueRef:nope") == ["HANDLE_INVALID", "network", "OpaqueRef:nope"]
    assert await api.error("PIF.forget", eth1) == ["PIF_VLAN_STILL_EXISTS", eth1]
    assert await api.error("PIF.forget", untagged) == ["PIF_VLAN_STILL_EXISTS", untagged]
    assert await api.error("PIF.destroy", eth1) == ["PIF_IS_PHYSICAL", eth1]
    vm, vif = await vm_with_vif(api, net)
    assert await api.error("VLAN.destroy", vlan) == ["VIF_IN_USE", net, vif]
    assert await api.error("PIF.unplug", eth1) == ["VIF_IN_USE", net, vif]  # its VLAN would go down too
    await api("VM.hard_shutdown", vm)
    await api("VM.destroy", vm)
    assert await snapshot(api) == before
    await api("PIF.destroy", untagged)  # the deprecated way, through VLAN.destroy
    assert await api("VLAN.get_all") == []


async def test_deprecated_and_pool_vlan_calls(api: Api) -> None:
    host = api.ctx.host_ref
    a, b, c = [await api("network.create", {"name_label": n}) for n in "abc"]
    pif = await api("PIF.create_VLAN", "eth2", a, host, 5)
    assert await api("PIF.get_VLAN", pif) == 5 and await api("PIF.get_network", pif) == a
    [pif2] = await api("pool.create_VLAN", "eth2", b, 6)
    [pif3] = await api("pool.create_VLAN_from_PIF", await pif_of(api, "eth3"), c, 6)
    assert await api("PIF.get_device", pif3) == "eth3" and await api("PIF.get_VLAN", pif2) == 6
    assert await api.error("pool.create_VLAN", "eth2", c, 5000) == ["VLAN_TAG_INVALID", "5000"]
    assert await api.error("PIF.create_VLAN", "eth9", c, host, 8) == ["INVALID_VALUE", "device", "eth9"]
    await api("PIF.destroy", pif)
    assert len(await api("VLAN.get_all")) == 2


async def test_vlan_needs_a_backend_with_vlans(tmp_path: Path) -> None:
    caps = frozenset(Capability) - {Capability.VLAN, Capability.BOND}
    api = await make_api(tmp_path, SimNetworkDriver(capabilities=caps))
    try:
        net = await api("network.create", {"name_label": "v"})
        before = await snapshot(api)
        eth1, eth2 = await pif_of(api, "eth1"), await pif_of(api, "eth2")
        assert await api.error("VLAN.create", eth1, 10, net) == ["OPENVSWITCH_NOT_ACTIVE"]
        assert await api.error("Bond.create", net, [eth1, eth2], "", "active-backup", {}) == ["OPENVSWITCH_NOT_ACTIVE"]
        assert await snapshot(api) == before
    finally:
        await close_api(api)
