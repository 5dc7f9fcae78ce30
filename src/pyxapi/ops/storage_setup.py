"""Storage on first start and every start: SM records for the drivers, the local SR, the ISO library.

Records only (bootstrap runs before the event loop serves anything): the directories are made
here and the drivers adopt them when the storage runtime attaches the SRs at start-up.
"""

from __future__ import annotations

from typing import Any

from pyxapi.context import Context
from pyxapi.db.store import Store, new_uuid
from pyxapi.drivers.storage import SR_TYPES, make_driver

STORAGE_INITIALISED = "pyxapi_storage_initialised"  # pool.other_config: the first start made the SRs


def ensure_storage(ctx: Context, host: str) -> None:
    """Every start: one SM record per driver type. First start: the local SR and the ISO library."""
    store = ctx.store
    _ensure_sm_records(store)
    pool = store.refs("pool")[0]
    pool_rec = store.get("pool", pool)
    if pool_rec["other_config"].get(STORAGE_INITIALISED) == "true":
        return
    data = ctx.config.data_dir
    sr_uuid = new_uuid()
    local = data / "sr" / sr_uuid
    library = data / "iso"
    # The drivers adopt an existing directory on attach, so creating them here is all "create" needs.
    local.mkdir(parents=True, exist_ok=True)
    library.mkdir(parents=True, exist_ok=True)
    hostname = store.get("host", host)["hostname"]
    with store.transaction():
        sr = _new_sr(store, host, sr_uuid, "Local storage", f"Local storage on {hostname}", "file", "user", local)
        _new_sr(store, host, new_uuid(), "ISO library", "ISO images in " + str(library), "iso", "iso", library)
        store.update(
            "pool",
            pool,
            {
                "default_SR": sr,
                "suspend_image_SR": sr,
                "crash_dump_SR": sr,
                "other_config": {**pool_rec["other_config"], STORAGE_INITIALISED: "true"},
            },
        )
        store.update("host", host, {"suspend_image_sr": sr, "crash_dump_sr": sr})


def _new_sr(
    store: Store, host: str, uuid: str, name: str, description: str, sr_type: str, content: str, path: Any
) -> str:
    sr = store.create(
        "SR",
        {
            "uuid": uuid,
            "name_label": name,
            "name_description": description,
            "type": sr_type,
            "content_type": content,
            "shared": False,
            "default_vdi_visibility": True,
            "other_config": {"i18n-key": "local-storage"} if sr_type == "file" else {},
        },
    )
    store.create("PBD", {"host": host, "SR": sr, "device_config": {"location": str(path)}, "currently_attached": True})
    return sr


def _ensure_sm_records(store: Store) -> None:
    existing = {rec["type"]: ref for ref, rec in store.items("SM")}
    for sr_type in SR_TYPES:
        info = make_driver(sr_type).sm_info
        fields = {
            "name_label": info.name,
            "name_description": info.description,
            "type": info.sr_type,
            "vendor": info.vendor,
            "copyright": info.copyright,
            "version": info.version,
            "required_api_version": info.required_api_version,
            "configuration": dict(info.configuration),
            "capabilities": sorted(info.capabilities),
            "features": info.features,
            "driver_filename": f"pyxapi.drivers.storage.{sr_type}",
            "supported_image_formats": sorted(info.supported_image_formats),
        }
        ref = existing.get(sr_type)
        if ref is None:
            store.create("SM", fields)
        elif any(store.get("SM", ref).get(k) != v for k, v in fields.items()):
            store.update("SM", ref, fields)
