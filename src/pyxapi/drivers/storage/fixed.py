"""The VDI-changing half of the storage driver interface for SR types whose VDIs are made
elsewhere (an ISO library's files, an iSCSI target's LUNs, an LVM SR pyxapi cannot run here).

Such an SR type does not publish VDI_CREATE, VDI_DELETE, VDI_CLONE, VDI_SNAPSHOT, VDI_RESIZE or
VDI_COPY, so xapi refuses those before any driver runs; a driver called anyway answers the same
SR_OPERATION_NOT_SUPPORTED. A driver that validates locations says so in `check_location`, so that a
bad location is reported as such (INVALID_VALUE) whatever the call, as the storage contract wants.
"""

from __future__ import annotations

from typing import NoReturn

from .base import (
    Capability,
    CloneResult,
    DataSource,
    ImageFormat,
    OperationNotSupported,
    ProgressFn,
    SRHandle,
    VdiFormat,
    VDIInfo,
)


def _refuse(sr: SRHandle, capability: Capability) -> NoReturn:
    raise OperationNotSupported(sr.uuid, capability)


class FixedVdis:
    """Mixin: every VDI-changing call is refused; there are no chains to coalesce."""

    def check_location(self, location: str) -> None:
        """Raise UnsafePath for a location no VDI of this SR type can have (default: accept all)."""

    async def create_vdi(
        self, sr: SRHandle, vdi_uuid: str, virtual_size: int, format: VdiFormat | None = None
    ) -> VDIInfo:
        _refuse(sr, Capability.VDI_CREATE)

    async def destroy_vdi(self, sr: SRHandle, location: str) -> None:
        self.check_location(location)
        _refuse(sr, Capability.VDI_DELETE)

    async def clone_vdi(self, sr: SRHandle, location: str, new_uuid: str) -> CloneResult:
        self.check_location(location)
        _refuse(sr, Capability.VDI_CLONE)

    async def snapshot_vdi(self, sr: SRHandle, location: str, new_uuid: str) -> CloneResult:
        self.check_location(location)
        _refuse(sr, Capability.VDI_SNAPSHOT)

    async def resize_vdi(self, sr: SRHandle, location: str, new_size: int, online: bool = False) -> VDIInfo:
        self.check_location(location)
        _refuse(sr, Capability.VDI_RESIZE)

    async def coalesce(self, sr: SRHandle) -> list[str]:
        return []

    async def import_new_vdi(
        self,
        sr: SRHandle,
        vdi_uuid: str,
        source: DataSource,
        format: ImageFormat,
        vdi_format: VdiFormat | None = None,
        progress: ProgressFn | None = None,
    ) -> VDIInfo:
        _refuse(sr, Capability.VDI_CREATE)

    async def copy_vdi(
        self, sr: SRHandle, location: str, dest_sr: SRHandle, new_uuid: str, progress: ProgressFn | None = None
    ) -> VDIInfo:
        self.check_location(location)
        _refuse(dest_sr, Capability.VDI_CREATE)  # the copy is a new VDI on the destination
