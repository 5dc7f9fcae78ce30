"""The network driver contract: a narrow Protocol, typed records, capabilities and errors.

Drivers take typed arguments and return typed records; they never touch the object store.
The ops layer maps the typed errors below onto XenAPI error codes (for example
NotSupported on a VLAN request becomes the XenAPI error for an unsupported operation).

Every driver takes ``netns``: when set, all devices it creates or inspects live in that
network namespace, so tests (and sandboxed hosts) never touch the root namespace.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

LockingMode = Literal["network_default", "unlocked", "locked", "disabled"]
EffectiveLocking = Literal["unlocked", "locked", "disabled"]
BondMode = Literal["balance-slb", "active-backup", "lacp"]

LOCKING_MODES: tuple[LockingMode, ...] = ("network_default", "unlocked", "locked", "disabled")
BOND_MODES: tuple[BondMode, ...] = ("balance-slb", "active-backup", "lacp")

MTU_MIN = 68
MTU_MAX = 9216


class Capability(enum.StrEnum):
    BRIDGE = "bridge"  # internal (host-only) bridges
    UPLINK = "uplink"  # a bridge carrying a host NIC
    VIF = "vif"  # tap / existing device attach and detach
    MTU = "mtu"
    VLAN = "vlan"  # VLAN networks (create_vlan)
    VIF_TAG = "vif_tag"  # an access VLAN tag on one VIF port
    BOND = "bond"
    LOCKING = "locking"  # locking modes enforced on the data path
    RATE_LIMIT = "rate_limit"
    COUNTERS = "counters"
    HOST_NICS = "host_nics"
    IP_CONFIG = "ip_config"  # set_ipv4_address
    # Guests' checksum and segmentation offloads survive the data path (a kernel switch finishes
    # them); without it a guest must send finished frames (NicSpec.offload=False).
    GUEST_OFFLOAD = "guest_offload"


# ---------------------------------------------------------------- errors


class NetworkError(Exception):
    """Base of every error a network driver raises on purpose."""


class NotSupported(NetworkError):
    """The driver (or this kernel) cannot do it; ``feature`` is a Capability value."""

    def __init__(self, feature: str, detail: str = "") -> None:
        self.feature = feature
        self.detail = detail
        super().__init__(f"not supported: {feature}" + (f" ({detail})" if detail else ""))


class NotFound(NetworkError):
    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = name
        super().__init__(f"{kind} not found: {name}")


class AlreadyExists(NetworkError):
    def __init__(self, kind: str, name: str, detail: str = "") -> None:
        self.kind = kind
        self.name = name
        super().__init__(f"{kind} already exists: {name}" + (f" ({detail})" if detail else ""))


class InUse(NetworkError):
    """The object still carries others (a bridge with VIFs or VLANs, a NIC already enslaved)."""

    def __init__(self, kind: str, name: str, detail: str = "") -> None:
        self.kind = kind
        self.name = name
        super().__init__(f"{kind} in use: {name}" + (f" ({detail})" if detail else ""))


class InvalidArgument(NetworkError):
    pass


class MissingTool(NetworkError):
    """A host binary the driver needs is not installed (names the Debian package)."""

    def __init__(self, tool: str, package: str) -> None:
        self.tool = tool
        self.package = package
        super().__init__(f"{tool} not found: install the Debian package {package}")


class CommandFailed(NetworkError):
    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"{' '.join(argv)} exited {returncode}: {stderr.strip()}")


# ---------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class BridgeSpec:
    name: str
    mtu: int = 1500
    uplink: str | None = None  # host NIC (or bond) carried by the bridge; None = host-only network


@dataclass(frozen=True, slots=True)
class BridgeInfo:
    name: str
    mtu: int
    uplink: str | None
    ports: tuple[str, ...]  # VIF ports only (not the uplink, not the bridge's own port), sorted
    vlan: int | None = None  # set on a VLAN bridge (see create_vlan)
    parent: str | None = None  # the tagged parent bridge of a VLAN bridge


@dataclass(frozen=True, slots=True)
class VifLocking:
    mode: LockingMode = "network_default"
    ipv4_allowed: tuple[str, ...] = ()
    ipv6_allowed: tuple[str, ...] = ()
    # The network's default_locking_mode, used when mode is 'network_default'.
    network_default: Literal["unlocked", "disabled"] = "unlocked"

    def effective(self) -> EffectiveLocking:
        if self.mode == "network_default":
            return self.network_default
        return self.mode


@dataclass(frozen=True, slots=True)
class VifSpec:
    device: str  # kernel interface name, at most 15 characters
    bridge: str
    mac: str  # the guest's MAC (what locking matches), not the host-side device's own
    mtu: int = 1500
    vlan: int | None = None  # access tag on this port (Capability.VIF_TAG)
    locking: VifLocking = field(default_factory=VifLocking)
    rate_kbps: int | None = None  # limit on what the guest sends; None or 0 = unlimited
    # True: the driver creates a persistent tap (qemu opens it with ifname=, script=no).
    # False: the device already exists (a veth end, a tap made by qemu or libvirt) and survives detach.
    create_tap: bool = True


@dataclass(frozen=True, slots=True)
class VifInfo:
    device: str
    bridge: str
    mac: str
    mtu: int
    vlan: int | None
    locking: EffectiveLocking
    rate_kbps: int | None


@dataclass(frozen=True, slots=True)
class VlanSpec:
    bridge: str  # the new VLAN network's bridge
    parent: str  # the bridge carrying the tagged traffic
    tag: int
    mtu: int | None = None  # None: inherit the parent's


@dataclass(frozen=True, slots=True)
class BondSpec:
    name: str
    bridge: str  # the bond becomes this bridge's uplink
    members: tuple[str, ...]
    mode: BondMode = "balance-slb"
    mtu: int | None = None


@dataclass(frozen=True, slots=True)
class BondInfo:
    name: str
    bridge: str
    members: tuple[str, ...]  # sorted
    mode: BondMode


@dataclass(frozen=True, slots=True)
class HostNic:
    name: str
    mac: str
    mtu: int
    carrier: bool
    up: bool
    speed_mbps: int | None  # None when the device does not say
    kind: str  # "" for hardware, else the kernel link kind (veth, dummy, ...)
    master: str | None = None  # the bridge or bond it is enslaved to, when known
    duplex: bool | None = None  # full duplex; None when the device does not say
    ipv4: tuple[str, ...] = ()  # addresses on the NIC itself (CIDR), to find the management NIC
    hardware: NicHardware | None = None  # None for virtual devices (veth) and inside namespaces


@dataclass(frozen=True, slots=True)
class NicHardware:
    """What the bus says about a NIC; names come from the PCI ID database when it is installed."""

    vendor_id: str = ""  # "0x8086"
    device_id: str = ""
    vendor_name: str = ""
    device_name: str = ""
    pci_bus_path: str = ""  # "0000:00:03.0"


@dataclass(frozen=True, slots=True)
class Counters:
    """Seen from the host-side device: for a VIF, rx is what the guest sent."""

    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0
    rx_errors: int = 0
    tx_errors: int = 0
    rx_dropped: int = 0
    tx_dropped: int = 0


# ---------------------------------------------------------------- protocol


@runtime_checkable
class NetworkDriver(Protocol):
    name: str
    netns: str | None

    @property
    def capabilities(self) -> frozenset[Capability]: ...

    async def start(self) -> None:
        """Probe the host (and start private daemons for drivers that own them). Call once first."""

    async def stop(self) -> None:
        """Stop what start() started. Bridges and taps stay (they belong to running guests)."""

    async def create_bridge(self, spec: BridgeSpec) -> BridgeInfo:
        """Idempotent: an existing bridge gets the spec's MTU; a different uplink is AlreadyExists."""

    async def destroy_bridge(self, name: str) -> None:
        """NotFound if absent; InUse while VIFs or VLAN bridges hang on it."""

    async def get_bridge(self, name: str) -> BridgeInfo: ...

    async def list_bridges(self) -> list[BridgeInfo]: ...

    async def attach_vif(self, spec: VifSpec) -> VifInfo: ...

    async def update_vif(self, spec: VifSpec) -> VifInfo:
        """Re-apply MTU, tag, locking and rate limit to an attached VIF (same bridge)."""

    async def move_vif(self, spec: VifSpec) -> VifInfo:
        """Move an attached VIF to ``spec.bridge`` (and apply the rest of the spec), keeping its
        device: the guest's NIC stays open and only its network changes (xapi's VIF.move)."""

    async def detach_vif(self, device: str) -> None:
        """Remove the port; delete the tap if the driver created it. NotFound if not attached."""

    async def get_vif(self, device: str) -> VifInfo: ...

    async def create_vlan(self, spec: VlanSpec) -> BridgeInfo: ...

    async def destroy_vlan(self, bridge: str) -> None: ...

    async def create_bond(self, spec: BondSpec) -> BondInfo: ...

    async def destroy_bond(self, name: str) -> None: ...

    async def list_host_nics(self) -> list[HostNic]:
        """Hardware-like NICs (hardware, veth, dummy), not bridges, taps, bonds or tunnels."""

    async def set_ipv4_address(self, device: str, address: str | None, gateway: str | None = None) -> None:
        """Replace the device's IPv4 addresses with ``address`` (CIDR) or none; optional default route."""

    async def get_counters(self, device: str) -> Counters: ...


