"""The iSCSI SR's device_config and its control path: discovery, LUN lists, sizes and serials through
libiscsi's own tools (Debian libiscsi-bin), the same initiator library QEMU's iscsi:// datapath uses.
No kernel initiator is needed (this kernel has no SCSI layer).

device_config, as XenServer's iscsi / lvmoiscsi SRs: target (host, required), port (default 3260),
targetIQN (required except for probe), SCSIid or LUNid (optional: the SR is then that one LUN),
chapuser + chappassword (optional CHAP). Errors: ConfigTargetMissing (95), ISCSIPort (142), DNSError
(140), ISCSITarget (141), ConfigTargetIQNMissing (96, with the target's IQNs as XML for probe),
InvalidIQN (106), ISCSIDiscovery (83), ISCSILogin (68), ConfigSCSIid (107, with the LUNs as XML).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import shutil
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote
from xml.dom import minidom

from .base import BackendFailure, SMError

DEFAULT_PORT = 3260
CONNECT_TIMEOUT = 3.0
TOOL_TIMEOUT = 60.0
_IQN = re.compile(
    r"^(iqn\.\d{4}-\d{2}\.[A-Za-z0-9][A-Za-z0-9.-]*(:[A-Za-z0-9._:-]+)?|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16,32})$"
)
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")
_TARGET_LINE = re.compile(r"^Target:(\S+) Portal:(\S+?),(\d+)$")
_LUN_LINE = re.compile(r"^Lun:(\d+)\s+Type:(\S+)")


class FailureWithOutput(BackendFailure):
    """SR_BACKEND_FAILURE_<n> whose third parameter carries the SM plugin's output (probe's XML)."""

    def __init__(self, error: SMError, output: str, detail: str = "") -> None:
        super().__init__(error, detail)
        self.params[2] = output
        self.args = (self.code, *self.params)


@dataclass(frozen=True, slots=True)
class Lun:
    lun: int
    size: int
    serial: str


@dataclass(frozen=True, slots=True)
class IscsiConfig:
    target: str
    port: int
    iqn: str
    chapuser: str = ""
    chappassword: str = ""
    lunid: int | None = None
    scsiid: str | None = None

    @property
    def host(self) -> str:
        return f"[{self.target}]" if ":" in self.target else self.target

    def _auth(self) -> str:
        if not self.chapuser:
            return ""
        return f"{quote(self.chapuser, safe='')}%{quote(self.chappassword, safe='')}@"

    def portal_url(self) -> str:
        """For the control path (may carry CHAP credentials: never logged, never given to a guest)."""
        return f"iscsi://{self._auth()}{self.host}:{self.port}"

    def lun_url(self, lun: int, with_auth: bool = True) -> str:
        auth = self._auth() if with_auth else ""
        return f"iscsi://{auth}{self.host}:{self.port}/{self.iqn}/{lun}"


def parse(device_config: Mapping[str, str], need_iqn: bool = True) -> IscsiConfig:
    target = (device_config.get("target") or "").split(",")[0].strip()
    if not target:
        raise BackendFailure(SMError.CONFIG_TARGET_MISSING)
    if not _valid_host(target):
        raise BackendFailure(SMError.DNS_ERROR, f"target {target!r} is not a host name or address")
    port_text = device_config.get("port") or str(DEFAULT_PORT)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise BackendFailure(SMError.ISCSI_PORT)
    iqn = device_config.get("targetIQN", "")
    if iqn and iqn != "*" and not _IQN.match(iqn):
        raise BackendFailure(SMError.INVALID_IQN, iqn)
    if need_iqn and not iqn:
        raise BackendFailure(SMError.CONFIG_TARGET_IQN_MISSING)
    if "chappassword_secret" in device_config:
        raise BackendFailure(SMError.INVALID_ARG, "chappassword_secret is not supported here: give chappassword")
    chapuser = device_config.get("chapuser", "")
    chappassword = device_config.get("chappassword", "") if chapuser else ""
    lunid_text = device_config.get("LUNid")
    if lunid_text is not None and not lunid_text.isdigit():
        raise BackendFailure(SMError.CONFIG_LUNID_MISSING, f"LUNid {lunid_text!r} is not a number")
    return IscsiConfig(
        target,
        int(port_text),
        iqn,
        chapuser,
        chappassword,
        int(lunid_text) if lunid_text is not None else None,
        device_config.get("SCSIid") or None,
    )


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOST.match(host)) and ".." not in host


def check_portal(cfg: IscsiConfig) -> None:
    """xapi's _testHost: DNSError if the name does not resolve, ISCSITarget if nothing accepts. Blocking."""
    try:
        infos = socket.getaddrinfo(cfg.target, cfg.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise BackendFailure(SMError.DNS_ERROR, f"cannot resolve {cfg.target}") from None
    last = ""
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(CONNECT_TIMEOUT)
            try:
                sock.connect(address)
                return
            except OSError as exc:
                last = exc.strerror or str(exc)
    raise BackendFailure(SMError.ISCSI_TARGET, f"{cfg.target}:{cfg.port}: {last}")


async def _tool(*args: str) -> tuple[int, str]:
    """Run a libiscsi tool; returns (exit code, stdout + stderr). A hung target costs TOOL_TIMEOUT."""
    exe = shutil.which(args[0])
    if exe is None:
        raise BackendFailure(SMError.SM_GENERAL, f"{args[0]} not found: install the Debian package libiscsi-bin")
    proc = await asyncio.create_subprocess_exec(
        exe, *args[1:], stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), TOOL_TIMEOUT)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


