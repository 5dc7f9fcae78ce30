"""One contract suite for every network driver: the simulator, Linux bridge and Open vSwitch.

The real drivers run in throw-away network namespaces; guests are veth ends in namespaces
of their own, and connectivity is checked with busybox ping. A missing host tool fails
the test with the package to install: nothing is skipped.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pyxapi.drivers.network.base import (
    AlreadyExists,
    BondSpec,
    BridgeSpec,
    Capability,
    InUse,
    InvalidArgument,
    MissingTool,
    NetworkDriver,
    NotFound,
    NotSupported,
    VifLocking,
    VifSpec,
    VlanSpec,
)
from pyxapi.drivers.network.dhcp import DhcpConfig, DhcpService
from tests.drivers.network_fixtures import DRIVERS, REAL_DRIVERS, Guest, World, ash, make_world

pytestmark = pytest.mark.timeout(60)

CORE = {
    Capability.BRIDGE,
    Capability.UPLINK,
    Capability.VIF,
    Capability.MTU,
    Capability.COUNTERS,
    Capability.HOST_NICS,
    Capability.IP_CONFIG,
}


@pytest.fixture(params=DRIVERS)
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    async for w in make_world(request.param, tmp_path):
        yield w


@pytest.fixture(params=REAL_DRIVERS)
async def real_world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    async for w in make_world(request.param, tmp_path):
        yield w


def kernel_has(option: str) -> bool | None:
    """From the running kernel's config; None when the kernel does not publish it."""
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            return any(line.startswith(f"{option}=") for line in f)
    except OSError:
        return None


def vif(device: str, bridge: str, mac: str = "52:54:00:12:34:56", **kw: object) -> VifSpec:
    return VifSpec(device=device, bridge=bridge, mac=mac, **kw)  # type: ignore[arg-type]


async def plug(world: World, bridge: str, device: str, ip: str, **kw: object) -> Guest:
    g = await world.add_guest(device, ip)
    await world.driver.attach_vif(vif(device, bridge, g.mac, create_tap=False, **kw))
    return g


# ---------------------------------------------------------------- capabilities


async def test_capabilities(world: World) -> None:
    assert isinstance(world.driver, NetworkDriver)
    caps = world.driver.capabilities
    assert caps >= CORE
    if world.kind == "bridge":
        assert Capability.VIF_TAG not in caps  # needs bridge vlan_filtering
        for option, cap in (("CONFIG_VLAN_8021Q", Capability.VLAN), ("CONFIG_BONDING", Capability.BOND)):
            if kernel_has(option) is not None:
                assert (cap in caps) == kernel_has(option), option
    if world.kind == "ovs":
        assert {Capability.VLAN, Capability.VIF_TAG, Capability.BOND, Capability.LOCKING} <= caps
        # Frames leave a tap by packet socket on the user-space datapath: guests must finish them.
        assert (Capability.GUEST_OFFLOAD in caps) == (world.driver.datapath_type == "system")  # type: ignore[attr-defined]
    if world.kind == "bridge":
        assert Capability.GUEST_OFFLOAD in caps


# ---------------------------------------------------------------- bridges


async def test_bridge_create_destroy(world: World) -> None:
    d = world.driver
    info = await d.create_bridge(BridgeSpec("xenbr9", mtu=1400))
    assert (info.name, info.mtu, info.uplink, info.ports, info.vlan) == ("xenbr9", 1400, None, (), None)
    assert await d.get_bridge("xenbr9") == info
    assert "xenbr9" in [b.name for b in await d.list_bridges()]
    if world.real:
        link = await world.link("xenbr9")
        assert link is not None and link.mtu == 1400 and link.up
    # Creating again is idempotent and reconciles the MTU.
    assert (await d.create_bridge(BridgeSpec("xenbr9", mtu=1450))).mtu == 1450
    await d.destroy_bridge("xenbr9")
    with pytest.raises(NotFound):
        await d.get_bridge("xenbr9")
    with pytest.raises(NotFound):
        await d.destroy_bridge("xenbr9")
    if world.real:
        assert await world.link("xenbr9") is None


