"""Raw-LUN iSCSI SR ("iscsi"): each LUN of a target is one VDI, as XenServer's iscsi (LUN-per-VDI) SR.

Why raw LUNs and not LVM on a LUN (lvmoiscsi): this kernel has neither a SCSI initiator nor
device-mapper, so no block device and no logical volume can exist on the host. QEMU's own iscsi://
client (libiscsi) is the datapath, and libiscsi's tools are the control path (iscsi_client.py).

What follows from it, declared through capabilities rather than hidden: LUNs are made and removed by
the storage admin on the target, so VDI_CREATE, VDI_DELETE, VDI_CLONE, VDI_SNAPSHOT and VDI_RESIZE are
not capabilities and those calls answer SR_OPERATION_NOT_SUPPORTED; scan introduces every disk LUN
(location `LUN<n>`, uuid derived from the target and the LUN's serial number, so it is stable);
data moves in and out with import/export, and VDI.copy to another SR works through export. An import
is checked completely before the first byte is written, but a raw LUN cannot be replaced atomically:
a transfer that dies half-way leaves the LUN half-written (the import reports the failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
import uuid as uuidlib
from collections.abc import Mapping
from pathlib import Path

from . import qemuimg
from .base import (
    SR_LIFECYCLE,
    VDI_RECORDS,
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
    SRInUse,
    SRNotAttached,
    UnsafePath,
    VDIInfo,
    VDIInUse,
    VDIMissing,
    VDITooLarge,
    VDITooSmall,
    check_image_format,
)
from .fixed import FixedVdis
from .iscsi_client import (
    FailureWithOutput,
    IscsiConfig,
    Lun,
    check_portal,
    discover,
    iqns_xml,
    lun_details,
    luns,
    luns_xml,
    parse,
    scsi_id,
)
from .transfer import local_file

_LOCATION = re.compile(r"^LUN([0-9]{1,5})$")
_UUID_NAMESPACE = uuidlib.UUID("6b8c3f0e-5d3a-4e0b-9a57-2f1c8e4d7a10")  # pyxapi's namespace for LUN uuids


def lun_number(location: str) -> int:
    m = _LOCATION.match(location) if isinstance(location, str) else None
    if m is None:
        raise UnsafePath(str(location), "an iSCSI VDI location is LUN<number>")
    return int(m.group(1))


class IscsiStorageDriver(FixedVdis):
    sr_type = "iscsi"
    capabilities: frozenset[str] = (
        SR_LIFECYCLE | VDI_RECORDS | {Capability.SR_PROBE, Capability.VDI_IMPORT, Capability.VDI_EXPORT}
    )
    configuration: Mapping[str, str] = {
        "target": "IP address or hostname of the iSCSI target (required)",
        "port": "TCP port of the target portal (optional, default 3260)",
        "targetIQN": "IQN of the target whose LUNs become VDIs (required)",
        "SCSIid": "serial number of the one LUN this SR holds (optional)",
        "LUNid": "number of the one LUN this SR holds (optional)",
        "chapuser": "CHAP user name (optional)",
        "chappassword": "CHAP password (optional)",
    }
    required_device_config: frozenset[str] = frozenset({"target", "targetIQN"})
    sm_info = SMInfo(
        sr_type="iscsi",
        name="iSCSI",
        description="A LUN per VDI on an iSCSI target (QEMU's iscsi:// datapath); LUNs are made on the target",
        capabilities=capabilities,
        configuration=configuration,
        required_device_config=required_device_config,
        supported_image_formats=frozenset({"raw"}),
    )

    def check_location(self, location: str) -> None:
        lun_number(location)

    def __init__(self, work_dir: str | None = None) -> None:
        self.work_dir = work_dir or tempfile.gettempdir()
        self._attached: dict[str, IscsiConfig] = {}
        self._uses: dict[tuple[str, str], list[int]] = {}  # [readers, writer]

    # ------------------------------------------------------------------------------------------ SRs

    async def probe(self, device_config: Mapping[str, str]) -> list[ProbeResult]:
        """As XenServer answers probe on iSCSI: the target's IQNs (96) or LUNs (107) as XML in the error;
        with a LUN chosen, nothing (raw LUNs carry no SR identity to find)."""
        cfg = parse(device_config, need_iqn=False)
        await asyncio.to_thread(check_portal, cfg)
        targets = await discover(cfg)
        if not cfg.iqn:
            raise FailureWithOutput(SMError.CONFIG_TARGET_IQN_MISSING, iqns_xml(targets, cfg.port))
        if cfg.iqn not in {iqn for _, _, iqn in targets}:
            raise FailureWithOutput(SMError.ISCSI_DISCOVERY, iqns_xml(targets, cfg.port), "check target settings")
        found = await luns(cfg)
        if cfg.scsiid is None and cfg.lunid is None:
            raise FailureWithOutput(SMError.CONFIG_SCSIID, luns_xml(cfg, found))
        return []

    async def create_sr(self, device_config: Mapping[str, str], sr_uuid: str, size: int = 0) -> SRInfo:
        cfg = await self._connect(device_config)
        return _sizes(await self._luns(cfg))

    async def attach_sr(self, sr: SRHandle) -> SRInfo:
        cfg = await self._connect(sr.device_config)
        self._attached[sr.uuid] = cfg
        return _sizes(await self._luns(cfg))

    async def detach_sr(self, sr: SRHandle) -> None:
        if any(key[0] == sr.uuid for key in self._uses):
            raise SRInUse("LUNs of this SR are still attached")
        self._attached.pop(sr.uuid, None)

    async def destroy_sr(self, sr: SRHandle) -> None:
        # The LUNs belong to the target's admin: destroying the SR forgets them, as XenServer does.
        await self.detach_sr(sr)

    async def stat_sr(self, sr: SRHandle) -> SRInfo:
        return _sizes(await self._luns(self._cfg(sr)))

    async def scan(self, sr: SRHandle) -> list[VDIInfo]:
        cfg = self._cfg(sr)
        return [self._info(cfg, lun) for lun in await self._luns(cfg)]

    async def _connect(self, device_config: Mapping[str, str]) -> IscsiConfig:
        cfg = parse(device_config)
        await asyncio.to_thread(check_portal, cfg)
        targets = await discover(cfg)
        if cfg.iqn not in {iqn for _, _, iqn in targets}:
            raise FailureWithOutput(SMError.ISCSI_DISCOVERY, iqns_xml(targets, cfg.port), "check target settings")
        if cfg.scsiid is not None or cfg.lunid is not None:
            found = await self._luns(cfg)
            if not found:
                raise FailureWithOutput(SMError.CONFIG_SCSIID, luns_xml(cfg, await luns(cfg)))
        return cfg

    async def _luns(self, cfg: IscsiConfig) -> list[Lun]:
        found = await luns(cfg)
        if cfg.lunid is not None:
            found = [lun for lun in found if lun.lun == cfg.lunid]
        if cfg.scsiid is not None:
            found = [lun for lun in found if scsi_id(cfg, lun) == cfg.scsiid]
        return found

    def _cfg(self, sr: SRHandle) -> IscsiConfig:
        cfg = self._attached.get(sr.uuid)
        if cfg is None:
            raise SRNotAttached(sr.uuid)
        return cfg

    def _info(self, cfg: IscsiConfig, lun: Lun) -> VDIInfo:
        ident = scsi_id(cfg, lun)
        return VDIInfo(
            location=f"LUN{lun.lun}",
            virtual_size=lun.size,
            physical_utilisation=lun.size,
            format="raw",
            uuid=str(uuidlib.uuid5(_UUID_NAMESPACE, f"{cfg.iqn}/{ident}")),
            sm_config={"LUNid": str(lun.lun), "SCSIid": ident, "targetIQN": cfg.iqn, "image-format": "raw"},
        )

    async def _lun(self, sr: SRHandle, location: str) -> tuple[IscsiConfig, Lun]:
        number = lun_number(location)
        cfg = self._cfg(sr)
        if (cfg.lunid is not None and number != cfg.lunid) or number == 0:
            raise VDIMissing(sr.uuid, location)
        try:
            lun = await lun_details(cfg, number)
        except BackendFailure:
            raise VDIMissing(sr.uuid, location) from None
        if cfg.scsiid is not None and scsi_id(cfg, lun) != cfg.scsiid:
            raise VDIMissing(sr.uuid, location)
        return cfg, lun

    # ----------------------------------------------------------------------------------------- VDIs

    async def stat_vdi(self, sr: SRHandle, location: str) -> VDIInfo:
        cfg, lun = await self._lun(sr, location)
        return self._info(cfg, lun)

    async def attach_vdi(self, sr: SRHandle, location: str, read_only: bool = False) -> AttachInfo:
        cfg, lun = await self._lun(sr, location)
        if cfg.chapuser:
            # The datapath URI would have to carry the password into QEMU's command line.
            raise BackendFailure(SMError.ISCSI_LOGIN, "CHAP-protected LUNs cannot be attached to guests yet")
        readers, writer = self._uses.get((sr.uuid, location), [0, 0])
        if writer or (not read_only and readers):
            raise VDIInUse(location, "attach")
        self._uses[(sr.uuid, location)] = [readers + 1, writer] if read_only else [readers, 1]
        return AttachInfo(cfg.lun_url(lun.lun, with_auth=False), "raw", read_only)

    async def detach_vdi(self, sr: SRHandle, location: str) -> None:
        use = self._uses.get((sr.uuid, location))
        if use is None:
            return
        if use[1]:
            use[1] = 0
        elif use[0]:
            use[0] -= 1
        if use == [0, 0]:
            del self._uses[(sr.uuid, location)]

    # --------------------------------------------------------------------------------- data transfer

    async def import_data(
        self,
        sr: SRHandle,
        location: str,
        source: DataSource,
        format: ImageFormat,
        progress: ProgressFn | None = None,
    ) -> VDIInfo:
        """Write an image over the whole LUN: checked first, then converted in place, the tail zeroed."""
        fmt = check_image_format(format)
        cfg, lun = await self._lun(sr, location)
        if (sr.uuid, location) in self._uses:
            raise VDIInUse(location, "import")
        async with local_file(source, self.work_dir, ".tmp-") as src:
            virtual = await qemuimg.inspect_import(src, fmt)
            if virtual > lun.size:
                raise VDITooSmall(location, virtual)
            target = cfg.lun_url(lun.lun)
            try:
                await qemuimg.convert(src, fmt, target, "raw", progress, target_exists=True)
                if virtual < lun.size:
                    await _zero(target, virtual, lun.size - virtual)
            except qemuimg.QemuImgError as exc:
                raise BackendFailure(SMError.EIO, exc.stderr.replace(cfg.chappassword or "\0", "***")) from None
        return self._info(cfg, lun)

    async def export_data(
        self,
        sr: SRHandle,
        location: str,
        format: ImageFormat,
        dest: Path,
        progress: ProgressFn | None = None,
    ) -> int:
        fmt = check_image_format(format)
        cfg, lun = await self._lun(sr, location)
        use = self._uses.get((sr.uuid, location))
        if use and use[1]:
            raise VDIInUse(location, "export")
        if fmt == "vhd" and lun.size > qemuimg.VHD_MAX_SIZE:
            raise VDITooLarge(location, qemuimg.VHD_MAX_SIZE)
        try:
            await qemuimg.convert(cfg.lun_url(lun.lun), "raw", str(dest), fmt, progress)
        except qemuimg.QemuImgError as exc:
            raise BackendFailure(SMError.EIO, exc.stderr.replace(cfg.chappassword or "\0", "***")) from None
        return dest.stat().st_size



async def _zero(url: str, offset: int, length: int) -> None:
    """Zero the part of a LUN an image did not cover (WRITE SAME / UNMAP through qemu-io)."""
    exe = shutil.which("qemu-io")
    if exe is None:
        raise BackendFailure(SMError.SM_GENERAL, "qemu-io not found: install the Debian package qemu-utils")
    proc = await asyncio.create_subprocess_exec(
        exe, "-f", "raw", "-c", f"write -z {offset} {length}", url,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    text = (out + err).decode(errors="replace")
    if proc.returncode != 0 or "error" in text.lower():
        raise qemuimg.QemuImgError(["qemu-io", "write -z"], proc.returncode or 1, text)


def _sizes(found: list[Lun]) -> SRInfo:
    total = sum(lun.size for lun in found)
    return SRInfo(physical_size=total, physical_utilisation=total, virtual_allocation=total, content_type="user")
