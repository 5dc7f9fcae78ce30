"""A disk's guest-visible bytes as a stream, read through qemu-nbd.

A raw export of a qcow2 VDI (or of an nfs:// or iscsi:// one) would otherwise be converted into a
temporary raw file first: a full extra write, and nothing reaches the client until it is done.
qemu-nbd opens the image the way a guest would (any format, the whole backing chain, read-only)
and serves it over a private Unix socket; this NBD client reads it in order, a few requests ahead.

Only the small part of the NBD protocol needed is spoken: fixed-newstyle negotiation with
NBD_OPT_EXPORT_NAME, then NBD_CMD_READ with simple replies (matched by handle: qemu-nbd may answer
out of order), and NBD_CMD_DISC.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import uuid as uuidlib
from collections.abc import AsyncIterator
from pathlib import Path

from pyxapi.drivers.storage import qemuimg

NBD_MAGIC = b"NBDMAGIC"
IHAVEOPT = b"IHAVEOPT"
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
OPT_EXPORT_NAME = 1
REQUEST = struct.Struct(">IHHQQI")  # magic, command flags, type, handle, offset, length
REQUEST_MAGIC = 0x25609513
REPLY = struct.Struct(">IIQ")  # magic, error, handle
REPLY_MAGIC = 0x67446698
CMD_READ = 0
CMD_DISC = 2
READ_SIZE = 4 << 20
DEPTH = 4  # reads in flight
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class NbdError(Exception):
    """qemu-nbd could not serve the image, or broke the protocol."""


class NbdReader:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.size = 0

    async def handshake(self) -> int:
        greeting = await self._reader.readexactly(18)
        if greeting[:8] != NBD_MAGIC or greeting[8:16] != IHAVEOPT:
            raise NbdError("not a fixed-newstyle NBD server")
        (server_flags,) = struct.unpack(">H", greeting[16:])
        no_zeroes = bool(server_flags & FLAG_NO_ZEROES)
        client_flags = FLAG_FIXED_NEWSTYLE | (FLAG_NO_ZEROES if no_zeroes else 0)
        self._writer.write(struct.pack(">I", client_flags) + IHAVEOPT + struct.pack(">II", OPT_EXPORT_NAME, 0))
        await self._writer.drain()
        self.size, _ = struct.unpack(">QH", await self._reader.readexactly(10))
        if not no_zeroes:
            await self._reader.readexactly(124)
        return self.size

    def _request(self, kind: int, handle: int, offset: int, length: int) -> None:
        self._writer.write(REQUEST.pack(REQUEST_MAGIC, 0, kind, handle, offset, length))

    async def chunks(self) -> AsyncIterator[bytes]:
        """The whole image, in order, READ_SIZE bytes at a time (the last piece may be shorter)."""
        next_offset = 0
        in_flight: dict[int, int] = {}  # handle (= offset) -> length
        arrived: dict[int, bytes] = {}
        emit = 0
        while emit < self.size:
            while len(in_flight) + len(arrived) < DEPTH and next_offset < self.size:
                length = min(READ_SIZE, self.size - next_offset)
                self._request(CMD_READ, next_offset, next_offset, length)
                in_flight[next_offset] = length
                next_offset += length
            await self._writer.drain()
            while emit not in arrived:
                magic, error, handle = REPLY.unpack(await self._reader.readexactly(REPLY.size))
                if magic != REPLY_MAGIC or handle not in in_flight:
                    raise NbdError("unexpected NBD reply")
                if error:
                    raise NbdError(f"reading at offset {handle} failed (NBD error {error})")
                arrived[handle] = await self._reader.readexactly(in_flight.pop(handle))
            data = arrived.pop(emit)
            emit += len(data)
            yield data

    async def disconnect(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            self._request(CMD_DISC, 0, 0, 0)
            await self._writer.drain()
        self._writer.close()


@contextlib.asynccontextmanager
async def serve(path: str, fmt: str, workdir: Path) -> AsyncIterator[NbdReader]:
    """qemu-nbd serving `path` read-only on a socket of its own, connected and negotiated; the
    process (ours, by pid) and its socket are gone when the block ends."""
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / f"{uuidlib.uuid4().hex[:12]}.nbd"
    proc = await asyncio.create_subprocess_exec(
        qemuimg.executable("qemu-nbd"),
        "--read-only",
        "--shared=1",
        f"--format={qemuimg.QEMU_FORMAT.get(fmt, fmt)}",
        f"--socket={sock}",
        path,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    writer: asyncio.StreamWriter | None = None
    try:
        reader, writer = await _connect(proc, sock)
        nbd = NbdReader(reader, writer)
        await nbd.handshake()
        yield nbd
        await nbd.disconnect()
    finally:
        if writer is not None:
            writer.close()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        try:
            # communicate(), not wait(): its stderr pipe is read to the end and closed as well
            await asyncio.wait_for(proc.communicate(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.communicate()
        sock.unlink(missing_ok=True)


async def _connect(proc: asyncio.subprocess.Process, sock: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT
    while True:
        if proc.returncode is not None:
            assert proc.stderr is not None
            raise NbdError(f"qemu-nbd exited: {(await proc.stderr.read()).decode(errors='replace').strip()}")
        try:
            return await asyncio.open_unix_connection(str(sock), limit=2 * READ_SIZE)
        except (FileNotFoundError, ConnectionRefusedError):
            if asyncio.get_running_loop().time() > deadline:
                raise NbdError("qemu-nbd did not open its socket in time") from None
            await asyncio.sleep(0.02)