async def test_bridge_with_uplink(world: World) -> None:
    d = world.driver
    await world.add_nic("eth1", "52:54:00:aa:00:01")
    info = await d.create_bridge(BridgeSpec("xenbr1", mtu=1400, uplink="eth1"))
    assert info.uplink == "eth1" and info.ports == ()
    assert await world.port_owner("eth1") == "xenbr1"
    nic = next(n for n in await d.list_host_nics() if n.name == "eth1")
    assert nic.master == "xenbr1" and nic.mtu == 1400
    with pytest.raises(InUse):
        await d.create_bridge(BridgeSpec("xenbr2", uplink="eth1"))
    with pytest.raises(NotFound):
        await d.detach_vif("eth1")  # an uplink is not a VIF
    assert await world.port_owner("eth1") == "xenbr1"
    with pytest.raises(NotFound):
        await d.get_bridge("xenbr2")  # the failed create left nothing behind
    with pytest.raises(NotFound):
        await d.create_bridge(BridgeSpec("xenbr3", uplink="nosuch0"))
    await d.destroy_bridge("xenbr1")
    assert await world.port_owner("eth1") is None


async def test_invalid_arguments(world: World) -> None:
    d = world.driver
    with pytest.raises(InvalidArgument):
        await d.create_bridge(BridgeSpec("a-name-far-too-long"))
    with pytest.raises(InvalidArgument):
        await d.create_bridge(BridgeSpec("br0", mtu=20))
    await d.create_bridge(BridgeSpec("br0"))
    with pytest.raises(InvalidArgument):
        await d.attach_vif(vif("tap0", "br0", mac="not-a-mac"))
    with pytest.raises(InvalidArgument):
        await d.attach_vif(vif("tap0", "br0", locking=VifLocking("locked", ("300.1.1.1",))))
    with pytest.raises(NotFound):
        await d.attach_vif(vif("tap0", "nosuchbr"))
    with pytest.raises(NotFound):
        await d.attach_vif(vif("nosuch0", "br0", create_tap=False))
    assert (await d.get_bridge("br0")).ports == ()


# ---------------------------------------------------------------- VIFs


async def test_vif_tap_attach_detach(world: World) -> None:
    d = world.driver
    await d.create_bridge(BridgeSpec("xenbr0", mtu=1400))
    bridge_mac = (await world.link("xenbr0")).mac if world.real else ""  # type: ignore[union-attr]
    info = await d.attach_vif(vif("vif1.0", "xenbr0", mac="52:54:00:AB:CD:EF", mtu=1400))
    assert (info.device, info.bridge, info.mac, info.mtu, info.locking) == (
        "vif1.0", "xenbr0", "52:54:00:ab:cd:ef", 1400, "unlocked",
    )  # fmt: skip
    assert await d.get_vif("vif1.0") == info
    assert (await d.get_bridge("xenbr0")).ports == ("vif1.0",)
    assert await world.port_owner("vif1.0") == "xenbr0"
    if world.real:
        link = await world.link("vif1.0")
        assert link is not None and link.kind == "tun" and link.mtu == 1400 and link.up
        br = await world.link("xenbr0")
        assert br is not None and br.mac == bridge_mac  # a port joining does not move the bridge MAC
    with pytest.raises(AlreadyExists):
        await d.attach_vif(vif("vif1.0", "xenbr0"))
    with pytest.raises(InUse):
        await d.destroy_bridge("xenbr0")
    await d.detach_vif("vif1.0")
    assert (await d.get_bridge("xenbr0")).ports == ()
    assert await world.port_owner("vif1.0") is None
    if world.real:
        assert await world.link("vif1.0") is None  # the driver's own tap is gone
    with pytest.raises(NotFound):
        await d.detach_vif("vif1.0")
    with pytest.raises(NotFound):
        await d.get_vif("vif1.0")
    await d.destroy_bridge("xenbr0")


async def test_existing_device_survives_detach(world: World) -> None:
    d = world.driver
    await d.create_bridge(BridgeSpec("xenbr0"))
    g = await plug(world, "xenbr0", "vif2.0", "10.91.0.2")
    assert await world.port_owner("vif2.0") == "xenbr0"
    await d.detach_vif(g.device)
    assert await world.port_owner("vif2.0") is None
    if world.real:
        assert await world.link("vif2.0") is not None


