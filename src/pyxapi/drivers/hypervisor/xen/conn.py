"""The libvirt side of the Xen driver: one connection to ``xen:///system`` (libvirt's libxl driver),
its event loop thread, and blocking calls moved off the asyncio loop.

libvirt-python's calls block (libxl waits for the guest, hotplug scripts, xenstore), so every call
runs off the asyncio loop, in one worker thread per connection: calls on a connection are
serialised, as libxl serialises most domain operations anyway. Domain lifecycle events arrive on
libvirt's own event loop, which is process-wide in libvirt: it is started once per process and
runs in a daemon thread; the callbacks hand each event to the asyncio loop of the driver that
registered them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pyxapi.drivers.hypervisor.base import HypervisorUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
URI = "xen:///system"

# libvirt's default event loop is one per process (virEventRegisterDefaultImpl may be called
# only once and must precede the first connection), so its start is guarded process-wide.
_event_loop_lock = threading.Lock()
_event_loop_started = False


def import_libvirt() -> Any:
    try:
        import libvirt
    except ImportError:
        raise HypervisorUnavailable("libvirt (Python binding)", "python3-libvirt") from None
    return libvirt


def _ensure_event_loop(libvirt: Any) -> None:
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except Exception:
                    log.exception("libvirt event loop iteration failed")

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    uuid: str
    domid: int
    event: int  # VIR_DOMAIN_EVENT_*
    detail: int  # VIR_DOMAIN_EVENT_<event>_*


class LibvirtConnection:
    """A reconnecting connection plus a lifecycle-event subscription delivered on ``loop``."""

    def __init__(self, uri: str = URI) -> None:
        self.uri = uri
        self.libvirt = import_libvirt()
        self._conn: Any = None
        self._callback_id: int | None = None
        self._on_event: Callable[[LifecycleEvent], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="libvirt")

    # ------------------------------------------------------------ connection

    def open_connection(self) -> Any:
        """The live connection, reopened (with the event subscription) if libvirtd restarted."""
        with self._lock:
            if self._conn is not None and self._conn.isAlive():
                return self._conn
            _ensure_event_loop(self.libvirt)
            try:
                conn = self.libvirt.open(self.uri)
            except self.libvirt.libvirtError as e:
                raise HypervisorUnavailable(f"libvirt at {self.uri} ({e})", "libvirt-daemon-driver-xen") from None
            self._conn = conn
            self._callback_id = None
            if self._on_event is not None:
                self._register(conn)
            return conn

    def _register(self, conn: Any) -> None:
        lv = self.libvirt

        def callback(_conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
            try:
                ev = LifecycleEvent(dom.UUIDString(), dom.ID(), event, detail)
            except lv.libvirtError:
                return
            loop, handler = self._loop, self._on_event
            if loop is not None and handler is not None and not loop.is_closed():
                loop.call_soon_threadsafe(handler, ev)

        self._callback_id = conn.domainEventRegisterAny(None, lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE, callback, None)

    def subscribe(self, loop: asyncio.AbstractEventLoop, handler: Callable[[LifecycleEvent], None]) -> None:
        self._loop, self._on_event = loop, handler
        conn = self.open_connection()
        with self._lock:
            if self._callback_id is None:
                self._register(conn)

    def close(self) -> None:
        with self._lock:
            self._on_event = None
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                if self._callback_id is not None:
                    conn.domainEventDeregisterAny(self._callback_id)
                conn.close()
            except self.libvirt.libvirtError as e:
                log.debug("closing %s: %s", self.uri, e)
            self._callback_id = None

    def stop_worker(self) -> None:
        self._worker.shutdown(wait=False)

    # ------------------------------------------------------------ calls

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking libvirt call (given the connection as first argument) in a thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, lambda: self._call_reconnecting(fn, *args))

    def _call_reconnecting(self, fn: Callable[..., T], *args: Any) -> T:
        conn = self.open_connection()
        try:
            return fn(conn, *args)
        except self.libvirt.libvirtError:
            if conn.isAlive():
                raise
            # libvirtd went away (restarted by its supervisor): once more on a new connection.
            log.warning("connection to %s lost; reconnecting", self.uri)
            return fn(self.open_connection(), *args)

    async def domain_call(self, uuid: str, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(domain, *args)`` on the domain with this uuid, in a thread."""

        def run(conn: Any) -> T:
            return fn(conn.lookupByUUIDString(uuid), *args)

        return await self.call(run)

    def is_no_domain(self, error: BaseException) -> bool:
        lv = self.libvirt
        return isinstance(error, lv.libvirtError) and error.get_error_code() == lv.VIR_ERR_NO_DOMAIN

    def lookup(self, conn: Any, uuid: str) -> Any | None:
        try:
            return conn.lookupByUUIDString(uuid)
        except self.libvirt.libvirtError as e:
            if e.get_error_code() == self.libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise
