"""task.*: client-made tasks, cancel, destroy and the client-side progress setters."""

from __future__ import annotations

from typing import Any

from pyxapi.api.dispatch import Call, Handler
from pyxapi.model.errors import ApiError
from pyxapi.wire.marshal import now_datetime

FINAL_STATES = ("success", "failure", "cancelled")


def create(call: Call, label: str, description: str) -> str:
    return call.ctx.tasks.create(label, description, call.session_ref)


def destroy(call: Call, task: str) -> None:
    call.ctx.tasks.destroy(task)


def cancel(call: Call, task: str) -> None:
    call.ctx.tasks.cancel(task)


def set_status(call: Call, task: str, value: str) -> None:
    changes: dict[str, Any] = {"status": value}
    if value in FINAL_STATES:
        changes["finished"] = now_datetime()
        if value == "success":
            changes["progress"] = 1.0
    call.ctx.store.update("task", task, changes)


def set_progress(call: Call, task: str, value: float) -> None:
    call.ctx.tasks.set_progress(task, value)


def set_result(call: Call, task: str, value: str) -> None:
    call.ctx.store.set_field("task", task, "result", value)


def set_error_info(call: Call, task: str, value: list[str]) -> None:
    call.ctx.store.set_field("task", task, "error_info", value)


def set_other_config(call: Call, task: str, value: dict[str, str]) -> None:
    call.ctx.store.set_field("task", task, "other_config", value)


def add_to_other_config(call: Call, task: str, key: str, value: str) -> None:
    store = call.ctx.store
    rec = store.get("task", task)
    if key in rec["other_config"]:
        raise ApiError("MAP_DUPLICATE_KEY", "task", "other_config", rec["uuid"], key)
    store.set_field("task", task, "other_config", {**rec["other_config"], key: value})


def remove_from_other_config(call: Call, task: str, key: str) -> None:
    store = call.ctx.store
    current = store.get("task", task)["other_config"]
    if key in current:
        store.set_field("task", task, "other_config", {k: v for k, v in current.items() if k != key})


MESSAGES: dict[str, Handler] = {
    "create": create,
    "destroy": destroy,
    "cancel": cancel,
    "set_status": set_status,
    "set_progress": set_progress,
    "set_result": set_result,
    "set_error_info": set_error_info,
    "set_other_config": set_other_config,
    "add_to_other_config": add_to_other_config,
    "remove_from_other_config": remove_from_other_config,
}