async def test_guests_ping_and_counters(world: World) -> None:
    d = world.driver
    await d.create_bridge(BridgeSpec("xenbr0"))
    g1 = await plug(world, "xenbr0", "vif1.0", "10.91.0.1")
    g2 = await plug(world, "xenbr0", "vif2.0", "10.91.0.2")
    before = await d.get_counters("vif1.0")
    assert await world.ping(g1, g2, expect=True)
    after = await d.get_counters("vif1.0")
    # Host-side view: what the guest sent is the device's rx.
    assert after.rx_packets > before.rx_packets and after.tx_packets > before.tx_packets
    assert after.rx_bytes > before.rx_bytes
    with pytest.raises(NotFound):
        await d.get_counters("nosuch0")


async def test_vif_move_keeps_the_device(world: World) -> None:
    d = world.driver
    await d.create_bridge(BridgeSpec("xenbr0"))
    await d.create_bridge(BridgeSpec("xenbr1"))
    g1 = await plug(world, "xenbr0", "vif1.0", "10.96.0.1")
    g2 = await plug(world, "xenbr0", "vif2.0", "10.96.0.2")
    g3 = await plug(world, "xenbr1", "vif3.0", "10.96.0.3")
    assert await world.ping(g1, g2, expect=True)
    assert not await world.ping(g1, g3, expect=False)
    index = (await world.link("vif1.0")).index if world.real else 0  # type: ignore[union-attr]
    info = await d.move_vif(vif("vif1.0", "xenbr1", g1.mac, create_tap=False))
    assert info.bridge == "xenbr1" and await world.port_owner("vif1.0") == "xenbr1"
    assert (await d.get_bridge("xenbr0")).ports == ("vif2.0",)
    assert (await d.get_bridge("xenbr1")).ports == ("vif1.0", "vif3.0")
    if world.real:
        assert (await world.link("vif1.0")).index == index  # type: ignore[union-attr]  # the same device
    assert await world.ping(g1, g3, expect=True)
    assert not await world.ping(g1, g2, expect=False)
    # Moving applies the rest of the spec too; a moved tap the driver made is still deleted on detach.
    tap = await d.attach_vif(vif("vif4.0", "xenbr0"))
    assert tap.bridge == "xenbr0"
    if Capability.LOCKING in d.capabilities:
        moved = await d.move_vif(vif("vif4.0", "xenbr1", locking=VifLocking("disabled")))
        assert moved.locking == "disabled"
    else:
        await d.move_vif(vif("vif4.0", "xenbr1"))
    await d.detach_vif("vif4.0")
    if world.real:
        assert await world.link("vif4.0") is None
    with pytest.raises(NotFound):
        await d.move_vif(vif("vif9.0", "xenbr1"))
    with pytest.raises(NotFound):
        await d.move_vif(vif("vif1.0", "nosuchbr"))


async def test_mtu_update(world: World) -> None:
    d = world.driver
    await d.create_bridge(BridgeSpec("xenbr0"))
    await d.attach_vif(vif("vif1.0", "xenbr0"))
    info = await d.update_vif(vif("vif1.0", "xenbr0", mtu=1300))
    assert info.mtu == 1300
    if world.real:
        link = await world.link("vif1.0")
        assert link is not None and link.mtu == 1300
    with pytest.raises(NotFound):
        await d.update_vif(vif("vif9.0", "xenbr0"))
    await d.detach_vif("vif1.0")


# ---------------------------------------------------------------- locking and rate limits


async def test_locking_modes(world: World) -> None:
    d = world.driver
    await d.create_bridge(BridgeSpec("xenbr0"))
    g1 = await plug(world, "xenbr0", "vif1.0", "10.92.0.1")
    g2 = await plug(world, "xenbr0", "vif2.0", "10.92.0.2")
    if Capability.LOCKING not in d.capabilities:
        with pytest.raises(NotSupported):
            await d.update_vif(vif("vif1.0", "xenbr0", g1.mac, locking=VifLocking("disabled")))
        return

    async def lock(mode: str, v4: tuple[str, ...] = (), default: str = "unlocked", mac: str = g1.mac) -> str:
        spec = vif("vif1.0", "xenbr0", mac, locking=VifLocking(mode, v4, (), default))  # type: ignore[arg-type]
        return (await d.update_vif(spec)).locking

    assert await lock("locked", ("10.92.0.1",)) == "locked"
    assert await world.ping(g1, g2, expect=True)
    assert await lock("locked", ("10.92.0.99",)) == "locked"  # the guest now uses an address it may not
    assert not await world.ping(g1, g2, expect=False)
    assert await lock("locked", ("10.92.0.1",), mac="52:54:00:00:00:99") == "locked"  # and a MAC it may not
    assert not await world.ping(g1, g2, expect=False)
    assert await lock("disabled") == "disabled"
    assert not await world.ping(g1, g2, expect=False)
    assert not await world.ping(g2, g1, expect=False)  # nothing reaches a disabled VIF either
    assert await lock("network_default", default="disabled") == "disabled"
    assert not await world.ping(g1, g2, expect=False)
    assert await lock("network_default") == "unlocked"
    assert await world.ping(g1, g2, expect=True)
    assert (await d.get_vif("vif1.0")).locking == "unlocked"


