"""Statistics of disks served by libxl's qdisk backend (QEMU in dom0), which libvirt cannot read.

libvirt's libxl driver reads blkback's counters from sysfs and answers "unsupported disk driver
qemu" for a qcow2 disk. The domain's QEMU has them: libxl gives it a second QMP socket meant for
statistics readers (``qmp-libxenstat-<domid>``, the one xentop uses), so reading there never gets
in the way of libxl's own monitor connection. QEMU names each disk's block node ``<vdev>-<format>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

from pyxapi.drivers.hypervisor.base import DeviceError, DiskStats

log = logging.getLogger(__name__)

STATS_SOCKET_DIR = Path("/var/run/xen")
QMP_TIMEOUT = 10.0


def stats_socket(domid: int, directory: Path = STATS_SOCKET_DIR) -> Path:
    return directory / f"qmp-libxenstat-{domid}"


def parse_blockstats(reply: list[dict[str, Any]]) -> dict[str, DiskStats]:
    """query-blockstats → {vdev (xvdb): DiskStats}."""
    out = {}
    for entry in reply:
        node = str(entry.get("node-name") or "")
        vdev, sep, _fmt = node.rpartition("-")
        stats = entry.get("stats") or {}
        if not sep or not vdev:
            continue
        out[vdev] = DiskStats(
            int(stats.get("rd_bytes", 0)),
            int(stats.get("wr_bytes", 0)),
            int(stats.get("rd_operations", 0)),
            int(stats.get("wr_operations", 0)),
        )
    return out


@contextlib.asynccontextmanager
async def monitor(domid: int, directory: Path = STATS_SOCKET_DIR) -> AsyncIterator[QMPClient]:
    """A QMP connection to the domain's QEMU on its statistics socket; DeviceError if there is none."""
    path = stats_socket(domid, directory)
    if not path.exists():
        raise DeviceError(f"domain {domid} has no device model (QEMU in dom0)")
    client = QMPClient(f"pyxapi-qdisk-{domid}")
    try:
        async with asyncio.timeout(QMP_TIMEOUT):
            await client.connect(str(path))
    except (QMPError, OSError, TimeoutError) as e:
        raise DeviceError(f"domain {domid}: cannot reach its device model: {e}") from None
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()


async def block_stats(domid: int, *, directory: Path = STATS_SOCKET_DIR) -> dict[str, DiskStats]:
    """The qdisk disks' counters of one domain; empty when it has no QEMU (or it does not answer)."""
    try:
        async with monitor(domid, directory) as client, asyncio.timeout(QMP_TIMEOUT):
            reply = await client.execute("query-blockstats")
    except (DeviceError, QMPError, OSError, TimeoutError, EOFError) as e:
        log.debug("qdisk stats of domain %d: %s", domid, e)
        return {}
    return parse_blockstats(reply if isinstance(reply, list) else [])
