"""What the Xen driver remembers about one domain, on disk so a restarted daemon can take it over.

``run_dir/<uuid>/meta.json`` holds the domain's current spec (hot-plugged devices, vCPU count and
memory target included: a reboot recreates the domain from it) and the bridges its NICs are on.
The console sockets live beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyxapi.drivers.hypervisor.base import DomainInfo, DomainSpec, DomainState, ExitReason
from pyxapi.drivers.hypervisor.xen.relay import PtyRelay, TcpRelay


@dataclass
class XenDomain:
    spec: DomainSpec
    dir: Path
    domid: int = -1
    state: DomainState = DomainState.RUNNING
    bridges: dict[int, str] = field(default_factory=dict)  # NIC device → bridge (the tap is gone once taken over)
    requested: ExitReason | None = None  # an exit this driver asked for
    rebooting: bool = False  # reboot() owns the domain's exits until it has recreated it
    finished: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    reboot_seen: asyncio.Event = field(default_factory=asyncio.Event)
    console: PtyRelay | None = None
    vnc: TcpRelay | None = None
    pty: str | None = None
    vnc_port: int | None = None
    unsafe_drives: set[int] = field(default_factory=set)  # empty HVM CD-ROM drives media cannot enter

    @property
    def uuid(self) -> str:
        return self.spec.uuid

    @property
    def meta(self) -> Path:
        return self.dir / "meta.json"

    @property
    def console_socket(self) -> Path:
        return self.dir / "console.sock"

    @property
    def vnc_socket(self) -> Path:
        return self.dir / "vnc.sock"

    @property
    def empty_media(self) -> Path:
        """The empty file an HVM guest's empty CD-ROM drives start with (devices.placeholder_media)."""
        return self.dir / "empty-media"

    def info(self) -> DomainInfo:
        return DomainInfo(
            self.uuid, self.spec.name, self.domid, self.state, self.spec.vcpus_at_startup, self.spec.memory_target, None
        )

    def save(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data: dict[str, Any] = {
            "spec": self.spec.to_dict(),
            "domid": self.domid,
            "bridges": {str(k): v for k, v in self.bridges.items()},
        }
        tmp = self.meta.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.meta)

    @classmethod
    def load(cls, directory: Path) -> XenDomain:
        data = json.loads((directory / "meta.json").read_text())
        return cls(
            DomainSpec.from_dict(data["spec"]),
            directory,
            int(data.get("domid", -1)),
            bridges={int(k): str(v) for k, v in data.get("bridges", {}).items()},
        )

    def forget(self) -> None:
        """Remove what adopt() would look at (logs elsewhere stay)."""
        for p in (self.meta, self.console_socket, self.vnc_socket, self.empty_media):
            p.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.dir.rmdir()
