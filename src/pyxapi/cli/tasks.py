"""Waiting for an API task the way xe does (following event.from), with xe's `--progress`
bar, then turning the task's outcome into a result or the task's error."""

from __future__ import annotations

import contextlib
import re
import time

from pyxapi.cli.errors import ApiFailure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from pyxapi.cli.ctx import Ctx
    from pyxapi.cli.session import Api

_REF = re.compile(r"OpaqueRef:[0-9a-fA-F-]+")
EVENT_TIMEOUT = 30.0


def track(
    api: Api,
    task: str,
    on_update: Callable[[dict[str, Any]], None] | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Block until `task` is no longer pending (or `deadline`, a monotonic time, passes);
    returns its last record."""
    token = ""
    rec: dict[str, Any] = {"status": "pending"}
    while True:
        wait = EVENT_TIMEOUT if deadline is None else min(EVENT_TIMEOUT, max(deadline - time.monotonic(), 0.0))
        reply = api.call("event.from", [f"task/{task}"], token, wait)
        token = reply["token"]
        for ev in reply["events"]:
            if ev.get("ref") != task:
                continue
            if ev.get("operation") == "del":
                raise ApiFailure("HANDLE_INVALID", ["task", task])
            rec = ev.get("snapshot") or {}
            if on_update:
                on_update(rec)
            if rec.get("status") not in (None, "pending", "cancelling"):
                return rec
        if deadline is not None and time.monotonic() >= deadline:
            return rec


def outcome(task: str, rec: dict[str, Any]) -> str:
    """The task's result, or its error raised (cancelled tasks as TASK_CANCELLED)."""
    status = rec.get("status")
    if status in ("cancelled", "cancelling"):
        raise ApiFailure("TASK_CANCELLED", [task])
    if status == "failure":
        info = list(rec.get("error_info") or [])
        if not info:
            raise ApiFailure("INTERNAL_ERROR", [f"Task failed but no error recorded: {task}"])
        raise ApiFailure(info[0], info[1:])
    return str(rec.get("result", ""))


def refs_in(result: str) -> list[str]:
    """Task results are XML-RPC values: `<value>OpaqueRef:…</value>` or an array of them."""
    return _REF.findall(result)


class ProgressBar:
    """xe's `--progress`: `\\r  45% | ######...` on stderr while the task runs."""

    def __init__(self, c: Ctx) -> None:
        self.printer = c.printer

    def __call__(self, rec: dict[str, Any]) -> None:
        progress = float(rec.get("progress") or 0.0)
        progress = min(max(progress, 0.0), 1.0)
        spinner = "|/-\\"[int(progress * 100) % 4]
        self.printer.stderr(f"\r {int(progress * 100):3d}% {spinner} {'#' * int(progress * 70)}")


def wait(c: Ctx, task: str) -> str:
    """Follow the task to its end (with a bar under --progress), destroy it, return its result."""
    bar = ProgressBar(c) if c.has("progress") else None
    try:
        rec = track(c.api, task, bar)
        if bar:
            c.printer.stderr("\n")
        return outcome(task, rec)
    finally:
        with contextlib.suppress(ApiFailure):
            c.api.call("task.destroy", task)


def run_async(c: Ctx, method: str, *args: Any) -> str:
    """Call `Async.<method>` and wait for it."""
    task = str(c.api.call(f"Async.{method}", *args))
    return wait(c, task)