async def test_rate_limit(world: World) -> None:
    d = world.driver
    await d.create_bridge(BridgeSpec("xenbr0"))
    g1 = await plug(world, "xenbr0", "vif1.0", "10.93.0.1")
    g2 = await plug(world, "xenbr0", "vif2.0", "10.93.0.2")
    if Capability.RATE_LIMIT not in d.capabilities:
        with pytest.raises(NotSupported):
            await d.update_vif(vif("vif1.0", "xenbr0", g1.mac, rate_kbps=8))
        return
    assert await world.ping(g1, g2, expect=True)
    if world.real:
        assert await world.ping_burst(g1, g2, count=20, size=1200) >= 15
    info = await d.update_vif(vif("vif1.0", "xenbr0", g1.mac, rate_kbps=8))  # 1000 bytes/s
    assert info.rate_kbps == 8
    if world.real:
        # 20 x 1.2 kB in 0.4 s is far over 1 kB/s plus the burst allowance.
        assert await world.ping_burst(g1, g2, count=20, size=1200) <= 8
    assert (await d.update_vif(vif("vif1.0", "xenbr0", g1.mac))).rate_kbps is None
    if world.real:
        await asyncio.sleep(0.2)
        assert await world.ping_burst(g1, g2, count=20, size=1200) >= 15


# ---------------------------------------------------------------- VLANs


async def test_vlan_tags_isolate(world: World) -> None:
    d = world.driver
    await d.create_bridge(BridgeSpec("xenbr0"))
    if Capability.VIF_TAG not in d.capabilities:
        await world.add_guest("vif1.0", "10.94.0.1")
        with pytest.raises(NotSupported):
            await d.attach_vif(vif("vif1.0", "xenbr0", create_tap=False, vlan=10))
        assert (await d.get_bridge("xenbr0")).ports == ()
        return
    g1 = await plug(world, "xenbr0", "vif1.0", "10.94.0.1", vlan=10)
    g2 = await plug(world, "xenbr0", "vif2.0", "10.94.0.2", vlan=10)
    g3 = await plug(world, "xenbr0", "vif3.0", "10.94.0.3", vlan=20)
    assert (await d.get_vif("vif1.0")).vlan == 10
    assert await world.ping(g1, g2, expect=True)
    assert not await world.ping(g1, g3, expect=False)
    # Retagging a live VIF moves it.
    assert (await d.update_vif(vif("vif3.0", "xenbr0", g3.mac, vlan=10))).vlan == 10
    assert await world.ping(g1, g3, expect=True)


