"""Local LVM SR ("lvm"): refused, with the reason, on kernels without device-mapper.

An LVM SR keeps each VDI as a logical volume in a volume group on `device_config:device`; logical
volumes are device-mapper tables, so a kernel without device-mapper (no /dev/mapper/control, no
"device-mapper" in /proc/misc: the case on these machines, see notes/machine.md) cannot hold one at
all. SR.create, probe and attach answer XenServer's LVM errors with that reason instead of failing
half-way inside lvcreate: LVMGroupCreate (77) for create, LVMMount (52) for attach and probe, after
the device_config checks (ConfigDeviceMissing 90, ConfigDeviceInvalid 91). On a host that does have
device-mapper, the LVM datapath itself is not written yet: the same calls answer Unimplemented (38).
No VDI capability is declared, so xapi's capability checks refuse VDI operations up front.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

from .base import (
    AttachInfo,
    BackendFailure,
    Capability,
    DataSource,
    ImageFormat,
    ProbeResult,
    ProgressFn,
    SMError,
    SMInfo,
    SRHandle,
    SRInfo,
    SRNotAttached,
    VDIInfo,
)
from .fixed import FixedVdis

DM_CONTROL = Path("/dev/mapper/control")
PROC_MISC = Path("/proc/misc")


def device_mapper_problem(control: Path = DM_CONTROL, misc: Path = PROC_MISC) -> str | None:
    """Why this host cannot have logical volumes, or None if device-mapper is there."""
    try:
        registered = "device-mapper" in misc.read_text()
    except OSError:
        registered = False
    if not registered:
        return f"the kernel has no device-mapper ('device-mapper' is not in {misc}), so no logical volumes"
    if not control.exists():
        return f"{control} is missing: device-mapper is not usable, so no logical volumes"
    return None


class LvmStorageDriver(FixedVdis):
    sr_type = "lvm"
    capabilities: frozenset[str] = frozenset({Capability.SR_PROBE})
    configuration: Mapping[str, str] = {"device": "local block device for the volume group (required)"}
    required_device_config: frozenset[str] = frozenset({"device"})
    sm_info = SMInfo(
        sr_type="lvm",
        name="Local LVM",
        description="Logical volumes on a local block device (needs device-mapper in the kernel)",
        capabilities=capabilities,
        configuration=configuration,
        required_device_config=required_device_config,
        supported_image_formats=frozenset({"raw"}),
    )

    def __init__(self, control: Path = DM_CONTROL, misc: Path = PROC_MISC) -> None:
        self._control = control
        self._misc = misc

    def _refuse(self, device_config: Mapping[str, str], error: SMError) -> NoReturn:
        device = device_config.get("device", "")
        if not device:
            raise BackendFailure(SMError.CONFIG_DEVICE_MISSING)
        for path in device.split(","):
            try:
                mode = os.stat(path).st_mode if path.startswith("/") else 0
            except OSError:
                mode = 0
            if not stat.S_ISBLK(mode):
                raise BackendFailure(SMError.CONFIG_DEVICE_INVALID, f"{path} is not a block device")
        problem = device_mapper_problem(self._control, self._misc)
        if problem is not None:
            raise BackendFailure(error, problem)
        raise BackendFailure(SMError.UNIMPLEMENTED, "LVM SRs are not implemented by pyxapi yet")

    async def probe(self, device_config: Mapping[str, str]) -> list[ProbeResult]:
        self._refuse(device_config, SMError.LVM_MOUNT)

    async def create_sr(self, device_config: Mapping[str, str], sr_uuid: str, size: int = 0) -> SRInfo:
        self._refuse(device_config, SMError.LVM_GROUP_CREATE)

    async def attach_sr(self, sr: SRHandle) -> SRInfo:
        self._refuse(sr.device_config, SMError.LVM_MOUNT)

    async def detach_sr(self, sr: SRHandle) -> None:
        return None  # never attached

    async def destroy_sr(self, sr: SRHandle) -> None:
        return None  # nothing was ever made on the device

    async def stat_sr(self, sr: SRHandle) -> SRInfo:
        raise SRNotAttached(sr.uuid)

    async def scan(self, sr: SRHandle) -> list[VDIInfo]:
        raise SRNotAttached(sr.uuid)

    async def stat_vdi(self, sr: SRHandle, location: str) -> VDIInfo:
        raise SRNotAttached(sr.uuid)

    async def attach_vdi(self, sr: SRHandle, location: str, read_only: bool = False) -> AttachInfo:
        raise SRNotAttached(sr.uuid)

    async def detach_vdi(self, sr: SRHandle, location: str) -> None:
        return None

    async def import_data(
        self, sr: SRHandle, location: str, source: DataSource, format: ImageFormat, progress: ProgressFn | None = None
    ) -> VDIInfo:
        raise SRNotAttached(sr.uuid)

    async def export_data(
        self, sr: SRHandle, location: str, format: ImageFormat, dest: Path, progress: ProgressFn | None = None
    ) -> int:
        raise SRNotAttached(sr.uuid)
