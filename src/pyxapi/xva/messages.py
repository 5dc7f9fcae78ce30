"""VM.import (an XVA or OVA fetched from a URL) and VM.import_convert (the same, for the archive
types pyxapi converts itself), through the same importer as PUT /import."""

from __future__ import annotations

from typing import Any

import aiohttp

from pyxapi.api.dispatch import Call, Handler
from pyxapi.model.errors import ApiError
from pyxapi.xva.archive import import_archive, target_sr
from pyxapi.xva.errors import ImportFailure
from pyxapi.xva.restore import ImportConfig

FETCH_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=30, sock_read=300)
CONVERTIBLE = ("xva", "ova")


async def _fetch_and_import(call: Call, url: str, sr: str, config: ImportConfig, auth: Any = None) -> list[str]:
    if not url.lower().startswith(("http://", "https://")):
        raise ImportFailure(f"cannot fetch {url!r}: only http and https URLs are supported")
    task = call.task_ref

    def progress(p: float) -> None:
        if task is not None:
            call.ctx.tasks.set_progress(task, p)

    try:
        async with aiohttp.ClientSession(timeout=FETCH_TIMEOUT, auth=auth) as session, session.get(url) as resp:
            if resp.status != 200:
                raise ImportFailure(f"GET {url}: HTTP {resp.status} {resp.reason}")
            result = await import_archive(call, resp.content.iter_any(), config, progress)
    except aiohttp.ClientError as e:
        raise ImportFailure(f"GET {url}: {type(e).__name__}: {e}") from None
    return result.vms


async def vm_import(call: Call, url: str, sr: str, full_restore: bool, force: bool) -> list[str]:
    target = target_sr(call.ctx, None, sr_id=sr)
    return await _fetch_and_import(call, url, target, ImportConfig(target, full_restore, force))


async def import_convert(
    call: Call, type: str, username: str, password: str, sr: str, remote_config: dict[str, str]
) -> None:
    """xapi hands this to a conversion service (VMware guests); pyxapi converts archives itself:
    type `xva` or `ova`, fetched from remote_config:url (with username/password as Basic auth)."""
    if type.lower() not in CONVERTIBLE:
        raise ApiError("VALUE_NOT_SUPPORTED", "type", type, f"pyxapi converts {' and '.join(CONVERTIBLE)} archives")
    url = remote_config.get("url", "")
    if not url:
        raise ApiError("INVALID_VALUE", "remote_config:url", "")
    target = target_sr(call.ctx, None, sr_id=sr)
    auth = aiohttp.BasicAuth(username, password) if username else None
    await _fetch_and_import(call, url, target, ImportConfig(target), auth)


MESSAGES: dict[str, Handler] = {"import": vm_import, "import_convert": import_convert}
