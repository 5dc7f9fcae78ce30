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
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

from pyxapi.drivers.hypervisor.base import DiskStats

log = logging.getLogger(__name__)

STATS_SOCKET_DIR = Path("/var/run/xen")


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


async def block_stats(domid: int, *, timeout: float = 10.0, directory: Path = STATS_SOCKET_DIR) -> dict[str, DiskStats]:
    """The qdisk disks' counters of one domain; empty when it has no QEMU (or it does not answer)."""
    path = stats_socket(domid, directory)
    if not path.exists():
        return {}
    client = QMPClient(f"pyxapi-stats-{domid}")
    try:
        async with asyncio.timeout(timeout):
            await client.connect(str(path))
            reply = await client.execute("query-blockstats")
    except (QMPError, OSError, TimeoutError, EOFError) as e:
        log.debug("qdisk stats of domain %d: %s", domid, e)
        return {}
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()
    return parse_blockstats(reply if isinstance(reply, list) else [])
