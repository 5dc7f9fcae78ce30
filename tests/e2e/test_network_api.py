"""Networks, PIFs, VLANs and bonds through the XenAPI SDK, on a real daemon with the real
Open vSwitch and Linux bridge drivers.

Each daemon runs in a network namespace of this test's own whose "host NICs" are veth ends;
each peer sits in a "wire" namespace of its own, so traffic on a NIC can be checked from the
far side. What the API says is checked against what the kernel and OVSDB really have.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import XenAPI

from tests.drivers.network_fixtures import require_tools
from tests.server_harness import ROOT_PASSWORD, Daemon, new_daemon

pytestmark = pytest.mark.timeout(300)


def sh(*argv: str, check: bool = True) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def kernel_has(option: str) -> bool | None:
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            return any(line.startswith(f"{option}=") for line in f)
    except OSError:
        return None


@dataclass
class Host:
    kind: str
    daemon: Daemon
    netns: str
    wires: dict[str, str] = field(default_factory=dict)  # NIC -> namespace holding its peer

    @property
    def x(self) -> Any:
        s = XenAPI.Session(self.daemon.url)
        s.xenapi.login_with_password("root", ROOT_PASSWORD, "2.23", "network-e2e")
        return s.xenapi

    def add_nic(self, name: str, n: int) -> None:
        wire = f"{self.netns}-w{n}"
        sh("ip", "netns", "add", wire)
        self.wires[name] = wire
        sh("ip", "-n", self.netns, "link", "add", name, "address", f"52:54:00:e2:00:{n:02x}",
           "type", "veth", "peer", "name", "wire0", "netns", wire)  # fmt: skip
        sh("ip", "-n", self.netns, "link", "set", name, "up")
        sh("ip", "-n", wire, "link", "set", "wire0", "up")

    def ovs(self, *args: str) -> str:
        db = f"unix:{self.daemon.data_dir}/run/net/ovs/db.sock"
        return sh("ovs-vsctl", f"--db={db}", "--timeout=20", *args).strip()

    def links(self) -> dict[str, dict[str, Any]]:
        return {lk["ifname"]: lk for lk in json.loads(sh("ip", "-n", self.netns, "-j", "-d", "link", "show"))}

    def ipv4(self, device: str) -> list[str]:
        out = json.loads(sh("ip", "-n", self.netns, "-j", "-4", "addr", "show", "dev", device))
        return [f"{a['local']}/{a['prefixlen']}" for i in out for a in i.get("addr_info", [])]

    def carrier_of(self, nic: str) -> str | None:
        """The bridge (or bond) really carrying ``nic``: OVSDB's port for ovs, the kernel master else."""
        if self.kind == "ovs":
            port = sh("ovs-vsctl", f"--db=unix:{self.daemon.data_dir}/run/net/ovs/db.sock", "iface-to-br", nic,
                      check=False).strip()  # fmt: skip
            return port or None
        return self.links()[nic].get("master")

    def datapath(self) -> Any:
        """The data path's view, for 'errors change nothing': bridges with their ports and tags."""
        if self.kind == "ovs":
            bridges = self.ovs("list-br").split()
            ports = {br: sorted(self.ovs("list-ports", br).split()) for br in bridges}
            return {br: (self.ovs("br-to-parent", br), self.ovs("br-to-vlan", br), ports[br]) for br in bridges}
        return sorted((n, lk.get("master"), lk.get("linkinfo", {}).get("info_kind")) for n, lk in self.links().items())


def stop_private_ovs(run_dir: Path) -> None:
    """The daemon leaves its Open vSwitch running on purpose (guests keep their network across a
    restart): this test started that pair, so it stops it, by the pids in the run dir."""
    for name in ("ovs-vswitchd", "ovsdb-server"):
        try:
            pid = int((run_dir / f"{name}.pid").read_text().strip())
            if str(run_dir) in Path(f"/proc/{pid}/cmdline").read_text():
                os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            continue
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.05)


