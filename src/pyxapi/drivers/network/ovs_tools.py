"""Open vSwitch plumbing: a private ovsdb-server + ovs-vswitchd, and the ovs-* command line tools.

With a run dir, start() creates (or reuses) conf.db there and starts both daemons inside
the driver's network namespace, so the bridges' internal ports appear there and nowhere
else. stop() kills only the pids it started. Without a run dir the system's Open vSwitch
is used as it is, and nothing is started or stopped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .base import InvalidArgument, NetworkError
from .proc import Result, check_netns, kill_pid, pid_alive, read_pidfile, require, run

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
SYSTEM_RUNDIR = "/var/run/openvswitch"
TOOLS = ("ovs-vsctl", "ovs-ofctl", "ovsdb-tool", "ovsdb-server", "ovs-vswitchd")
# sun_path is 108 bytes; the longest socket we make is "<rundir>/ovs-vswitchd.ctl" or "<bridge>.mgmt".
_SUN_PATH_MAX = 107


class Ovs:
    def __init__(
        self, netns: str | None, run_dir: str | Path | None, schema: str = SCHEMA, timeout: float = 20.0
    ) -> None:
        self.netns = netns
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.schema = schema
        self.timeout = timeout
        rundir = str(self.run_dir) if self.run_dir is not None else SYSTEM_RUNDIR
        self.db = f"unix:{rundir}/db.sock"
        self.env = {"OVS_RUNDIR": rundir}
        if self.run_dir is not None:
            self.env |= {"OVS_DBDIR": rundir, "OVS_LOGDIR": rundir, "OVS_PKGDATADIR": str(Path(schema).parent)}
        self._started: list[int] = []

    # ------------------------------------------------------------ daemons

    def _path(self, name: str) -> str:
        assert self.run_dir is not None
        return str(self.run_dir / name)

    async def start(self) -> None:
        for tool in TOOLS:
            require(tool)
        check_netns(self.netns)
        if self.run_dir is None:
            if self.netns is not None:
                raise InvalidArgument("the system Open vSwitch runs in the root namespace: give a run_dir")
            if not os.path.exists(f"{SYSTEM_RUNDIR}/db.sock"):
                raise NetworkError(f"no Open vSwitch database at {SYSTEM_RUNDIR}/db.sock (ovsdb-server not running)")
            return
        try:
            await self._start_private()
        except BaseException:
            await self.stop()  # do not leave a half-started pair behind
            raise

    async def _start_private(self) -> None:
        assert self.run_dir is not None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        longest = max(len(self._path("ovs-vswitchd.ctl")), len(self._path("x" * 15 + ".mgmt")))
        if longest > _SUN_PATH_MAX:
            raise InvalidArgument(f"run dir {self.run_dir} too long for unix sockets (keep it under ~85 bytes)")
        if not os.path.exists(self._path("conf.db")):
            await run(["ovsdb-tool", "create", self._path("conf.db"), self.schema], env=self.env)
        await self._daemon(
            "ovsdb-server",
            [
                "ovsdb-server",
                self._path("conf.db"),
                f"--remote=punix:{self._path('db.sock')}",
                f"--unixctl={self._path('ovsdb-server.ctl')}",
            ],
        )
        await self.vsctl("--no-wait", "init")
        await self._daemon("ovs-vswitchd", ["ovs-vswitchd", self.db, f"--unixctl={self._path('ovs-vswitchd.ctl')}"])

    async def _daemon(self, name: str, argv: list[str]) -> None:
        pidfile = self._path(f"{name}.pid")
        pid = read_pidfile(pidfile)
        if pid is not None and pid_alive(pid):
            return  # left running by an earlier start on this run dir: use it, do not own it
        argv = [*argv, f"--pidfile={pidfile}", f"--log-file={self._path(name + '.log')}", "--detach"]
        await run(argv, netns=self.netns, env=self.env, timeout=self.timeout)
        pid = read_pidfile(pidfile)
        if pid is None:
            raise NetworkError(f"{name} started but wrote no pid file {pidfile}")
        self._started.append(pid)

    async def stop(self) -> None:
        # vswitchd first: it is the one holding devices in the namespace.
        while self._started:
            await kill_pid(self._started.pop())

    @property
    def owns_daemons(self) -> bool:
        return bool(self._started)

    # ------------------------------------------------------------ tools

    async def vsctl(self, *args: str, check: bool = True) -> Result:
        argv = ["ovs-vsctl", f"--db={self.db}", f"--timeout={int(self.timeout)}", *args]
        return await run(argv, env=self.env, check=check, timeout=self.timeout + 5)

    async def ofctl(self, cmd: str, bridge: str, *args: str, stdin: str | None = None) -> Result:
        # Bridges are created with OpenFlow13 enabled: meters need it.
        argv = ["ovs-ofctl", "-O", "OpenFlow13", cmd, bridge, *args]
        return await run(argv, env=self.env, stdin=stdin, timeout=self.timeout)

    async def table(self, table: str, columns: list[str], record: str | None = None) -> list[dict[str, Any]]:
        args = ["--format=json", f"--columns={','.join(columns)}", "list", table]
        if record is not None:
            args.append(record)
        res = await self.vsctl(*args, check=record is None)
        if res.returncode != 0:
            return []
        doc = json.loads(res.stdout)
        return [{h: atom(v) for h, v in zip(doc["headings"], row, strict=True)} for row in doc["data"]]


def atom(v: Any) -> Any:
    """OVSDB JSON to Python: sets to lists, maps to dicts, uuids to strings."""
    if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):
        kind, val = v
        if kind == "set":
            return [atom(x) for x in val]
        if kind == "map":
            return {atom(k): atom(x) for k, x in val}
        if kind in ("uuid", "named-uuid"):
            return val
    return v


def scalar(v: Any) -> Any:
    """An optional column (a set of zero or one) as a value or None."""
    if isinstance(v, list):
        return v[0] if v else None
    return v
