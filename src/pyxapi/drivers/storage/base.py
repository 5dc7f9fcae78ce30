"""The storage driver contract: typed records in, typed records out, never the database.

Modelled on xapi's SM plugins (SMAPIv1): a driver declares an SR type, capability names and the
device_config keys it understands; the ops layer turns the records returned here into SR/VDI objects.

Identity. Drivers know SRs by uuid plus device_config (an `SRHandle`), and VDIs by `location`: a
driver-chosen string unique inside one SR (a file name for the file and iso drivers). VDI uuids and refs
belong to the database; the only uuid a driver sees is the one it is asked to name a new VDI after.

Chains (file and sim drivers, see file.py for the on-disk layout). Every visible VDI is a *leaf*: nothing
ever uses it as a backing image. Cloning or snapshotting a leaf moves its current contents into a new
hidden, read-only *base* and gives both the source and the new VDI an empty overlay on that base, as xapi
does for VHD. So a VDI can always be written, resized, replaced or destroyed without touching another
VDI, and a snapshot is immutable through its base even while the source keeps running. Hidden bases are
never reported as VDIs; a base nobody references any more is deleted with its last child, and
coalesce() merges a base left with a single child into it, so snapshot/delete cycles keep chains short.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from pyxapi.model.errors import ApiError

# ---------------------------------------------------------------------------------------------- names


class Capability(StrEnum):
    """SMAPIv1 capability names, as published in SM.capabilities / SM.features."""

    SR_PROBE = "SR_PROBE"
    SR_UPDATE = "SR_UPDATE"
    SR_SCAN = "SR_SCAN"
    SR_ATTACH = "SR_ATTACH"
    SR_DETACH = "SR_DETACH"
    SR_STATS = "SR_STATS"
    VDI_CREATE = "VDI_CREATE"
    VDI_DELETE = "VDI_DELETE"
    VDI_ATTACH = "VDI_ATTACH"
    VDI_DETACH = "VDI_DETACH"
    VDI_ACTIVATE = "VDI_ACTIVATE"
    VDI_DEACTIVATE = "VDI_DEACTIVATE"
    VDI_CLONE = "VDI_CLONE"
    VDI_SNAPSHOT = "VDI_SNAPSHOT"
    VDI_RESIZE = "VDI_RESIZE"
    VDI_RESIZE_ONLINE = "VDI_RESIZE_ONLINE"
    VDI_MIRROR = "VDI_MIRROR"
    VDI_GENERATE_CONFIG = "VDI_GENERATE_CONFIG"
    VDI_INTRODUCE = "VDI_INTRODUCE"
    VDI_UPDATE = "VDI_UPDATE"
    VDI_IMPORT = "VDI_IMPORT"
    VDI_EXPORT = "VDI_EXPORT"
    VDI_COPY = "VDI_COPY"
    THIN_PROVISIONING = "THIN_PROVISIONING"


# Capability sets the shipped drivers are made of.
SR_LIFECYCLE: frozenset[str] = frozenset(
    {Capability.SR_SCAN, Capability.SR_ATTACH, Capability.SR_DETACH, Capability.SR_UPDATE}
)
"""An SR that is plugged, scanned and renamed."""

VDI_RECORDS: frozenset[str] = frozenset(
    {Capability.VDI_ATTACH, Capability.VDI_DETACH, Capability.VDI_INTRODUCE, Capability.VDI_UPDATE}
)
"""VDIs found on the SR (made by someone else or by this driver) that VMs can use."""

IMAGE_SR: frozenset[str] = (
    SR_LIFECYCLE
    | VDI_RECORDS
    | {
        Capability.SR_PROBE,
        Capability.VDI_CREATE,
        Capability.VDI_DELETE,
        Capability.VDI_CLONE,
        Capability.VDI_SNAPSHOT,
        Capability.VDI_RESIZE,
        Capability.VDI_RESIZE_ONLINE,
        Capability.VDI_IMPORT,
        Capability.VDI_EXPORT,
        Capability.VDI_COPY,
        Capability.THIN_PROVISIONING,
    }
)
"""Image files with backing chains (file, nfs, sim): everything a XenServer EXT/NFS SR does."""


ImageFormat = Literal["raw", "vhd", "qcow2"]
"""Wire formats for import/export (the `image_format_type` enum of the datamodel)."""

IMAGE_FORMATS: frozenset[str] = frozenset({"raw", "vhd", "qcow2"})

VdiFormat = Literal["raw", "qcow2"]
"""How a VDI is stored by the file and sim drivers. vhd is a transport format only."""

ContentType = Literal["disk", "iso"]

ProgressFn = Callable[[float], None]
"""Called with a fraction in [0, 1]; never required to be called at all."""

DataSource = Path | AsyncIterable[bytes]
"""A local image file, or a byte stream (e.g. an HTTP PUT body) that the driver spools itself."""

# --------------------------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class SRHandle:
    """What the ops layer passes to name an SR: its uuid and the PBD's device_config."""

    uuid: str
    device_config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SRInfo:
    """Sizes in bytes, as SR.physical_size / physical_utilisation / virtual_allocation."""

    physical_size: int
    physical_utilisation: int
    virtual_allocation: int
    content_type: str = "user"
    sm_config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """An SR found at a device_config by probe(): enough for SR.introduce."""

    uuid: str
    device_config: Mapping[str, str]
    info: SRInfo