async def test_vlan_network(world: World) -> None:
    d = world.driver
    await world.add_nic("eth0", "52:54:00:aa:00:10")
    await d.create_bridge(BridgeSpec("xenbr0", uplink="eth0"))
    spec = VlanSpec(bridge="xapi1", parent="xenbr0", tag=100)
    if Capability.VLAN not in d.capabilities:
        with pytest.raises(NotSupported):
            await d.create_vlan(spec)
        with pytest.raises(NotFound):
            await d.get_bridge("xapi1")
        return
    info = await d.create_vlan(spec)
    assert (info.name, info.vlan, info.parent) == ("xapi1", 100, "xenbr0")
    assert await d.create_vlan(spec) == info  # idempotent
    with pytest.raises(AlreadyExists):
        await d.create_vlan(VlanSpec(bridge="xapi2", parent="xenbr0", tag=100))
    g1 = await plug(world, "xapi1", "vif1.0", "10.95.0.1")
    assert (await d.get_vif("vif1.0")).vlan == 100
    g3 = await plug(world, "xenbr0", "vif3.0", "10.95.0.3")
    assert not await world.ping(g1, g3, expect=False)  # untagged on the parent: another segment
    if Capability.VIF_TAG in d.capabilities:
        g2 = await plug(world, "xenbr0", "vif2.0", "10.95.0.2", vlan=100)
        assert await world.ping(g1, g2, expect=True)
        await d.detach_vif("vif2.0")
    with pytest.raises(InUse):
        await d.destroy_bridge("xenbr0")  # the VLAN hangs on it
    with pytest.raises(InUse):
        await d.destroy_vlan("xapi1")
    await d.detach_vif("vif1.0")
    await d.destroy_vlan("xapi1")
    with pytest.raises(NotFound):
        await d.get_bridge("xapi1")
    with pytest.raises(InvalidArgument):
        await d.destroy_vlan("xenbr0")


async def test_vlan_not_supported_on_linux_bridge_here(world: World) -> None:
    """This kernel has no 802.1q: the bridge driver says so with a typed error."""
    if world.kind != "bridge" or kernel_has("CONFIG_VLAN_8021Q") is not False:
        assert world.kind == "bridge" or Capability.VLAN in world.driver.capabilities
        return
    await world.driver.create_bridge(BridgeSpec("xenbr0"))
    with pytest.raises(NotSupported) as e:
        await world.driver.create_vlan(VlanSpec(bridge="xapi1", parent="xenbr0", tag=5))
    assert e.value.feature == Capability.VLAN


# ---------------------------------------------------------------- bonds


async def test_bonds(world: World) -> None:
    d = world.driver
    await world.add_nic("eth1", "52:54:00:aa:00:21")
    await world.add_nic("eth2", "52:54:00:aa:00:22")
    await d.create_bridge(BridgeSpec("xapi0"))
    spec = BondSpec(name="bond0", bridge="xapi0", members=("eth2", "eth1"), mode="active-backup")
    if Capability.BOND not in d.capabilities:
        with pytest.raises(NotSupported):
            await d.create_bond(spec)
        assert (await d.get_bridge("xapi0")).uplink is None
        return
    with pytest.raises(InvalidArgument):
        await d.create_bond(BondSpec(name="bond0", bridge="xapi0", members=("eth1",)))
    info = await d.create_bond(spec)
    assert (info.name, info.bridge, info.members, info.mode) == ("bond0", "xapi0", ("eth1", "eth2"), "active-backup")
    assert (await d.get_bridge("xapi0")).uplink == "bond0"
    nics = {n.name: n for n in await d.list_host_nics()}
    assert nics["eth1"].master == nics["eth2"].master == "bond0"
    assert "bond0" not in nics
    await d.create_bridge(BridgeSpec("xapi9"))
    with pytest.raises(InUse):
        await d.create_bond(BondSpec(name="bond1", bridge="xapi9", members=("eth1", "eth2")))
    await d.destroy_bond("bond0")
    assert (await d.get_bridge("xapi0")).uplink is None
    with pytest.raises(NotFound):
        await d.destroy_bond("bond0")
    for mode in ("balance-slb", "lacp"):
        info = await d.create_bond(BondSpec(name="bond1", bridge="xapi9", members=("eth1", "eth2"), mode=mode))
        assert info.mode == mode
        await d.destroy_bond("bond1")


# ---------------------------------------------------------------- host side


async def test_host_nics(world: World) -> None:
    d = world.driver
    await world.add_nic("eth3", "52:54:00:aa:00:31", mtu=1400)
    await d.create_bridge(BridgeSpec("xenbr0"))
    await d.attach_vif(vif("vif1.0", "xenbr0"))
    nics = {n.name: n for n in await d.list_host_nics()}
    assert "xenbr0" not in nics and "vif1.0" not in nics and "lo" not in nics
    nic = nics["eth3"]
    assert (nic.mac, nic.mtu, nic.carrier, nic.up, nic.kind, nic.master) == (
        "52:54:00:aa:00:31", 1400, True, True, "veth", None,
    )  # fmt: skip
    assert nic.speed_mbps == 10000  # what veth reports


