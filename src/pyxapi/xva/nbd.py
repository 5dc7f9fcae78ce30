"""A disk image's guest-visible bytes through qemu-nbd: read or written at any offset, whatever the
image format (qcow2 chains included), without converting the whole image first.

qemu-nbd serves one image on a private Unix socket with its format named explicitly (never probed:
a guest could have written a qcow2 header into a raw disk). The client below speaks the fixed-newstyle
handshake (NBD_OPT_GO) and simple replies: READ, WRITE, FLUSH and DISC are all an archive needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import struct
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from pyxapi.drivers.storage.base import BackendFailure, SMError

NBD_MAGIC = b"NBDMAGIC"
IHAVEOPT = b"IHAVEOPT"
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2
OPT_GO = 7
REP_ACK = 1
REP_INFO = 3
INFO_EXPORT = 0
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
START_TIMEOUT = 30.0
MAX_REQUEST = 32 << 20  # qemu-nbd's own limit


class NbdError(BackendFailure):
    def __init__(self, detail: str) -> None:
        super().__init__(SMError.EIO, detail)


class NbdClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._cookie = 0
        self.size = 0

    @classmethod
    async def connect(cls, socket_path: str) -> NbdClient:
        reader, writer = await asyncio.open_unix_connection(socket_path, limit=MAX_REQUEST)
        client = cls(reader, writer)
        try:
            await client._handshake()
        except BaseException:
            writer.close()
            raise
        return client

    async def _handshake(self) -> None:
        head = await self._reader.readexactly(18)
        if head[:8] != NBD_MAGIC or head[8:16] != IHAVEOPT:
            raise NbdError("the NBD server does not speak the newstyle protocol")
        self._writer.write(struct.pack(">I", FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        name = b""
        data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        self._writer.write(IHAVEOPT + struct.pack(">II", OPT_GO, len(data)) + data)
        await self._writer.drain()
        while True:
            magic, _opt, reply, length = struct.unpack(">QIII", await self._reader.readexactly(20))
            payload = await self._reader.readexactly(length) if length else b""
            if magic != OPT_REPLY_MAGIC:
                raise NbdError("bad NBD option reply")
            if reply == REP_ACK:
                break
            if reply & 0x80000000:
                raise NbdError(f"NBD server refused the export: {payload[4:].decode(errors='replace')}")
            if reply == REP_INFO and len(payload) >= 12 and struct.unpack(">H", payload[:2])[0] == INFO_EXPORT:
                self.size = struct.unpack(">Q", payload[2:10])[0]

    async def _request(self, cmd: int, offset: int, length: int, data: bytes = b"") -> bytes:
        self._cookie += 1
        self._writer.write(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, cmd, self._cookie, offset, length) + data)
        await self._writer.drain()
        magic, error, cookie = struct.unpack(">IIQ", await self._reader.readexactly(16))
        if magic != SIMPLE_REPLY_MAGIC or cookie != self._cookie:
            raise NbdError("bad NBD reply")
        if error:
            raise NbdError(f"NBD command {cmd} at {offset} failed: {os.strerror(error)}")
        return await self._reader.readexactly(length) if cmd == CMD_READ else b""

    async def read(self, offset: int, length: int) -> bytes:
        return await self._request(CMD_READ, offset, length)

    async def write(self, offset: int, data: bytes) -> None:
        await self._request(CMD_WRITE, offset, len(data), data)

    async def flush(self) -> None:
        await self._request(CMD_FLUSH, 0, 0)

    async def close(self) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            self._cookie += 1
            self._writer.write(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, self._cookie, 0, 0))
            await self._writer.drain()
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()


@contextlib.asynccontextmanager
async def served(path: str, qemu_format: str, *, writable: bool, workdir: Path) -> AsyncIterator[NbdClient]:
    """qemu-nbd serving `path` (qemu's format name: raw, qcow2, vpc, vmdk) while the block runs."""
    exe = shutil.which("qemu-nbd")
    if exe is None:
        raise BackendFailure(SMError.SM_GENERAL, "qemu-nbd not found: install the Debian package qemu-utils")
    workdir.mkdir(parents=True, exist_ok=True)
    sockdir = tempfile.mkdtemp(prefix="nbd-", dir=workdir)
    sock = os.path.join(sockdir, "s")
    args = [exe, "--format", qemu_format, "--socket", sock, "--shared", "1", "--cache", "writeback", "--aio", "threads"]
    if not writable:
        args.append("--read-only")
    proc = await asyncio.create_subprocess_exec(
        *args,
        path,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    client: NbdClient | None = None
    try:
        client = await _connect_when_ready(proc, sock)
        yield client
        if writable:
            await client.flush()
    finally:
        if client is not None:
            await client.close()
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        shutil.rmtree(sockdir, ignore_errors=True)


async def _connect_when_ready(proc: asyncio.subprocess.Process, sock: str) -> NbdClient:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while True:
        if proc.returncode is not None:
            err = await proc.stderr.read() if proc.stderr else b""
            raise NbdError(f"qemu-nbd exited: {err.decode(errors='replace').strip()}")
        if os.path.exists(sock):
            try:
                return await NbdClient.connect(sock)
            except (ConnectionError, FileNotFoundError, asyncio.IncompleteReadError):
                pass
        if loop.time() > deadline:
            raise NbdError("qemu-nbd did not start")
        await asyncio.sleep(0.02)