@dataclass(frozen=True, slots=True)
class VDIInfo:
    """A visible VDI as the storage sees it. `parent` names the hidden base it overlays, if any.

    `is_a_snapshot`/`snapshot_of` are set by snapshot_vdi; the database stays authoritative for them
    (scan can only report what the images themselves record, which for qcow2 is not snapshot-ness).
    """

    location: str
    virtual_size: int
    physical_utilisation: int
    format: VdiFormat
    read_only: bool = False
    sharable: bool = False
    content_type: ContentType = "disk"
    parent: str | None = None
    is_a_snapshot: bool = False
    snapshot_of: str | None = None
    uuid: str | None = None  # the uuid the driver named the VDI after, when it knows one
    sm_config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AttachInfo:
    """What a hypervisor needs to open a VDI.

    `path` is a local absolute path, or a URI qemu understands (nfs://, iscsi://) for remote drivers.
    The format is always explicit: a hypervisor must never probe it (a guest could forge a header).
    """

    path: str
    format: VdiFormat
    read_only: bool

    @property
    def is_uri(self) -> bool:
        return "://" in self.path


@dataclass(frozen=True, slots=True)
class CloneResult:
    """The result of clone_vdi/snapshot_vdi.

    `source` is the refreshed source record (its utilisation drops to an empty overlay). When
    `source_repointed` is true the source's path now names a new overlay whose backing is the file a
    running hypervisor still holds open: until the caller switches the running disk to the new overlay
    (QMP blockdev-add + blockdev-snapshot, ops/vm_snapshot_disks.py) the guest writes that base, which
    the new VDI shares, so the switch is the snapshot's instant; if it fails the new VDI must go.
    """

    vdi: VDIInfo
    source: VDIInfo
    base: str | None
    source_repointed: bool


@dataclass(frozen=True, slots=True)
class SMInfo:
    """The static description that becomes an SM object."""

    sr_type: str
    name: str
    description: str
    capabilities: frozenset[str]
    configuration: Mapping[str, str]
    required_device_config: frozenset[str]
    supported_image_formats: frozenset[str]
    # The same for every driver pyxapi ships; a third-party driver names itself here.
    vendor: str = "pyxapi"
    copyright: str = "(C) pyxapi contributors, LGPL-2.1"
    version: str = "1.0"
    required_api_version: str = "1.0"

    @property
    def features(self) -> dict[str, int]:
        """SM.features: every capability at version 1 (the map form newer clients read)."""
        return {cap: 1 for cap in sorted(self.capabilities)}


# ---------------------------------------------------------------------------------------------- errors


