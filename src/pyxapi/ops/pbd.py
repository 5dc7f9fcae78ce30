"""PBD.*: the link between an SR and this host; plugging it attaches the SR through its driver."""

from __future__ import annotations

from typing import Any

from pyxapi.api.dispatch import Call, Handler
from pyxapi.model.errors import OPERATION_NOT_ALLOWED, ApiError
from pyxapi.ops import storage_rules as rules
from pyxapi.ops.sr import runtime


def _check_device_config(config: dict[str, str]) -> None:
    # xapi reserves this key for the pool master's own use.
    if "SRmaster" in config:
        raise ApiError("VALUE_NOT_SUPPORTED", "SRmaster", config["SRmaster"], "This key is for internal use only")


def create(call: Call, record: dict[str, Any]) -> str:
    store = call.ctx.store
    host, sr = record.get("host", ""), record.get("SR", "")
    store.get("host", host)
    sr_rec = store.get("SR", sr)
    for pbd in sr_rec["PBDs"]:
        if store.get("PBD", pbd)["host"] == host:
            raise ApiError("PBD_EXISTS", sr, host, pbd)
    device_config = dict(record.get("device_config", {}))
    _check_device_config(device_config)
    with store.transaction():
        pbd = store.create(
            "PBD",
            {
                "host": host,
                "SR": sr,
                "device_config": device_config,
                "other_config": dict(record.get("other_config", {})),
                "currently_attached": False,
            },
        )
        rules.refresh_sr(store, sr)
    return pbd


def destroy(call: Call, pbd: str) -> None:
    store = call.ctx.store
    rec = store.get("PBD", pbd)
    if rec["currently_attached"]:
        raise ApiError(OPERATION_NOT_ALLOWED, "PBD is currently attached")
    with store.transaction():
        store.destroy("PBD", pbd)
        rules.refresh_sr(store, rec["SR"])


async def plug(call: Call, pbd: str) -> None:
    storage = runtime(call.ctx)
    sr = call.ctx.store.get("PBD", pbd)["SR"]
    storage.driver_for(call.ctx.store.get("SR", sr)["type"])  # SR_UNKNOWN_DRIVER before anything else
    await storage.plug_pbd(pbd)
    # A library filled behind the toolstack's back, or images left by another install: seen at once.
    await storage.scan(sr)


async def unplug(call: Call, pbd: str) -> None:
    await runtime(call.ctx).unplug_pbd(pbd)


def set_device_config(call: Call, pbd: str, value: dict[str, str]) -> None:
    store = call.ctx.store
    _check_device_config(value)
    if store.get("PBD", pbd)["currently_attached"]:
        raise ApiError(OPERATION_NOT_ALLOWED, "PBD is currently attached")
    store.set_field("PBD", pbd, "device_config", dict(value))


MESSAGES: dict[str, Handler] = {
    "create": create,
    "destroy": destroy,
    "plug": plug,
    "unplug": unplug,
    "set_device_config": set_device_config,
}
