"""PIF, IP configuration, management interface and Bond messages through dispatch, on the
simulated network driver (the same host as tests/ops/test_network_ops.py: eth0..eth3)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pyxapi.drivers.network.sim import SimNetworkDriver
from tests.ops.test_network_ops import bridges, close_api, make_api, pif_of, sim_of, snapshot, vm_with_vif
from tests.ops.test_vm_power import Api

NULL = "OpaqueRef:NULL"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    a = await make_api(tmp_path)
    yield a
    await close_api(a)


# ------------------------------------------------------------ scan, introduce, forget


async def test_scan_finds_new_nics_once(api: Api) -> None:
    host = api.ctx.host_ref
    sim_of(api).add_host_nic("eth4", "52:54:00:00:00:14", 9000, speed_mbps=25000)
    await api("PIF.scan", host)
    await api("PIF.scan", host)  # nothing new the second time
    eth4 = await pif_of(api, "eth4")
    rec = await api("PIF.get_record", eth4)
    assert rec["MAC"] == "52:54:00:00:00:14" and rec["MTU"] == 9000 and rec["currently_attached"] is False
    assert rec["management"] is False and rec["ip_configuration_mode"] == "None"
    assert await api("network.get_bridge", rec["network"]) == "xenbr4"
    assert (await api("PIF_metrics.get_record", rec["metrics"]))["speed"] == 25000
    other = api.ctx.store.create("host", {"name_label": "elsewhere"})
    assert await api.error("PIF.scan", other) == ["HOST_OFFLINE", other]


async def test_introduce_and_forget(api: Api) -> None:
    host = api.ctx.host_ref
    eth3 = await pif_of(api, "eth3")
    network = await api("PIF.get_network", eth3)
    assert await api.error("PIF.forget", await pif_of(api, "eth0")) == [
        "PIF_IS_MANAGEMENT_INTERFACE", await pif_of(api, "eth0")]  # fmt: skip
    await api("PIF.forget", eth3)
    assert await api.error("PIF.get_record", eth3) == ["HANDLE_INVALID", "PIF", eth3]
    assert "xenbr3" not in await bridges(api)  # brought down first
    assert await api("network.get_PIFs", network) == []  # the network stays
    before = await snapshot(api)
    assert await api.error("PIF.introduce", host, "zz:zz", "eth3", True) == ["MAC_INVALID", "zz:zz"]
    assert await api.error("PIF.introduce", host, "", "eth1", True) == ["DUPLICATE_PIF_DEVICE_NAME", "eth1"]
    missing = "COULD_NOT_FIND_NETWORK_INTERFACE_WITH_SPECIFIED_DEVICE_NAME_AND_MAC_ADDRESS"
    assert await api.error("PIF.introduce", host, "52:54:00:00:00:99", "eth3", True) == [
        missing, "eth3", "52:54:00:00:00:99"]  # fmt: skip
    assert await api.error("PIF.introduce", host, "", "eth9", True) == ["MAC_INVALID", ""]
    assert await snapshot(api) == before
    again = await api("PIF.introduce", host, "52:54:00:00:00:13".upper(), "eth3", True)
    rec = await api("PIF.get_record", again)
    assert rec["network"] == network and rec["MAC"] == "52:54:00:00:00:13" and rec["physical"] is True


async def test_db_introduce_and_forget_touch_records_only(api: Api) -> None:
    host = api.ctx.host_ref
    net = await api("network.create", {"name_label": "n"})
    args = ["eth7", net, host, "52:54:00:00:00:77", 1500, -1, True, "None", "", "", "", "", NULL, NULL, False, {},
            False, "None", [], "", "IPv4", False, {}]  # fmt: skip
    pif = await api("PIF.db_introduce", *args)
    rec = await api("PIF.get_record", pif)
    assert rec["device"] == "eth7" and rec["managed"] is False and rec["currently_attached"] is False
    assert rec["metrics"] != NULL and await api("network.get_PIFs", net) == [pif]
    assert await api.error("PIF.plug", pif) == ["PIF_UNMANAGED", pif]
    assert await api.error("PIF.reconfigure_ip", pif, "DHCP", "", "", "", "") == ["PIF_UNMANAGED", pif]
    assert await api.error("VLAN.create", pif, 3, await api("network.create", {"name_label": "x"})) == [
        "PIF_UNMANAGED", pif]  # fmt: skip
    await api("PIF.db_forget", pif)
    assert await api("network.get_PIFs", net) == []


# ------------------------------------------------------------ plug, unplug


async def test_plug_and_unplug(api: Api) -> None:
    eth1 = await pif_of(api, "eth1")
    network = await api("PIF.get_network", eth1)
    await api("PIF.unplug", eth1)
    assert await api("PIF.get_currently_attached", eth1) is False and "xenbr1" not in await bridges(api)
    await api("PIF.unplug", eth1)  # already down: fine
    await api("PIF.plug", eth1)
    assert await api("PIF.get_currently_attached", eth1) is True
    assert (await bridges(api))["xenbr1"].uplink == "eth1"
    eth0 = await pif_of(api, "eth0")
    assert await api.error("PIF.unplug", eth0) == ["PIF_IS_MANAGEMENT_INTERFACE", eth0]
    await api("PIF.set_disallow_unplug", eth1, True)
    assert await api.error("PIF.unplug", eth1) == ["PIF_DOES_NOT_ALLOW_UNPLUG", eth1]
    await api("PIF.set_disallow_unplug", eth1, False)
    vm, vif = await vm_with_vif(api, network)
    assert await api.error("PIF.unplug", eth1) == ["VIF_IN_USE", network, vif]
    assert (await bridges(api))["xenbr1"].uplink == "eth1"
    await api("VM.hard_shutdown", vm)
    await api("PIF.unplug", eth1)
    # a VM starting on the network has its PIF brought up again, as xapi attaches networks
    await api("VM.start", vm, False, False)
    assert await api("PIF.get_currently_attached", eth1) is True
    assert (await bridges(api))["xenbr1"].ports != ()


# ------------------------------------------------------------ IP configuration


async def test_reconfigure_ip_validates_and_applies(api: Api) -> None:
    eth1 = await pif_of(api, "eth1")
    sim = sim_of(api)
    before = await api("PIF.get_record", eth1)
    bad = [
        (("Static", "10.0.0.300", "255.255.255.0", "", ""), "IP"),
        (("Static", "", "255.255.255.0", "", ""), "IP"),
        (("Static", "10.1.2.3", "", "", ""), "netmask"),
        (("Static", "10.1.2.3", "255.0.255.0", "", ""), "netmask"),
        (("Static", "10.1.2.3", "255.255.255.0", "fe80::1", ""), "gateway"),
        (("Static", "10.1.2.3", "255.255.255.0", "10.1.2.1", "8.8.8.8,nope"), "DNS"),
        (("DHCP", "junk", "", "", ""), "IP"),
    ]
    for args, field in bad:
        assert await api.error("PIF.reconfigure_ip", eth1, *args) == ["INVALID_IP_ADDRESS_SPECIFIED", field]
    assert await api("PIF.get_record", eth1) == before and sim.get_ipv4_address("xenbr1") is None
    await api("PIF.reconfigure_ip", eth1, "Static", "10.1.2.3", "255.255.255.0", "10.1.2.1", "10.1.2.1,9.9.9.9")
    rec = await api("PIF.get_record", eth1)
    assert (rec["ip_configuration_mode"], rec["IP"], rec["netmask"], rec["gateway"], rec["DNS"]) == (
        "Static", "10.1.2.3", "255.255.255.0", "10.1.2.1", "10.1.2.1,9.9.9.9")  # fmt: skip
    assert sim.get_ipv4_address("xenbr1") == "10.1.2.3/24"  # on the bridge, at once
    await api("PIF.reconfigure_ip", eth1, "None", "", "", "", "")
    assert sim.get_ipv4_address("xenbr1") is None
    await api("PIF.unplug", eth1)
    await api("PIF.reconfigure_ip", eth1, "Static", "10.5.0.2", "255.255.0.0", "", "")
    assert "xenbr1" not in await bridges(api)  # recorded; applied when plugged
    await api("PIF.plug", eth1)
    assert sim.get_ipv4_address("xenbr1") == "10.5.0.2/16"
    eth0 = await pif_of(api, "eth0")
    assert await api.error("PIF.reconfigure_ip", eth0, "None", "", "", "", "") == [
        "PIF_IS_MANAGEMENT_INTERFACE", eth0]  # fmt: skip
    await api("PIF.reconfigure_ip", eth0, "DHCP", "", "", "", "")
    assert await api("PIF.get_ip_configuration_mode", eth0) == "DHCP"


async def test_ipv6_primary_address_type_and_properties(api: Api) -> None:
    eth1, eth0 = await pif_of(api, "eth1"), await pif_of(api, "eth0")
    assert await api.error("PIF.reconfigure_ipv6", eth1, "Static", "2001:db8::5", "", "") == [
        "INVALID_CIDR_ADDRESS_SPECIFIED", "IPv6"]  # fmt: skip
    assert await api.error("PIF.reconfigure_ipv6", eth1, "Static", "2001:db8::5/64", "10.0.0.1", "") == [
        "INVALID_IP_ADDRESS_SPECIFIED", "gateway"]  # fmt: skip
    assert await api.error("PIF.reconfigure_ipv6", eth1, "Static", "2001:db8::5/64", "", "1.1.1.1") == [
        "INVALID_IP_ADDRESS_SPECIFIED", "DNS"]  # fmt: skip
    await api("PIF.reconfigure_ipv6", eth1, "Static", "2001:db8::5/64", "2001:db8::1", "2001:db8::53")
    rec = await api("PIF.get_record", eth1)
    assert rec["IPv6"] == ["2001:db8::5/64"] and rec["ipv6_gateway"] == "2001:db8::1"
    assert rec["ipv6_configuration_mode"] == "Static" and rec["DNS"] == "2001:db8::53"
    assert await api.error("PIF.set_primary_address_type", eth0, "IPv6") == ["PIF_IS_MANAGEMENT_INTERFACE", eth0]
    await api("PIF.set_primary_address_type", eth1, "IPv6")
    assert await api("PIF.get_primary_address_type", eth1) == "IPv6"
    await api("PIF.set_property", eth1, "gro", "off")
    assert await api("PIF.get_properties", eth1) == {"gro": "off"}
    assert await api.error("PIF.set_property", eth1, "gro", "maybe") == ["INVALID_VALUE", "properties", "gro = maybe"]
    assert await api.error("PIF.set_property", eth1, "tso", "on") == ["INVALID_VALUE", "properties", "tso = on"]
    net = await api("network.create", {"name_label": "v"})
    untagged = await api("VLAN.get_untagged_PIF", await api("VLAN.create", await pif_of(api, "eth2"), 3, net))
    assert await api.error("PIF.set_property", untagged, "gro", "off") == ["CANNOT_CHANGE_PIF_PROPERTIES", untagged]


# ------------------------------------------------------------ management interface


async def test_management_reconfigure_and_disable(api: Api) -> None:
    host = api.ctx.host_ref
    eth0, eth1 = await pif_of(api, "eth0"), await pif_of(api, "eth1")
    await api("host.management_reconfigure", eth0)  # already: nothing happens
    assert await api.error("host.management_reconfigure", eth1) == ["PIF_HAS_NO_NETWORK_CONFIGURATION", eth1]
    await api("PIF.unplug", eth1)
    await api("PIF.reconfigure_ip", eth1, "Static", "10.7.0.9", "255.255.255.0", "", "")
    await api("host.management_reconfigure", eth1)
    assert await api("host.get_management_interface", host) == eth1
    assert await api("PIF.get_management", eth0) is False and await api("PIF.get_management", eth1) is True
    assert await api("PIF.get_currently_attached", eth1) is True  # brought up for the job
    assert await api("host.get_address", host) == "10.7.0.9"
    assert sim_of(api).get_ipv4_address("xenbr1") == "10.7.0.9/24"
    await api("PIF.unplug", eth0)  # no longer the management interface: may go down
    await api("host.management_disable")
    assert await api("PIF.get_management", eth1) is False
    assert await api.error("host.get_management_interface", host) == ["INTERNAL_ERROR", "Not_found"]
    assert await api.error("host.local_management_reconfigure", "eth1") == ["NOT_IN_EMERGENCY_MODE"]
    await api("pool.management_reconfigure", await api("PIF.get_network", eth1))
    assert await api("host.get_management_interface", host) == eth1
    net = await api("network.create", {"name_label": "nowhere"})
    assert await api.error("pool.management_reconfigure", net) == ["PIF_NOT_PRESENT", host, net]


# ------------------------------------------------------------ bonds


async def test_bond_create_set_mode_and_destroy(api: Api) -> None:
    host = api.ctx.host_ref
    eth2, eth3 = await pif_of(api, "eth2"), await pif_of(api, "eth3")
    vnet = await api("network.create", {"name_label": "vlan on eth2"})
    vlan = await api("VLAN.create", eth2, 42, vnet)
    halted, vif = await vm_with_vif(api, await api("PIF.get_network", eth3), start=False)
    net = await api("network.create", {"name_label": "bond"})
    bond = await api("Bond.create", net, [eth2, eth3, eth2], "", "lacp", {"lacp-time": "fast"})
    rec = await api("Bond.get_record", bond)
    master = rec["master"]
    assert sorted(rec["slaves"]) == sorted([eth2, eth3]) and rec["mode"] == "lacp"
    assert rec["properties"] == {"lacp-time": "fast", "hashing_algorithm": "tcpudp_ports", "lacp-fallback-ab": "true"}
    assert rec["primary_slave"] == eth2 and rec["links_up"] == 2 and rec["auto_update_mac"] is True
    mrec = await api("PIF.get_record", master)
    assert mrec["device"] == "bond0" and mrec["network"] == net and mrec["MAC"] == await api("PIF.get_MAC", eth2)
    assert mrec["bond_master_of"] == [bond] and mrec["physical"] is False and mrec["currently_attached"] is True
    for member in (eth2, eth3):
        assert await api("PIF.get_bond_slave_of", member) == bond
    found = await bridges(api)
    bridge = await api("network.get_bridge", net)
    assert found[bridge].uplink == "bond0" and "xenbr2" not in found and "xenbr3" not in found
    assert sim_of(api)._bonds["bond0"].members == ("eth2", "eth3")
    # the VLAN now rides on the bond, the halted VM's VIF moved to the bond's network
    assert await api("VLAN.get_tagged_PIF", vlan) == master
    assert found[await api("network.get_bridge", vnet)].parent == bridge
    assert await api("VIF.get_network", vif) == net
    assert await api.error("PIF.plug", eth2) == ["CANNOT_PLUG_BOND_SLAVE", eth2]
    assert await api.error("PIF.forget", eth2) == ["PIF_ALREADY_BONDED", eth2]
    assert await api.error("VLAN.create", eth3, 9, await api("network.create", {"name_label": "x"})) == [
        "CANNOT_ADD_VLAN_TO_BOND_SLAVE", eth3]  # fmt: skip
    await api("Bond.set_mode", bond, "active-backup")
    assert await api("Bond.get_properties", bond) == {}
    assert sim_of(api)._bonds["bond0"].mode == "active-backup"
    assert await api.error("Bond.set_property", bond, "lacp-time", "fast") == [
        "INVALID_VALUE", "properties", "lacp-time = fast"]  # fmt: skip
    await api("Bond.set_mode", bond, "lacp")
    await api("Bond.set_property", bond, "lacp-aggregation-key", "7")
    assert (await api("Bond.get_properties", bond))["lacp-aggregation-key"] == "7"
    await api("Bond.destroy", bond)
    assert await api.error("PIF.get_record", master) == ["HANDLE_INVALID", "PIF", master]
    for member in (eth2, eth3):
        assert await api("PIF.get_bond_slave_of", member) == NULL
        assert await api("PIF.get_currently_attached", member) is True
    found = await bridges(api)
    assert found["xenbr2"].uplink == "eth2" and found["xenbr3"].uplink == "eth3" and bridge not in found
    assert (
        await api("VLAN.get_tagged_PIF", vlan) == eth2
        and found[await api("network.get_bridge", vnet)].parent == "xenbr2"
    )
    assert await api("VIF.get_network", vif) == await api("PIF.get_network", eth2)
    await api("VM.destroy", halted)
    assert await api("host.get_PIFs", host) == await api("PIF.get_all")


async def test_bond_moves_management_and_its_address(api: Api) -> None:
    eth0, eth1 = await pif_of(api, "eth0"), await pif_of(api, "eth1")
    address = await api("PIF.get_IP", eth0)
    net = await api("network.create", {"name_label": "bond"})
    bond = await api("Bond.create", net, [eth1, eth0], "02:00:00:00:00:01", "balance-slb", {})
    master = await api("Bond.get_master", bond)
    rec = await api("PIF.get_record", master)
    assert rec["management"] is True and rec["IP"] == address and rec["MAC"] == "02:00:00:00:00:01"
    assert await api("Bond.get_primary_slave", bond) == eth0 and await api("Bond.get_auto_update_mac", bond) is False
    assert await api("PIF.get_ip_configuration_mode", eth0) == "None"
    assert sim_of(api).get_ipv4_address(await api("network.get_bridge", net)) == f"{address}/24"
    await api("Bond.destroy", bond)
    assert await api("host.get_management_interface", api.ctx.host_ref) == eth0
    assert await api("PIF.get_IP", eth0) == address
    assert sim_of(api).get_ipv4_address("xenbr0") == f"{address}/24"


async def test_bond_errors_change_nothing(api: Api) -> None:
    eth1, eth2, eth3 = [await pif_of(api, f"eth{n}") for n in (1, 2, 3)]
    net = await api("network.create", {"name_label": "bond"})
    taken = await api("PIF.get_network", eth1)
    other_host = api.ctx.store.create("host", {"name_label": "elsewhere"})
    remote_net = await api("network.create", {"name_label": "r"})
    remote = await api("PIF.db_introduce", "eth1", remote_net, other_host, "52:54:00:00:01:01", 1500, -1, True,
                       "None", "", "", "", "", NULL, NULL, False, {}, False)  # fmt: skip
    await api("PIF.reconfigure_ip", eth3, "Static", "10.3.0.1", "255.255.255.0", "", "")
    await api("PIF.set_property", eth2, "gro", "off")
    before = await snapshot(api)
    attempts = [
        ((net, [], "", "balance-slb", {}), ["PIF_BOND_NEEDS_MORE_MEMBERS"]),
        ((net, [eth1], "", "balance-slb", {}), ["PIF_BOND_NEEDS_MORE_MEMBERS"]),
        ((net, [eth1, eth1], "", "balance-slb", {}), ["PIF_BOND_NEEDS_MORE_MEMBERS"]),
        ((net, [eth1, remote], "", "balance-slb", {}), ["PIF_CANNOT_BOND_CROSS_HOST"]),
        ((net, [eth1, eth2], "nonsense", "balance-slb", {}), ["MAC_INVALID", "nonsense"]),
        ((net, [eth1, eth2], "", "lacp", {"lacp-time": "soon"}), ["INVALID_VALUE", "properties", "lacp-time = soon"]),
        ((net, [eth1, eth2], "", "active-backup", {"x": "y"}), ["INVALID_VALUE", "properties", "x = y"]),
        ((taken, [eth2, eth3], "", "balance-slb", {}), ["NETWORK_ALREADY_CONNECTED", taken, eth1]),
        ((net, [eth1, eth2], "", "balance-slb", {}), ["INCOMPATIBLE_PIF_PROPERTIES"]),
    ]
    for args, error in attempts:
        assert await api.error("Bond.create", *args) == error, args
    assert await api.error("Bond.create", net, [eth3, await pif_of(api, "eth0")], "", "balance-slb", {}) == [
        "PIF_BOND_MORE_THAN_ONE_IP"]  # fmt: skip
    bond = await api("Bond.create", net, [eth1, eth3], "", "active-backup", {})
    again = await api("network.create", {"name_label": "again"})
    assert await api.error("Bond.create", again, [eth1, await pif_of(api, "eth0")], "", "balance-slb", {}) == [
        "PIF_ALREADY_BONDED", eth1]  # fmt: skip
    master = await api("Bond.get_master", bond)
    assert await api.error("Bond.create", again, [master, eth2], "", "balance-slb", {}) == [
        "PIF_ALREADY_BONDED",
        master,
    ]
    vm, vif = await vm_with_vif(api, net)
    assert await api.error("Bond.destroy", bond) == ["VIF_IN_USE", net, vif]
    await api("VM.hard_shutdown", vm)
    await api("VM.destroy", vm)
    await api("Bond.destroy", bond)
    after = await snapshot(api)
    del after["network"][again]
    assert after == before  # records and bridges as they were before the bond


# ------------------------------------------------------------ the host's own NICs


async def test_host_nics_outside_a_namespace_are_left_alone(tmp_path: Path) -> None:
    # A real driver's configuration without a namespace, its NICs simulated: the machine's own.
    api = await make_api(tmp_path, SimNetworkDriver(), network="bridge")
    try:
        sim = sim_of(api)
        records = await api("PIF.get_all_records")
        assert len(records) == 4 and all(r["managed"] is False for r in records.values())
        eth0, eth1 = await pif_of(api, "eth0"), await pif_of(api, "eth1")
        # read-only facts: the management NIC and its address are known, nothing was enslaved
        assert records[eth0]["management"] is True and records[eth0]["currently_attached"] is True
        assert [b.name for b in await sim.list_bridges()] == ["xapi0"]
        assert await api.error("PIF.plug", eth1) == ["PIF_UNMANAGED", eth1]
        assert await api.error("PIF.reconfigure_ip", eth0, "DHCP", "", "", "", "") == ["PIF_UNMANAGED", eth0]
        net = await api("network.create", {"name_label": "v"})
        assert await api.error("VLAN.create", eth1, 5, net) == ["PIF_UNMANAGED", eth1]
        # a managed PIF introduced by hand is still not allowed to take the NIC over
        await api("PIF.forget", eth1)
        pif = await api("PIF.introduce", api.ctx.host_ref, "", "eth1", True)
        assert (await api.error("PIF.plug", pif))[0] == "OPERATION_NOT_ALLOWED"
        assert sim.get_ipv4_address("eth0") is not None and [b.name for b in await sim.list_bridges()] == ["xapi0"]
        # a VM on such a network needs the bridge to exist already (configured by other means)
        vm, _ = await vm_with_vif(api, await api("PIF.get_network", eth0), start=False)
        assert await api.error("VM.start", vm, False, False) == ["BRIDGE_NOT_AVAILABLE", "xenbr0"]
    finally:
        await close_api(api)


async def test_manage_host_nics_lets_pyxapi_configure_them(tmp_path: Path) -> None:
    api = await make_api(tmp_path, SimNetworkDriver(), network="bridge", manage_host_nics=True)
    try:
        records = await api("PIF.get_all_records")
        assert all(r["managed"] is True for r in records.values())
        assert (await bridges(api))["xenbr1"].uplink == "eth1"
    finally:
        await close_api(api)