def _login_error(cfg: IscsiConfig, output: str, error: SMError) -> BackendFailure:
    text = output.strip().splitlines()[-1] if output.strip() else "no output"
    if cfg.chapuser:
        text = text.replace(cfg.chappassword, "***") if cfg.chappassword else text
    lowered = output.lower()
    if "authentication" in lowered or "chap" in lowered or "not authorized" in lowered:
        return BackendFailure(SMError.ISCSI_LOGIN, text)
    if "connect" in lowered and "login" not in lowered:
        return BackendFailure(SMError.ISCSI_TARGET, text)
    return BackendFailure(error, text)


async def discover(cfg: IscsiConfig) -> list[tuple[str, int, str]]:
    """SendTargets discovery: (portal, tpgt, IQN) per target."""
    rc, out = await _tool("iscsi-ls", cfg.portal_url())
    if rc != 0:
        raise _login_error(cfg, out, SMError.ISCSI_DISCOVERY)
    found = []
    for line in out.splitlines():
        m = _TARGET_LINE.match(line.strip())
        if m:
            found.append((m.group(2), int(m.group(3)), m.group(1)))
    return found


async def luns(cfg: IscsiConfig) -> list[Lun]:
    """The disk LUNs of cfg.iqn (the controller LUN and other device types are not disks)."""
    rc, out = await _tool("iscsi-ls", "-s", cfg.portal_url())
    if rc != 0:
        raise _login_error(cfg, out, SMError.ISCSI_DISCOVERY)
    numbers: list[int] = []
    current = None
    for line in out.splitlines():
        line = line.strip()
        if m := _TARGET_LINE.match(line):
            current = m.group(1)
        elif (m := _LUN_LINE.match(line)) and current == cfg.iqn and m.group(2) == "DIRECT_ACCESS":
            numbers.append(int(m.group(1)))
    return [await lun_details(cfg, n) for n in sorted(set(numbers))]


async def lun_details(cfg: IscsiConfig, lun: int) -> Lun:
    url = cfg.lun_url(lun)
    rc, out = await _tool("iscsi-readcapacity16", "-s", url)
    if rc != 0 or not out.strip().splitlines()[-1].isdigit():
        raise _login_error(cfg, out, SMError.VDI_UNAVAILABLE)
    size = int(out.strip().splitlines()[-1])
    rc, out = await _tool("iscsi-inq", "-e", "1", "-c", "128", url)
    m = re.search(r"Unit Serial Number:\[\s*(.*?)\s*\]", out)
    serial = m.group(1) if rc == 0 and m else ""
    return Lun(lun, size, serial)


def iqns_xml(entries: Sequence[tuple[str, int, str]], port: int) -> str:
    """What ISCSISR prints for a probe without targetIQN: <iscsi-target-iqns><TGT>Index, IPAddress, TargetIQN."""
    doc = minidom.Document()
    root = doc.appendChild(doc.createElement("iscsi-target-iqns"))
    for index, (portal, _, iqn) in enumerate(entries):
        address, _, tport = portal.rpartition(":")
        tgt = root.appendChild(doc.createElement("TGT"))
        fields = [("Index", str(index)), ("IPAddress", address.strip("[]") or portal)]
        if tport and tport.isdigit() and int(tport) != port and int(tport) != DEFAULT_PORT:
            fields.append(("Port", tport))
        fields.append(("TargetIQN", iqn))
        for tag, text in fields:
            tgt.appendChild(doc.createElement(tag)).appendChild(doc.createTextNode(text))
    return str(doc.toprettyxml())


def luns_xml(cfg: IscsiConfig, found: Sequence[Lun]) -> str:
    """What lvmoiscsi prints for a probe without SCSIid: <iscsi-target><LUN>vendor, serial, LUNid, size, SCSIid."""
    doc = minidom.Document()
    root = doc.appendChild(doc.createElement("iscsi-target"))
    for lun in found:
        node = root.appendChild(doc.createElement("LUN"))
        for tag, text in (
            ("vendor", "iSCSI"),
            ("serial", lun.serial),
            ("LUNid", str(lun.lun)),
            ("size", str(lun.size)),
            ("SCSIid", scsi_id(cfg, lun)),
        ):
            node.appendChild(doc.createElement(tag)).appendChild(doc.createTextNode(text))
    return str(doc.toprettyxml())


def scsi_id(cfg: IscsiConfig, lun: Lun) -> str:
    """A stable identifier for a LUN: its unit serial number (VPD page 0x80), else target/LUN."""
    return lun.serial or f"{cfg.iqn}/{lun.lun}"