async def test_set_ipv4_address(world: World) -> None:
    d = world.driver
    await d.create_bridge(BridgeSpec("xenbr0"))
    await d.set_ipv4_address("xenbr0", "10.96.0.1/24")
    assert await world.ipv4("xenbr0") == ["10.96.0.1/24"]
    await d.set_ipv4_address("xenbr0", "10.96.1.1/16")
    assert await world.ipv4("xenbr0") == ["10.96.1.1/16"]
    await d.set_ipv4_address("xenbr0", None)
    assert await world.ipv4("xenbr0") == []
    with pytest.raises(InvalidArgument):
        await d.set_ipv4_address("xenbr0", "10.96.0.300/24")
    with pytest.raises(NotFound):
        await d.set_ipv4_address("nosuch0", "10.96.0.1/24")


# ---------------------------------------------------------------- DHCP for internal networks


async def test_dhcp_hands_out_lease(real_world: World) -> None:
    world, d = real_world, real_world.driver
    await d.create_bridge(BridgeSpec("xapi5"))
    await d.set_ipv4_address("xapi5", "10.97.0.1/24")
    cfg = DhcpConfig("xapi5", "10.97.0.100", "10.97.0.150", router="10.97.0.1")
    svc = DhcpService(cfg, world.tmp / "dhcp", netns=world.netns)
    await svc.start()
    try:
        g = await world.add_guest("vif1.0", "0.0.0.0")
        await d.attach_vif(vif("vif1.0", "xapi5", g.mac, create_tap=False))
        out = world.tmp / "lease.txt"
        script = world.tmp / "udhcpc.sh"
        script.write_text(f'#!/bin/sh\n[ "$1" = bound ] && echo "$ip $router" > {out}\nexit 0\n')
        script.chmod(0o755)
        assert g.netns is not None
        res = await ash("ip", "netns", "exec", g.netns, "busybox", "udhcpc", "-i", "eth0", "-n", "-q",
                        "-t", "5", "-T", "1", "-s", str(script), check=False)  # fmt: skip
        assert res.returncode == 0, res.stderr + res.stdout
        ip, router = out.read_text().split()
        assert ip.startswith("10.97.0.") and 100 <= int(ip.rsplit(".", 1)[1]) <= 150 and router == "10.97.0.1"
        leases = await svc.leases()
        assert [(lease.mac, lease.ip) for lease in leases] == [(g.mac, ip)]
        assert 0 < leases[0].expires_in <= 3600
    finally:
        await svc.stop()
    assert svc.pid is None


async def test_missing_tool_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pyxapi.drivers.network import proc
    from pyxapi.drivers.network.ovs import OvsNetworkDriver

    monkeypatch.setattr(proc.shutil, "which", lambda *a, **k: None)
    drv = OvsNetworkDriver(run_dir=tmp_path / "ovs")
    with pytest.raises(MissingTool, match="openvswitch-switch"):
        await drv.start()


async def test_restarted_driver_reads_the_host(real_world: World) -> None:
    """State lives in the kernel and OVSDB: a new driver instance (daemon restart) picks it up."""
    from pyxapi.drivers.network.bridge import LinuxBridgeDriver
    from pyxapi.drivers.network.ovs import OvsNetworkDriver

    world, d = real_world, real_world.driver
    await world.add_nic("eth1", "52:54:00:aa:00:41")
    await d.create_bridge(BridgeSpec("xenbr1", uplink="eth1"))
    await d.attach_vif(vif("vif1.0", "xenbr1"))
    if isinstance(d, OvsNetworkDriver):
        again: LinuxBridgeDriver | OvsNetworkDriver = OvsNetworkDriver(netns=world.netns, run_dir=d.ovs.run_dir)
    else:
        again = LinuxBridgeDriver(netns=world.netns)
    await again.start()
    try:
        assert await again.get_bridge("xenbr1") == await d.get_bridge("xenbr1")
        info = await again.get_bridge("xenbr1")
        assert (info.uplink, info.ports) == ("eth1", ("vif1.0",))
        await again.detach_vif("vif1.0")
        assert await world.link("vif1.0") is None  # it knew the tap was the driver's own
    finally:
        await again.stop()  # owns no daemon: the first instance's OVS keeps running
    assert (await d.get_bridge("xenbr1")).ports == ()
