"""A QMP monitor connection (qemu.qmp) with events pushed to a callback and awaitable event waits.

The connection doubles as the exit detector: QEMU's socket hits EOF the moment the process dies
(even on SIGKILL), and the events queued before EOF (SHUTDOWN, GUEST_PANICKED) are dispatched
before ``closed`` is set, so the exit can be classified.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener, ExecInterruptedError, QMPClient, QMPError
from qemu.qmp.protocol import Runstate
from qemu.qmp.qmp_client import ExecuteError

from pyxapi.drivers.hypervisor.base import HypervisorError

log = logging.getLogger(__name__)

EventHandler = Callable[[str, dict[str, Any]], None]
EventPredicate = Callable[[str, dict[str, Any]], bool]


class MonitorClosed(HypervisorError):
    """The QMP connection is gone (QEMU exited, or the monitor was closed)."""


class QmpCommandError(HypervisorError):
    def __init__(self, command: str, error_class: str, desc: str) -> None:
        self.command = command
        self.error_class = error_class
        self.desc = desc
        super().__init__(f"QMP {command}: {error_class}: {desc}")


class _Dispatcher(EventListener):
    """Handles each event inside qemu.qmp's reader task, so events are always processed in order
    and before the EOF that follows them."""

    def __init__(self, callback: Callable[[Any], None]) -> None:
        super().__init__()
        self._callback = callback

    async def put(self, event: Any) -> None:
        self._callback(event)


class Monitor:
    def __init__(self, path: Path, name: str, on_event: EventHandler) -> None:
        self.path = path
        self._client = QMPClient(name)
        self._on_event = on_event
        self._listener = _Dispatcher(self._dispatch)
        self._waiters: list[tuple[EventPredicate, asyncio.Future[dict[str, Any]]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._dc_lock = asyncio.Lock()
        self.closed = asyncio.Event()

    async def connect(self, timeout: float = 10.0) -> None:
        self._client.register_listener(self._listener)
        try:
            async with asyncio.timeout(timeout):
                await self._client.connect(str(self.path))
        except (QMPError, OSError, TimeoutError) as e:
            with contextlib.suppress(Exception):
                await self._client.disconnect()
            raise MonitorClosed(f"cannot connect to QMP at {self.path}: {e}") from e
        self._tasks = [asyncio.create_task(self._watch())]

    async def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                      timeout: float = 30.0) -> Any:
        if self.closed.is_set():
            raise MonitorClosed(f"QMP connection closed ({command})")
        try:
            async with asyncio.timeout(timeout):
                return await self._client.execute(command, arguments)
        except ExecuteError as e:
            raise QmpCommandError(command, e.error_class, str(e)) from e
        except (ExecInterruptedError, QMPError, EOFError, OSError) as e:
            raise MonitorClosed(f"QMP connection lost during {command}: {e}") from e
        except TimeoutError as e:
            raise HypervisorError(f"QMP {command} did not answer within {timeout:g}s") from e

    def expect(self, predicate: EventPredicate) -> asyncio.Future[dict[str, Any]]:
        """Register interest in an event *before* triggering it; await the result with wait()."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if self.closed.is_set():
            fut.set_exception(MonitorClosed("QMP connection closed"))
        else:
            self._waiters.append((predicate, fut))
        return fut

    async def wait(self, fut: asyncio.Future[dict[str, Any]], timeout: float) -> dict[str, Any] | None:
        """The event's data, or None on timeout (the future is then dropped)."""
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(fut)
        except TimeoutError:
            self._waiters = [(p, f) for p, f in self._waiters if f is not fut]
            fut.cancel()
            return None

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await self._disconnect()
        self._finish()

    # ------------------------------------------------------------ internals

    def _dispatch(self, msg: Any) -> None:
        name = str(msg.get("event", ""))
        data = dict(msg.get("data") or {})
        try:
            self._on_event(name, data)
        except Exception:
            log.exception("QMP event handler failed for %s", name)
        keep = []
        for pred, fut in self._waiters:
            if fut.done():
                continue
            if pred(name, data):
                fut.set_result(data)
            else:
                keep.append((pred, fut))
        self._waiters = keep

    async def _watch(self) -> None:
        while self._client.runstate is Runstate.RUNNING:
            await self._client.runstate_changed()
        await self._disconnect()
        self._finish()

    async def _disconnect(self) -> None:
        async with self._dc_lock:
            if self._client.runstate in (Runstate.RUNNING, Runstate.DISCONNECTING):
                with contextlib.suppress(Exception):
                    await self._client.disconnect()

    def _finish(self) -> None:
        if self.closed.is_set():
            return
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(MonitorClosed("QMP connection closed"))
        self._waiters = []
        self.closed.set()
