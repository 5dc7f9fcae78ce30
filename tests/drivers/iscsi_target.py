"""A real iSCSI target for tests: tgtd in a network namespace the test creates (see nfs_server.TestNetns).

tgtd listens on the namespace's veth address, reached from the root namespace by the storage driver
(libiscsi tools, qemu-img) and by the daemon's QEMU guests. Its management socket is an
abstract one (per namespace), but its lock file is not: a control port of our own keeps it apart from
any other tgtd on the machine. Targets and file-backed LUNs are made with tgtadm, as an admin would;
tgtd ignores SIGTERM, so it is stopped with SIGKILL by pid.
"""

from __future__ import annotations

import itertools
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.drivers.nfs_server import START_TIMEOUT, Daemons, TestNetns, need, wait_port

ISCSI_PORT = 3260


@dataclass
class IscsiTarget:
    netns: TestNetns
    workdir: Path
    control_port: int = field(default_factory=lambda: random.randrange(2000, 32000))
    daemons: Daemons | None = None
    _tids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _targets: dict[str, int] = field(default_factory=dict)
    _luns: dict[str, int] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return self.netns.ns_addr

    def start(self) -> IscsiTarget:
        need("tgtd", "tgtadm", "iscsi-ls")
        log = open(self.workdir / "tgtd.log", "wb")  # noqa: SIM115 - kept by the child
        cmd = ["tgtd", "-f", "-C", str(self.control_port), "--iscsi", f"portal={self.address}:{ISCSI_PORT}"]
        # `ip netns exec` execs tgtd in place: the Popen pid is tgtd's own.
        proc = subprocess.Popen(self.netns.exec(*cmd), stdout=log, stderr=log, start_new_session=True)
        log.close()
        pid_file = self.workdir / "tgtd.pid"
        pid_file.write_text(str(proc.pid))
        self.daemons = Daemons(proc, [pid_file])
        try:
            wait_port(self.address, ISCSI_PORT)
            deadline = time.monotonic() + START_TIMEOUT
            while self._adm("--op", "show", "--mode", "sys", check=False).returncode != 0:
                if time.monotonic() > deadline:
                    raise AssertionError("tgtadm never reached tgtd")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.daemons is not None:
            self.daemons.stop()
            self.daemons = None

    def _adm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = self.netns.exec("tgtadm", "-C", str(self.control_port), "--lld", "iscsi", *args)
        return subprocess.run(cmd, check=check, capture_output=True, text=True)

    def new_target(self, lun_dir: Path, name: str | None = None) -> str:
        """A new target with no LUNs yet (only tgtd's controller LUN 0), open to every initiator."""
        tid = next(self._tids)
        iqn = f"iqn.2026-01.org.pyxapi.test:{name or f'target{tid}'}-{self.control_port}"
        lun_dir.mkdir(parents=True, exist_ok=True)
        self._adm("--op", "new", "--mode", "target", "--tid", str(tid), "-T", iqn)
        self._adm("--op", "bind", "--mode", "target", "--tid", str(tid), "-I", "ALL")
        self._targets[iqn] = tid
        self._luns[iqn] = 0
        (lun_dir / ".iqn").write_text(iqn)
        return iqn

    def add_lun(self, iqn: str, size: int, lun_dir: Path | None = None) -> int:
        """A file-backed LUN of `size` bytes (sparse), numbered after the target's last one."""
        tid = self._targets[iqn]
        lun = self._luns[iqn] + 1
        self._luns[iqn] = lun
        backing = (lun_dir or self.workdir) / f"tid{tid}-lun{lun}.raw"
        with open(backing, "wb") as f:
            f.truncate(size)
        self._adm("--op", "new", "--mode", "logicalunit", "--tid", str(tid), "--lun", str(lun), "-b", str(backing))
        # A serial number of its own (tgtd's default repeats across daemons): the VDI's identity.
        serial = f"scsi_id=pyxapi-{self.control_port}-{tid}-{lun},scsi_sn=pyx{self.control_port}t{tid}l{lun}"
        self._adm("--op", "update", "--mode", "logicalunit", "--tid", str(tid), "--lun", str(lun), "--params", serial)
        return lun

    def remove_target(self, iqn: str) -> None:
        tid = self._targets.pop(iqn, None)
        if tid is not None:
            self._adm("--op", "delete", "--force", "--mode", "target", "--tid", str(tid), check=False)

    def device_config(self, iqn: str) -> dict[str, str]:
        return {"target": self.address, "port": str(ISCSI_PORT), "targetIQN": iqn}
