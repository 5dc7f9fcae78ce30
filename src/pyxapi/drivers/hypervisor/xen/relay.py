"""Unix-socket relays for Xen consoles, so they look like the QEMU driver's console sockets.

* The PV console is a pty that xenconsoled serves. The relay keeps the pty open and drains it
  all the time (an unread pty would fill up and stall the guest's console writes); what the
  guest prints is passed to every connected client, and what clients send goes to the guest.
  Output while nobody is connected is dropped, as QEMU's socket chardev does.
* An HVM guest's VNC server is a TCP port of its device model; the relay forwards each
  connection to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import termios
import tty
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


class PtyRelay:
    def __init__(self, socket_path: Path, pty_path: Callable[[], str | None]) -> None:
        self.socket_path = socket_path
        self._pty_path = pty_path  # asked again when the pty goes away (reboot, resume: new domain)
        self._fd: int | None = None
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.socket_path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._client, str(self.socket_path))
        os.chmod(self.socket_path, 0o600)
        self.reopen()

    def reopen(self) -> None:
        """(Re)attach to the domain's current pty."""
        self._close_pty()
        path = self._pty_path()
        if not path or self._loop is None:
            return
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as e:
            log.warning("console pty %s: %s", path, e)
            return
        with contextlib.suppress(termios.error):
            tty.setraw(fd)  # no echo, no line editing: bytes pass through untouched
        self._fd = fd
        self._loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the domain (and its pty) went away
            self._close_pty()
            return
        for writer in list(self._clients):
            if writer.transport.get_write_buffer_size() > (1 << 20):
                continue  # a client that stopped reading loses output rather than stalling the guest
            writer.write(data)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._fd is None:
            self.reopen()
        self._clients.add(writer)
        try:
            while data := await reader.read(4096):
                fd = self._fd
                if fd is None:
                    self.reopen()
                    fd = self._fd
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.write(fd, data)
        except (ConnectionError, OSError):
            pass
        finally:
            self._clients.discard(writer)
            writer.close()

    def _close_pty(self) -> None:
        if self._fd is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._fd)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    async def close(self) -> None:
        self._close_pty()
        if self._server is not None:
            self._server.close()
            for writer in list(self._clients):
                writer.close()
            self._clients.clear()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        self.socket_path.unlink(missing_ok=True)


class TcpRelay:
    """Each connection to ``socket_path`` is forwarded to 127.0.0.1:port (HVM VNC)."""

    def __init__(self, socket_path: Path, port: Callable[[], int | None]) -> None:
        self.socket_path = socket_path
        self._port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._client, str(self.socket_path))
        os.chmod(self.socket_path, 0o600)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = self._port()
        if port is None:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        self.socket_path.unlink(missing_ok=True)