class SMError(IntEnum):
    """SMAPIv1 backend error numbers (xapi reports them as SR_BACKEND_FAILURE_<n>)."""

    INVALID_ARG = 1
    SR_IN_USE = 16
    VDI_IN_USE = 24
    UNIMPLEMENTED = 38
    SR_NOT_EMPTY = 39
    SR_SCAN = 40
    SR_EXISTS = 42
    VDI_EXISTS = 43
    SR_NO_SPACE = 44
    VDI_UNAVAILABLE = 46
    SR_UNAVAILABLE = 47
    FILE_SR_CREATE = 61
    FILE_SR_DELETE = 63
    VDI_REMOVE = 64
    VDI_LOAD = 65
    VDI_TYPE = 66
    VDI_CREATE = 78
    VDI_SIZE = 79
    VDI_CLONE = 81
    VDI_SNAPSHOT = 82
    CONFIG_LOCATION_MISSING = 94
    VDI_RESIZE = 110
    VDI_MISSING = 144
    EIO = 200
    SM_GENERAL = 202
    ISO_DCONF_MISSING_LOCATION = 220
    ISO_MUST_HAVE_ISO_EXTENSION = 221
    ISO_LOCAL_PATH = 226
    # Shared storage (nfs, iscsi, lvm drivers), numbered as in SM's XE_SR_ERRORCODES.xml.
    LVM_MOUNT = 52
    ISCSI_LOGIN = 68
    NFS_VERSION = 72
    NFS_MOUNT = 73
    NFS_DELETE = 76
    LVM_GROUP_CREATE = 77
    ISCSI_DISCOVERY = 83
    NFS_CREATE = 88
    CONFIG_LUNID_MISSING = 89
    CONFIG_DEVICE_MISSING = 90
    CONFIG_DEVICE_INVALID = 91
    CONFIG_TARGET_MISSING = 95
    CONFIG_TARGET_IQN_MISSING = 96
    CONFIG_SERVER_PATH_MISSING = 101
    CONFIG_SERVER_MISSING = 102
    CONFIG_SERVER_PATH_BAD = 103
    INVALID_IQN = 106
    CONFIG_SCSIID = 107
    NFS_TARGET = 108
    DNS_ERROR = 140
    ISCSI_TARGET = 141
    ISCSI_PORT = 142


class StorageError(ApiError):
    """Any failure a storage driver reports; an ApiError, so it reaches the client unchanged.

    Where the catalogue wants a ref (VDI_IN_USE's `vdi`, SR_FULL's sizes are plain), drivers put the
    identifier they know (VDI location, SR uuid); the ops layer may re-raise with refs.
    """


class BackendFailure(StorageError):
    """SR_BACKEND_FAILURE_<n> with the xapi parameter shape ["", text, ""]."""

    def __init__(self, error: SMError, detail: str = "") -> None:
        self.error = error
        text = _SM_TEXT.get(error, error.name.replace("_", " ").capitalize())
        if detail:
            text = f"{text} [opterr={detail}]"
        super().__init__(f"SR_BACKEND_FAILURE_{int(error)}", "", text, "")


class InvalidDeviceConfig(BackendFailure):
    """A device_config key is missing or unusable (e.g. a location that is not a clean absolute path)."""

    def __init__(self, key: str, reason: str, error: SMError = SMError.INVALID_ARG) -> None:
        self.key = key
        super().__init__(error, f"device_config:{key}: {reason}")


class UnsafePath(StorageError):
    """A VDI location or backing file that would leave the SR (.., '/', a symlink out): nothing done."""

    def __init__(self, location: str, reason: str) -> None:
        self.location = location
        self.reason = reason
        super().__init__("INVALID_VALUE", "location", f"{location} ({reason})")


class InvalidUuid(StorageError):
    def __init__(self, kind: str, value: str) -> None:
        super().__init__("UUID_INVALID", kind, value)


class SRNotEmpty(StorageError):
    def __init__(self) -> None:
        super().__init__("SR_NOT_EMPTY")


class SRFull(StorageError):
    def __init__(self, requested: int, maximum: int) -> None:
        self.requested = requested
        self.maximum = maximum
        super().__init__("SR_FULL", requested, maximum)


class SRNotAttached(StorageError):
    def __init__(self, sr: str) -> None:
        super().__init__("SR_NOT_ATTACHED", sr)


class SRInUse(BackendFailure):
    def __init__(self, detail: str) -> None:
        super().__init__(SMError.SR_IN_USE, detail)


class SRExists(BackendFailure):
    def __init__(self, detail: str) -> None:
        super().__init__(SMError.SR_EXISTS, detail)


class OperationNotSupported(StorageError):
    """The SR type lacks the capability (xapi checks SM capabilities the same way)."""

    def __init__(self, sr: str, operation: str = "") -> None:
        self.operation = operation
        super().__init__("SR_OPERATION_NOT_SUPPORTED", sr)


class VDIMissing(StorageError):
    def __init__(self, sr: str, location: str) -> None:
        super().__init__("VDI_MISSING", sr, location)


class VDILocationMissing(StorageError):
    def __init__(self, sr: str, location: str) -> None:
        super().__init__("VDI_LOCATION_MISSING", sr, location)


class VDIExists(BackendFailure):
    def __init__(self, location: str) -> None:
        super().__init__(SMError.VDI_EXISTS, location)


class VDIInUse(StorageError):
    def __init__(self, vdi: str, operation: str) -> None:
        self.operation = operation
        super().__init__("VDI_IN_USE", vdi, operation)


