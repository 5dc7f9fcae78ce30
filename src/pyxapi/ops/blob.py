"""blob.* and <class>.create_new_blob: small binary objects whose bytes live in the data dir."""

from __future__ import annotations

from pathlib import Path

from pyxapi.api.dispatch import Call, Handler
from pyxapi.wire.marshal import now_datetime


def blob_path(data_dir: Path, uuid: str) -> Path:
    return data_dir / "blobs" / uuid


def create(call: Call, mime_type: str, public: bool, name: str = "") -> str:
    return call.ctx.store.create(
        "blob",
        {"name_label": name, "mime_type": mime_type, "public": public, "last_updated": now_datetime(), "size": 0},
    )


def destroy(call: Call, self: str) -> None:
    store = call.ctx.store
    uuid = store.get("blob", self)["uuid"]
    with store.transaction():
        for cls in ("VM", "host", "pool", "network", "SR"):
            for ref, rec in store.items(cls):
                blobs = rec.get("blobs", {})
                if self in blobs.values():
                    store.set_field(cls, ref, "blobs", {k: v for k, v in blobs.items() if v != self})
        store.destroy("blob", self)
    blob_path(call.ctx.config.data_dir, uuid).unlink(missing_ok=True)


def create_new_blob_for(cls: str) -> Handler:
    def create_new_blob(call: Call, obj: str, name: str, mime_type: str, public: bool = False) -> str:
        store = call.ctx.store
        with store.transaction():
            ref = create(call, mime_type, public, name)
            blobs = store.get(cls, obj)["blobs"]
            store.set_field(cls, obj, "blobs", {**blobs, name: ref})
        return ref

    return create_new_blob


MESSAGES: dict[str, Handler] = {"create": create, "destroy": destroy}
