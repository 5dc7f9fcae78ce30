"""Tasks: the records behind Async.* calls, the coroutines doing the work, and their clean-up."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pyxapi.db.store import NULL_REF, Store
from pyxapi.model.errors import INTERNAL_ERROR, ApiError
from pyxapi.wire.marshal import now_datetime

log = logging.getLogger(__name__)

FINAL = ("success", "failure", "cancelled")


class TaskRunner:
    def __init__(self, store: Store, max_finished: int = 200, finished_ttl: float = 3840.0) -> None:
        self.store = store
        self.max_finished = max_finished
        self.finished_ttl = finished_ttl
        self.host_ref = NULL_REF
        self._running: dict[str, asyncio.Task[None]] = {}
        self._finished_at: dict[str, float] = {}

    def create(self, label: str, description: str = "", session_ref: str = NULL_REF) -> str:
        return self.store.create(
            "task",
            {
                "name_label": label,
                "name_description": description,
                "created": now_datetime(),
                "status": "pending",
                "progress": 0.0,
                "session": session_ref,
                "resident_on": self.host_ref,
                "allowed_operations": ["cancel"],
            },
        )

    def start(self, ref: str, work: Callable[[], Awaitable[str]]) -> None:
        """Run `work` in the background; it returns the task's encoded result."""
        self._running[ref] = asyncio.get_running_loop().create_task(self._run(ref, work), name=f"task {ref}")

    async def _run(self, ref: str, work: Callable[[], Awaitable[str]]) -> None:
        try:
            result = await work()
        except asyncio.CancelledError:
            self.finish(ref, "cancelled", error=["TASK_CANCELLED", ref])
        except ApiError as e:
            self.finish(ref, "failure", error=e.description)
        except Exception as e:  # a bug must still end the task, not leave it pending forever
            log.exception("task %s failed", ref)
            self.finish(ref, "failure", error=[INTERNAL_ERROR, f"{type(e).__name__}: {e}"])
        else:
            self.finish(ref, "success", result=result)
        finally:
            self._running.pop(ref, None)

    def finish(self, ref: str, status: str, result: str = "", error: list[str] | None = None) -> None:
        if not self.store.exists("task", ref):
            return  # destroyed while running (its session logged out)
        changes: dict[str, Any] = {
            "status": status,
            "finished": now_datetime(),
            "allowed_operations": [],
            "current_operations": {},
        }
        if status == "success":
            changes["progress"] = 1.0
            changes["result"] = result
        if error is not None:
            changes["error_info"] = error
        self.store.update("task", ref, changes)
        self._finished_at[ref] = time.time()
        self.collect()

    def set_progress(self, ref: str, progress: float) -> None:
        if self.store.exists("task", ref):
            self.store.set_field("task", ref, "progress", max(0.0, min(1.0, progress)))

    def cancel(self, ref: str) -> None:
        record = self.store.get("task", ref)
        if record["status"] != "pending":
            raise ApiError("OPERATION_NOT_ALLOWED", f"task {ref} is {record['status']}, not pending")
        running = self._running.get(ref)
        self.store.update("task", ref, {"status": "cancelling", "current_operations": {ref: "cancel"}})
        if running is not None:
            running.cancel()
        else:
            # Client-created task (task.create): nobody else will end it.
            self.finish(ref, "cancelled", error=["TASK_CANCELLED", ref])

    def is_running(self, ref: str) -> bool:
        return ref in self._running

    def destroy(self, ref: str) -> None:
        running = self._running.pop(ref, None)
        if running is not None:
            running.cancel()
        self._finished_at.pop(ref, None)
        self.store.destroy("task", ref)

    def collect(self) -> None:
        """Keep at most max_finished finished tasks, none older than finished_ttl (xapi's GC)."""
        now = time.time()
        expired = [r for r, t in self._finished_at.items() if now - t > self.finished_ttl]
        overflow = len(self._finished_at) - len(expired) - self.max_finished
        if overflow > 0:
            by_age = sorted((t, r) for r, t in self._finished_at.items() if r not in expired)
            expired += [r for _, r in by_age[:overflow]]
        for ref in expired:
            self._finished_at.pop(ref, None)
            if self.store.exists("task", ref):
                self.store.destroy("task", ref)

    async def shutdown(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)
