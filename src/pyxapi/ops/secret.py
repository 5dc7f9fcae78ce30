"""secret.introduce: create a secret with a caller-chosen uuid (pool replication uses it)."""

from __future__ import annotations

from pyxapi.api.dispatch import Call, Handler
from pyxapi.model.errors import ApiError


def introduce(call: Call, uuid: str, value: str, other_config: dict[str, str]) -> str:
    store = call.ctx.store
    try:
        store.by_uuid("secret", uuid)
    except ApiError:
        return store.create("secret", {"uuid": uuid, "value": value, "other_config": other_config})
    raise ApiError("DB_UNIQUENESS_CONSTRAINT_VIOLATION", "secret", "uuid", uuid)


MESSAGES: dict[str, Handler] = {"introduce": introduce}