class VDIReadOnly(StorageError):
    def __init__(self, vdi: str) -> None:
        super().__init__("VDI_READONLY", vdi)


class VDITooSmall(StorageError):
    def __init__(self, vdi: str, minimum: int) -> None:
        self.minimum = minimum
        super().__init__("VDI_TOO_SMALL", vdi, minimum)


class VDITooLarge(StorageError):
    def __init__(self, vdi: str, maximum: int) -> None:
        self.maximum = maximum
        super().__init__("VDI_TOO_LARGE", vdi, maximum)


class VDIIsAPhysicalDevice(StorageError):
    def __init__(self, vdi: str) -> None:
        super().__init__("VDI_IS_A_PHYSICAL_DEVICE", vdi)


class ImportFailed(StorageError):
    """The image offered for import is not a valid image of the stated format; nothing was changed."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__("IMPORT_ERROR", reason)


class CopyFailed(StorageError):
    def __init__(self) -> None:
        super().__init__("VDI_COPY_FAILED")


_SM_TEXT: dict[SMError, str] = {
    SMError.INVALID_ARG: "Invalid argument",
    SMError.SR_IN_USE: "The SR device is currently in use",
    SMError.VDI_IN_USE: "The VDI is currently in use",
    SMError.UNIMPLEMENTED: "The requested method is not supported/implemented",
    SMError.SR_NOT_EMPTY: "The SR is not empty",
    SMError.SR_SCAN: "The SR scan failed",
    SMError.SR_EXISTS: "The SR already exists",
    SMError.VDI_EXISTS: "The VDI already exists",
    SMError.SR_NO_SPACE: "There is insufficient space",
    SMError.VDI_UNAVAILABLE: "The VDI is not available",
    SMError.SR_UNAVAILABLE: "The SR is not available",
    SMError.FILE_SR_CREATE: "File SR creation error",
    SMError.FILE_SR_DELETE: "File SR deletion error",
    SMError.VDI_REMOVE: "Failed to remove VDI",
    SMError.VDI_LOAD: "Failed to load VDI",
    SMError.VDI_TYPE: "Invalid VDI type",
    SMError.VDI_CREATE: "VDI Creation failed",
    SMError.VDI_SIZE: "VDI Invalid size",
    SMError.VDI_CLONE: "Failed to clone VDI",
    SMError.VDI_SNAPSHOT: "Failed to snapshot VDI",
    SMError.CONFIG_LOCATION_MISSING: "The request is missing the location parameter",
    SMError.VDI_RESIZE: "VDI resize failed",
    SMError.VDI_MISSING: "VDI could not be found",
    SMError.EIO: "General IO error",
    SMError.SM_GENERAL: "General backend error",
    SMError.ISO_DCONF_MISSING_LOCATION: "'Location' parameter must be specified in Device Configuration",
    SMError.ISO_MUST_HAVE_ISO_EXTENSION: "ISO name must have .iso extension",
    SMError.ISO_LOCAL_PATH: "Invalid local path",
    SMError.LVM_MOUNT: "Logical Volume mount/activate error",
    SMError.ISCSI_LOGIN: "ISCSI login failed - check access settings for the initiator on the storage, "
    "if CHAP is used verify CHAP credentials",
    SMError.NFS_VERSION: "Required NFS server version unsupported",
    SMError.NFS_MOUNT: "NFS mount error",
    SMError.NFS_DELETE: "Failed to remove NFS mount point",
    SMError.LVM_GROUP_CREATE: "Logical Volume group creation failed",
    SMError.ISCSI_DISCOVERY: "ISCSI discovery failed",
    SMError.NFS_CREATE: "NFS SR creation error",
    SMError.CONFIG_LUNID_MISSING: "The request is missing the LUNid parameter",
    SMError.CONFIG_DEVICE_MISSING: "The request is missing the device parameter",
    SMError.CONFIG_DEVICE_INVALID: "The device is not a valid path",
    SMError.CONFIG_TARGET_MISSING: "The request is missing the target parameter",
    SMError.CONFIG_TARGET_IQN_MISSING: "The request is missing or has an incorrect target IQN parameter",
    SMError.CONFIG_SERVER_PATH_MISSING: "The request is missing the serverpath parameter",
    SMError.CONFIG_SERVER_MISSING: "The request is missing the server parameter",
    SMError.CONFIG_SERVER_PATH_BAD: "The serverpath argument is not valid",
    SMError.INVALID_IQN: "The IQN provided is an invalid format",
    SMError.CONFIG_SCSIID: "The SCSIid parameter is missing or incorrect",
    SMError.NFS_TARGET: "Unable to detect an NFS service on this target.",
    SMError.DNS_ERROR: "Incorrect DNS name, unable to resolve.",
    SMError.ISCSI_TARGET: "Unable to connect to ISCSI service on target",
    SMError.ISCSI_PORT: "Incorrect value for iSCSI port, must be a number between 1 and 65535",
}

# -------------------------------------------------------------------------------------------- protocol


@runtime_checkable
class StorageDriver(Protocol):
    """One SR type. Methods are coroutines; blocking work runs in subprocesses or worker threads.

    Lifecycle: create_sr (once, formats/initialises) -> attach_sr (each PBD.plug) -> VDI operations ->
    detach_sr (PBD.unplug) -> destroy_sr (refused while visible VDIs remain). VDI operations on an SR
    that is not attached raise SRNotAttached.
    """

    sr_type: str
    capabilities: frozenset[str]
    configuration: Mapping[str, str]
    required_device_config: frozenset[str]
    sm_info: SMInfo

    async def probe(self, device_config: Mapping[str, str]) -> list[ProbeResult]: ...

    async def create_sr(self, device_config: Mapping[str, str], sr_uuid: str, size: int = 0) -> SRInfo: ...

    async def attach_sr(self, sr: SRHandle) -> SRInfo: ...

    async def detach_sr(self, sr: SRHandle) -> None: ...

    async def destroy_sr(self, sr: SRHandle) -> None: ...

    async def stat_sr(self, sr: SRHandle) -> SRInfo: ...

    async def scan(self, sr: SRHandle) -> list[VDIInfo]: ...

    async def stat_vdi(self, sr: SRHandle, location: str) -> VDIInfo: ...

    async def create_vdi(
        self, sr: SRHandle, vdi_uuid: str, virtual_size: int, format: VdiFormat | None = None
    ) -> VDIInfo: ...

    async def destroy_vdi(self, sr: SRHandle, location: str) -> None: ...

    async def clone_vdi(self, sr: SRHandle, location: str, new_uuid: str) -> CloneResult: ...

    async def snapshot_vdi(self, sr: SRHandle, location: str, new_uuid: str) -> CloneResult: ...

    async def resize_vdi(self, sr: SRHandle, location: str, new_size: int, online: bool = False) -> VDIInfo: ...

    async def coalesce(self, sr: SRHandle) -> list[str]:
        """Garbage-collect chains: merge each hidden base that has one child left into that child, while
        nothing in the child's subtree is attached. Returns the merged bases. Ops runs it in the
        background after VDI destroys, like xapi's GC; reads are unchanged by it."""
        ...

    async def attach_vdi(self, sr: SRHandle, location: str, read_only: bool = False) -> AttachInfo: ...

    async def detach_vdi(self, sr: SRHandle, location: str) -> None: ...

    async def import_data(
        self,
        sr: SRHandle,
        location: str,
        source: DataSource,
        format: ImageFormat,
        progress: ProgressFn | None = None,
    ) -> VDIInfo: ...

    async def import_new_vdi(
        self,
        sr: SRHandle,
        vdi_uuid: str,
        source: DataSource,
        format: ImageFormat,
        vdi_format: VdiFormat | None = None,
        progress: ProgressFn | None = None,
    ) -> VDIInfo: ...

    async def export_data(
        self,
        sr: SRHandle,
        location: str,
        format: ImageFormat,
        dest: Path,
        progress: ProgressFn | None = None,
    ) -> int: ...

    async def copy_vdi(
        self,
        sr: SRHandle,
        location: str,
        dest_sr: SRHandle,
        new_uuid: str,
        progress: ProgressFn | None = None,
    ) -> VDIInfo: ...


def check_image_format(value: str) -> ImageFormat:
    """Validate a wire format name (import/export query parameter) before any work starts."""
    if value not in IMAGE_FORMATS:
        raise StorageError("VALUE_NOT_SUPPORTED", "format", value, "expected one of raw, vhd, qcow2")
    return value  # type: ignore[return-value]


def check_size(vdi: str, size: int, maximum: int) -> int:
    """Sizes are rounded up to whole 512-byte sectors, as qemu does, so every driver reports the same."""
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise BackendFailure(SMError.VDI_SIZE, f"size must be a positive integer, got {size!r}")
    rounded = (size + 511) // 512 * 512
    if rounded > maximum:
        raise VDITooLarge(vdi, maximum)
    return rounded
