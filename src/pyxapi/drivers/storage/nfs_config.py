"""The NFS SR's device_config, checks of the server, and the XML its probe answers, as XenServer's NFSSR.

device_config: server (host name or address, required), serverpath (absolute path of an export or a
directory below one, required except for probe), nfsversion ("3" default, "4", "4.0", "4.1": the
version libnfs uses for file operations; QEMU 7.2's datapath always speaks NFSv3).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from xml.dom import minidom

from .base import BackendFailure, SMError

NFS_PORT = 2049
CONNECT_TIMEOUT = 3.0  # seconds; xapi's _testHost waits 2
NFS_VERSIONS = {"3": 3, "4": 4, "4.0": 4, "4.1": 4}

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
# Path components that survive a URL, a qemu option string and a shell unquoted: no ',', '?', '#', '%'.
_COMPONENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,254}$")


class FailureWithOutput(BackendFailure):
    """SR_BACKEND_FAILURE_<n> whose third parameter carries the SM plugin's output (probe's XML)."""

    def __init__(self, error: SMError, output: str, detail: str = "") -> None:
        super().__init__(error, detail)
        self.params[2] = output
        self.args = (self.code, *self.params)


@dataclass(frozen=True, slots=True)
class NfsConfig:
    server: str
    serverpath: str
    version: int

    @property
    def host(self) -> str:
        """The server as it appears in a URL (IPv6 addresses in brackets)."""
        return f"[{self.server}]" if ":" in self.server else self.server

    def sr_url(self, sr_uuid: str) -> str:
        return f"nfs://{self.host}{self.serverpath}/{sr_uuid}"


def parse_server(device_config: Mapping[str, str]) -> str:
    server = device_config.get("server", "")
    if not server:
        raise BackendFailure(SMError.CONFIG_SERVER_MISSING)
    if not isinstance(server, str) or not _valid_host(server):
        raise BackendFailure(SMError.DNS_ERROR, f"server {server!r} is not a host name or address")
    return server


def parse(device_config: Mapping[str, str]) -> NfsConfig:
    """Everything but probe needs server and serverpath; errors in xapi's order and codes."""
    server = parse_server(device_config)
    path = device_config.get("serverpath", "")
    if not path:
        raise BackendFailure(SMError.CONFIG_SERVER_PATH_MISSING)
    return NfsConfig(server, check_serverpath(path), parse_version(device_config.get("nfsversion")))


def check_serverpath(path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise BackendFailure(SMError.CONFIG_SERVER_PATH_BAD, f"{path!r} is not an absolute path")
    stripped = path.rstrip("/")
    parts = stripped.split("/")[1:]
    if not all(_COMPONENT.match(p) and p not in (".", "..") for p in parts):
        raise BackendFailure(
            SMError.CONFIG_SERVER_PATH_BAD,
            f"{path!r}: components must be letters, digits and . _ + - (no '..', spaces or URL characters)",
        )
    return stripped  # "" for the root export "/"


def parse_version(value: str | None) -> int:
    if not value:
        return 3
    if value not in NFS_VERSIONS:
        raise BackendFailure(SMError.NFS_VERSION, f"Invalid nfsversion {value!r} (3, 4, 4.0 or 4.1)")
    return NFS_VERSIONS[value]


def _valid_host(server: str) -> bool:
    try:
        ipaddress.ip_address(server)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(server))


def check_server(server: str, port: int = NFS_PORT, timeout: float = CONNECT_TIMEOUT) -> None:
    """xapi's _testHost: the name must resolve (DNSError) and the NFS port must accept (NFSTarget).
    Blocking: call from a worker thread."""
    try:
        infos = socket.getaddrinfo(server, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise BackendFailure(SMError.DNS_ERROR, f"cannot resolve {server}") from None
    last = ""
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(address)
                return
            except OSError as exc:
                last = exc.strerror or str(exc)
    raise BackendFailure(SMError.NFS_TARGET, f"{server}:{port}: {last}")


def exports_xml(server: str, exports: Sequence[tuple[str, Sequence[str]]]) -> str:
    """What NFSSR prints for a probe without serverpath: <nfs-exports><Export>Target, Path, Accesslist."""
    doc = minidom.Document()
    root = doc.appendChild(doc.createElement("nfs-exports"))
    for path, groups in exports:
        export = root.appendChild(doc.createElement("Export"))
        for tag, text in (("Target", server), ("Path", path), ("Accesslist", ",".join(groups) or "*")):
            export.appendChild(doc.createElement(tag)).appendChild(doc.createTextNode(text))
    return str(doc.toprettyxml())