# ---------------------------------------------------------------- validation shared by all drivers

_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def check_ifname(name: str) -> str:
    # The kernel allows more, but nft chain names and ovs-vsctl arguments are built from these.
    if not _IFNAME.match(name):
        raise InvalidArgument(f"bad interface name {name!r} (1-15 of A-Z a-z 0-9 _ . -)")
    return name


def check_mac(mac: str) -> str:
    norm = mac.strip().lower().replace("-", ":")
    if not _MAC.match(norm):
        raise InvalidArgument(f"bad MAC address {mac!r}")
    return norm


def check_mtu(mtu: int) -> int:
    if not MTU_MIN <= mtu <= MTU_MAX:
        raise InvalidArgument(f"MTU {mtu} outside {MTU_MIN}..{MTU_MAX}")
    return mtu


def check_tag(tag: int) -> int:
    if not 0 <= tag <= 4094:
        raise InvalidArgument(f"VLAN tag {tag} outside 0..4094")
    return tag


def check_vif(spec: VifSpec) -> VifSpec:
    """Validate and normalise a VifSpec (MAC lower case, addresses canonical)."""
    check_ifname(spec.device)
    check_ifname(spec.bridge)
    check_mtu(spec.mtu)
    if spec.vlan is not None:
        check_tag(spec.vlan)
    if spec.rate_kbps is not None and spec.rate_kbps < 0:
        raise InvalidArgument(f"negative rate limit {spec.rate_kbps}")
    lk = spec.locking
    if lk.mode not in LOCKING_MODES:
        raise InvalidArgument(f"bad locking mode {lk.mode!r}")
    if lk.network_default not in ("unlocked", "disabled"):
        raise InvalidArgument(f"bad network default locking mode {lk.network_default!r}")
    try:
        v4 = tuple(str(ipaddress.IPv4Address(a)) for a in lk.ipv4_allowed)
        v6 = tuple(str(ipaddress.IPv6Address(a)) for a in lk.ipv6_allowed)
    except ValueError as e:
        raise InvalidArgument(str(e)) from e
    locking = VifLocking(lk.mode, v4, v6, lk.network_default)
    return VifSpec(
        device=spec.device,
        bridge=spec.bridge,
        mac=check_mac(spec.mac),
        mtu=spec.mtu,
        vlan=spec.vlan,
        locking=locking,
        rate_kbps=spec.rate_kbps or None,
        create_tap=spec.create_tap,
    )


def check_bond(spec: BondSpec) -> None:
    check_ifname(spec.name)
    check_ifname(spec.bridge)
    if spec.mode not in BOND_MODES:
        raise InvalidArgument(f"bad bond mode {spec.mode!r}")
    if len(set(spec.members)) < 2 or len(set(spec.members)) != len(spec.members):
        raise InvalidArgument("a bond needs at least two distinct members")
    for m in spec.members:
        check_ifname(m)
    if spec.mtu is not None:
        check_mtu(spec.mtu)


def vif_info(spec: VifSpec, vlan: int | None = None) -> VifInfo:
    return VifInfo(
        device=spec.device,
        bridge=spec.bridge,
        mac=spec.mac,
        mtu=spec.mtu,
        vlan=vlan if vlan is not None else spec.vlan,
        locking=spec.locking.effective(),
        rate_kbps=spec.rate_kbps,
    )