@pytest.fixture(scope="module", params=["ovs", "bridge"])
def host(request: pytest.FixtureRequest) -> Iterator[Host]:
    kind = request.param
    require_tools(kind)  # fails (never skips) without root or the tools
    root = Path(tempfile.mkdtemp(prefix="pyxn-", dir="/tmp"))  # OVS sockets need a short path
    netns = f"pyxn-{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", netns)
    sh("ip", "-n", netns, "link", "set", "lo", "up")
    h = Host(kind, new_daemon(root, hypervisor="sim", network=kind, netns=netns), netns)
    try:
        for n in range(3):
            h.add_nic(f"eth{n}", n)  # there before the first start: found by it
        h.daemon.start(timeout=120)
        yield h
    finally:
        h.daemon.stop()
        stop_private_ovs(h.daemon.data_dir / "run" / "net" / "ovs")
        for ns in [netns, *h.wires.values()]:
            subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(root, ignore_errors=True)


def pif(x: Any, device: str, vlan: int = -1) -> str:
    [ref] = [r for r, rec in x.PIF.get_all_records().items() if rec["device"] == device and rec["VLAN"] == str(vlan)]
    return str(ref)


def error_of(call: Any, *args: Any) -> list[str]:
    with pytest.raises(XenAPI.Failure) as e:
        call(*args)
    return list(e.value.details)


def records(x: Any) -> dict[str, Any]:
    return {c: getattr(x, c).get_all_records() for c in ("network", "PIF", "VLAN", "Bond")}


def test_first_start_scan_and_plug(host: Host) -> None:
    x = host.x
    for n in range(3):
        rec = x.PIF.get_record(pif(x, f"eth{n}"))
        assert rec["physical"] and rec["managed"] and rec["currently_attached"]
        assert rec["MAC"] == f"52:54:00:e2:00:{n:02x}"
        assert x.network.get_name_label(rec["network"]) == f"Pool-wide network associated with eth{n}"
        assert host.carrier_of(f"eth{n}") == f"xenbr{n}"  # the first start brought them up
        metrics = x.PIF_metrics.get_record(rec["metrics"])
        assert metrics["carrier"] is True and metrics["speed"] == "10000" and metrics["duplex"] is True
    host.add_nic("eth3", 3)
    x.PIF.scan(x.host.get_all()[0])
    eth3 = pif(x, "eth3")
    assert x.PIF.get_currently_attached(eth3) is False and host.carrier_of("eth3") is None
    x.PIF.plug(eth3)
    assert host.carrier_of("eth3") == "xenbr3" and x.PIF.get_currently_attached(eth3) is True
    x.PIF.unplug(eth3)
    assert host.carrier_of("eth3") is None and "xenbr3" not in host.links()
    x.PIF.plug(eth3)


def test_static_ip_reaches_the_wire(host: Host) -> None:
    x = host.x
    eth1 = pif(x, "eth1")
    before = (records(x), host.datapath(), host.ipv4("xenbr1"))
    assert error_of(x.PIF.reconfigure_ip, eth1, "Static", "10.77.0.300", "255.255.255.0", "", "") == [
        "INVALID_IP_ADDRESS_SPECIFIED", "IP"]  # fmt: skip
    assert (records(x), host.datapath(), host.ipv4("xenbr1")) == before
    x.PIF.reconfigure_ip(eth1, "Static", "10.77.0.1", "255.255.255.0", "", "")
    assert host.ipv4("xenbr1") == ["10.77.0.1/24"]
    wire = host.wires["eth1"]
    sh("ip", "-n", wire, "addr", "add", "10.77.0.2/24", "dev", "wire0")
    deadline = time.monotonic() + 30
    ping = ["ip", "netns", "exec", wire, "busybox", "ping", "-c", "1", "-W", "1", "10.77.0.1"]
    while subprocess.run(ping, capture_output=True, timeout=30).returncode != 0:
        assert time.monotonic() < deadline, "the PIF's address never answered from the wire"
    x.PIF.reconfigure_ip(eth1, "None", "", "", "", "")
    assert host.ipv4("xenbr1") == []


