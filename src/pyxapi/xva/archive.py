"""One entry for every archive an import accepts: an XVA (ova.xml first), or an OVA (an .ovf
descriptor first), either one plain, gzip- or zstd-compressed. Errors from the byte stream itself
(a client that stops sending) become the premature end xapi reports.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable

import aiohttp

from pyxapi.api.dispatch import Call
from pyxapi.context import Context
from pyxapi.db.store import NULL_REF
from pyxapi.model.errors import ApiError
from pyxapi.xva import ova
from pyxapi.xva.errors import ImportFailure, PrematureEOF
from pyxapi.xva.importer import ImportResult, Progress, import_xva
from pyxapi.xva.restore import ImportConfig
from pyxapi.xva.stream import open_archive
from pyxapi.xva.tar import TarReader

log = logging.getLogger(__name__)


def target_sr(ctx: Context, query: dict[str, str] | None, sr_id: str = "", sr_uuid: str = "") -> str:
    """sr_id, else sr_uuid, else the pool's default SR; an ISO library cannot take disks."""
    store = ctx.store
    if query is not None:
        sr_id, sr_uuid = query.get("sr_id", ""), query.get("sr_uuid", "")
    if sr_id and sr_id != NULL_REF:
        store.get("SR", sr_id)
        sr = sr_id
    elif sr_uuid:
        sr = store.by_uuid("SR", sr_uuid)
    else:
        sr = store.get("pool", ctx.pool_ref)["default_SR"] if ctx.pool_ref else NULL_REF
        if not store.exists("SR", sr):
            raise ApiError("DEFAULT_SR_NOT_FOUND", sr)
    if store.get("SR", sr)["content_type"] == "iso":
        raise ApiError("SR_OPERATION_NOT_SUPPORTED", sr)
    return sr


async def import_archive(
    call: Call, body: AsyncIterable[bytes], config: ImportConfig, progress: Progress | None = None
) -> ImportResult:
    try:
        source, _ = await open_archive(body)
        reader = TarReader(source)
        first = await reader.next()
        if first is not None and first.name.lower().endswith(".ovf") and config.sr is not None:
            return await ova.import_ova(call, reader, first, config, progress)
        return await import_xva(call, reader, first, config, progress)
    except ApiError:
        raise
    except (aiohttp.ClientPayloadError, asyncio.IncompleteReadError, ConnectionError) as e:
        log.info("import stream ended early: %s", e)
        raise PrematureEOF() from None
    except OSError as e:
        raise ImportFailure(f"{type(e).__name__}: {e}") from None