def wire_dhcp_server(host: Host, nic: str, first: int, last: int, lease: int = 3600) -> subprocess.Popen[bytes]:
    """busybox udhcpd on the far side of `nic`, offering 10.88.0.<first..last> for `lease` seconds."""
    wire = host.wires[nic]
    if "10.88.0.1/24" not in sh("ip", "-n", wire, "-4", "-o", "addr", "show", "dev", "wire0"):
        sh("ip", "-n", wire, "addr", "add", "10.88.0.1/24", "dev", "wire0")
    work = host.daemon.data_dir.parent
    conf, leases = work / f"udhcpd-{nic}-{first}.conf", work / f"udhcpd-{nic}-{first}.leases"
    leases.write_bytes(b"")  # a fresh server remembers no earlier lease
    conf.write_text(f"interface wire0\nstart 10.88.0.{first}\nend 10.88.0.{last}\nlease_file {leases}\n"
                    f"min_lease {lease}\noption lease {lease}\n"
                    "option subnet 255.255.255.0\noption router 10.88.0.1\noption dns 10.88.0.53\n")  # fmt: skip
    return subprocess.Popen(["ip", "netns", "exec", wire, "busybox", "udhcpd", "-f", "-a", "100", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    server.wait(timeout=10)


def test_dhcp_lease_from_the_wire(host: Host) -> None:
    x = host.x
    eth0 = pif(x, "eth0")
    server = wire_dhcp_server(host, "eth0", 50, 60)
    try:
        x.PIF.reconfigure_ip(eth0, "DHCP", "", "", "", "")
        rec = x.PIF.get_record(eth0)
        assert rec["ip_configuration_mode"] == "DHCP" and rec["IP"].startswith("10.88.0.5"), rec
        assert (rec["netmask"], rec["gateway"], rec["DNS"]) == ("255.255.255.0", "10.88.0.1", "10.88.0.53")
        assert host.ipv4("xenbr0") == [f"{rec['IP']}/24"]
    finally:
        stop(server)
    x.PIF.reconfigure_ip(eth0, "None", "", "", "", "")
    assert host.ipv4("xenbr0") == []


def wait_for_address(host: Host, x: Any, pif_ref: str, prefix: str, timeout: float = 60.0) -> str:
    """Until the PIF's recorded IP starts with `prefix` ("" for none) and its bridge carries exactly it."""
    deadline = time.monotonic() + timeout
    while True:
        ip = x.PIF.get_IP(pif_ref)
        on_bridge = host.ipv4("xenbr0")
        if ip.startswith(prefix) and (ip != "" or prefix == "") and on_bridge == ([f"{ip}/24"] if ip else []):
            return str(ip)
        assert time.monotonic() < deadline, f"PIF IP {ip!r}, bridge {on_bridge}: still no {prefix!r}"
        time.sleep(0.5)


def test_dhcp_lease_is_kept(host: Host) -> None:
    """Renewed at half the lease time: a server that moved to another range hands out a new
    address, which reaches the bridge and the record; a lease that runs out takes the address
    away, and a server that comes back gives one again. Reconfiguring ends all that."""
    x = host.x
    eth0 = pif(x, "eth0")
    server = wire_dhcp_server(host, "eth0", 50, 60, lease=8)
    try:
        x.PIF.reconfigure_ip(eth0, "DHCP", "", "", "", "")
        assert wait_for_address(host, x, eth0, "10.88.0.5", timeout=1).startswith("10.88.0.5")
        stop(server)
        server = wire_dhcp_server(host, "eth0", 70, 79, lease=8)  # the old address is not offered now
        wait_for_address(host, x, eth0, "10.88.0.7")  # renewed within T1 + retries
        stop(server)
        wait_for_address(host, x, eth0, "")  # nobody renews: the 8 s lease runs out
        assert x.PIF.get_ip_configuration_mode(eth0) == "DHCP"
        server = wire_dhcp_server(host, "eth0", 70, 79, lease=8)
        wait_for_address(host, x, eth0, "10.88.0.7")  # asked again while without an address
        x.PIF.reconfigure_ip(eth0, "None", "", "", "", "")
        assert host.ipv4("xenbr0") == []
        time.sleep(10)  # more than T1 of the last lease: no keeper puts the address back
        assert (host.ipv4("xenbr0"), x.PIF.get_IP(eth0)) == ([], "")
    finally:
        stop(server)


def test_vlan_create_and_destroy(host: Host) -> None:
    x = host.x
    eth1 = pif(x, "eth1")
    net = x.network.create({"name_label": "vlan 100", "name_description": "", "MTU": "1500", "other_config": {}})
    bridge = x.network.get_bridge(net)
    before = (records(x), host.datapath())
    supported = host.kind == "ovs" or kernel_has("CONFIG_VLAN_8021Q")
    if not supported:
        assert error_of(x.VLAN.create, eth1, "100", net) == ["OPENVSWITCH_NOT_ACTIVE"]
        assert (records(x), host.datapath()) == before
        return
    vlan = x.VLAN.create(eth1, "100", net)
    untagged = x.VLAN.get_untagged_PIF(vlan)
    assert x.PIF.get_VLAN(untagged) == "100" and x.PIF.get_currently_attached(untagged) is True
    if host.kind == "ovs":  # a fake bridge on xenbr1: the tagged port
        assert host.ovs("br-to-parent", bridge) == "xenbr1" and host.ovs("br-to-vlan", bridge) == "100"
    middle = (records(x), host.datapath())
    assert error_of(x.VLAN.create, eth1, "100", x.network.create({"name_label": "dup"})) == [
        "PIF_VLAN_EXISTS", "eth1"]  # fmt: skip
    assert error_of(x.network.destroy, net) == ["NETWORK_CONTAINS_PIF", untagged]
    assert error_of(x.PIF.forget, eth1) == ["PIF_VLAN_STILL_EXISTS", eth1]
    after = records(x)
    after["network"] = {k: v for k, v in after["network"].items() if v["name_label"] != "dup"}
    assert (after, host.datapath()) == middle
    x.VLAN.destroy(vlan)
    assert bridge not in host.ovs("list-br").split() if host.kind == "ovs" else bridge not in host.links()
    x.network.destroy(net)


def test_bond_create_and_destroy(host: Host) -> None:
    x = host.x
    eth2, eth3 = pif(x, "eth2"), pif(x, "eth3")
    net = x.network.create({"name_label": "bond", "name_description": "", "MTU": "1500", "other_config": {}})
    bridge = x.network.get_bridge(net)
    before = (records(x), host.datapath())
    assert error_of(x.Bond.create, net, [eth2], "", "active-backup", {}) == ["PIF_BOND_NEEDS_MORE_MEMBERS"]
    if not (host.kind == "ovs" or kernel_has("CONFIG_BONDING")):
        assert error_of(x.Bond.create, net, [eth2, eth3], "", "active-backup", {}) == ["OPENVSWITCH_NOT_ACTIVE"]
        assert (records(x), host.datapath()) == before
        return
    assert (records(x), host.datapath()) == before
    bond = x.Bond.create(net, [eth2, eth3], "", "active-backup", {})
    master = x.Bond.get_master(bond)
    device = x.PIF.get_device(master)
    assert host.carrier_of("eth2") == host.carrier_of("eth3") == bridge
    if host.kind == "ovs":
        assert sorted(host.ovs("list-ifaces", bridge).split()) == ["eth2", "eth3"]
        assert host.ovs("get", "port", device, "bond_mode") == "active-backup"
        x.Bond.set_mode(bond, "balance-slb")
        assert host.ovs("get", "port", device, "bond_mode") == "balance-slb"
    assert error_of(x.PIF.plug, eth2) == ["CANNOT_PLUG_BOND_SLAVE", eth2]
    x.Bond.destroy(bond)
    assert host.carrier_of("eth2") == "xenbr2" and host.carrier_of("eth3") == "xenbr3"
    x.network.destroy(net)
    after = records(x)
    before[0]["network"].pop(net)
    assert (after, host.datapath()) == before
