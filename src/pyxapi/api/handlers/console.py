"""The console endpoint: `CONNECT /console?…` (xapi's raw tunnel) and `GET /console` upgraded to a
WebSocket (browser noVNC clients), both relaying bytes to the VM's VNC or serial socket.

Why CONNECT is served below aiohttp: aiohttp's request parser reads every CONNECT target in
authority form (RFC 9112 §3.2.3, `host:port`), while xapi's clients (XenCenter, xe, Xen Orchestra)
send a path: `CONNECT /console?ref=OpaqueRef:… HTTP/1.0`. aiohttp then answers 400 before any
handler runs (the `:` of an OpaqueRef parses as a port) or routes an empty path to 404. So the
connection protocol factory is wrapped: a connection whose first bytes are `CONNECT /` is served
here on asyncio streams; any other connection is handed, bytes and all, to aiohttp's own protocol,
which never notices. The WebSocket side is an ordinary aiohttp route.

Access needs a valid session (`session_id` cookie or query parameter, as xapi reads them) or HTTP
Basic credentials, and a role allowed the `connect_console` HTTP action; a refused request gets
401/403/404 and nothing is relayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

from aiohttp import WSCloseCode, WSMsgType, web

from pyxapi.api.handlers.http_auth import (
    Caller,
    Credentials,
    Refusal,
    action_roles,
    authorize,
    parse_cookies,
    request_credentials,
)
from pyxapi.context import Context
from pyxapi.model.errors import ApiError
from pyxapi.ops.console import (
    CONSOLE_PATH,
    VT100,
    ConsoleTarget,
    console_target,
    find_console,
    is_control_domain_console,
)

log = logging.getLogger(__name__)

CONNECT_PREFIX = b"CONNECT /"  # path form only: authority-form CONNECT stays aiohttp's business
CHUNK = 64 * 1024
HEAD_LIMIT = 16 * 1024  # longest request or header line
MAX_HEADER_LINES = 100
HEAD_TIMEOUT = 30.0  # a client that never finishes its request head gets dropped
OPEN_TIMEOUT = 10.0
LINGER = 5.0  # after one direction ends, how long the other may still drain
CONNECT_ACTION = "connect_console"
CONTROL_DOMAIN_ROLES = ("pool-admin",)  # xapi's host_console sub-permission
OK_RESPONSE = b"HTTP/1.1 200 OK\r\n\r\n"


@dataclass(slots=True)
class Tunnel:
    target: ConsoleTarget
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


class ConsoleEndpoint:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.roles = action_roles(ctx, CONNECT_ACTION)
        self._serial_in_use: set[str] = set()  # QEMU's serial socket serves one client at a time
        self._connect_tasks: set[asyncio.Task[None]] = set()
        self._websockets: set[web.WebSocketResponse] = set()
        self._undecided: weakref.WeakSet[FirstBytes] = weakref.WeakSet()

    # ---- access -----------------------------------------------------------------------------
    async def authorize(self, creds: Credentials) -> Caller:
        return await authorize(self.ctx, creds, self.roles, "connect to consoles")

    async def open(self, creds: Credentials) -> Tunnel:
        """Check everything, then connect to the console's socket; Refusal on any failure."""
        caller = await self.authorize(creds)
        ref, uuid = creds.query.get("ref"), creds.query.get("uuid")
        if not ref and not uuid:
            raise Refusal(400, "the request names no console (ref= or uuid=)")
        store = self.ctx.store
        try:
            console = find_console(store, ref, uuid)
            if is_control_domain_console(store, console) and not caller.may(CONTROL_DOMAIN_ROLES):
                raise Refusal(403, "the host console needs the pool-admin role")
            target = await console_target(self.ctx, console)
        except ApiError as e:
            raise Refusal(404, " ".join(e.description)) from None
        if target.protocol == VT100:
            if target.console in self._serial_in_use:
                raise Refusal(503, "the serial console is in use by another client")
            self._serial_in_use.add(target.console)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(target.socket_path), OPEN_TIMEOUT)
        except (OSError, TimeoutError) as e:
            self.release(target)
            raise Refusal(503, f"the console does not answer: {e}") from None
        log.info("console %s (%s) of VM %s opened by %s", target.console, target.protocol, target.vm, caller.user)
        return Tunnel(target, reader, writer)

    def release(self, target: ConsoleTarget) -> None:
        self._serial_in_use.discard(target.console)

    # ---- CONNECT ----------------------------------------------------------------------------
    def tunnel_protocol(self) -> asyncio.Protocol:
        """The protocol a `CONNECT /` connection continues with: asyncio streams, served below."""
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=HEAD_LIMIT), self._start_connect)

    def _start_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self.serve_connect(reader, writer))
        self._connect_tasks.add(task)  # a strong reference, and what shutdown cancels
        task.add_done_callback(self._connect_tasks.discard)

    async def serve_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(HEAD_TIMEOUT):
                    creds = await read_connect_head(reader)
                tunnel = await self.open(creds)
            except Refusal as r:
                writer.write(r.raw())
                await writer.drain()
                return
            try:
                writer.write(OK_RESPONSE)
                await relay(_pipe(reader, tunnel.writer), _pipe(tunnel.reader, writer))
            finally:
                tunnel.writer.close()
                self.release(tunnel.target)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
            log.debug("console tunnel ended: %r", e)
        finally:
            writer.close()

    # ---- WebSocket --------------------------------------------------------------------------
    async def websocket(self, request: web.Request) -> web.StreamResponse:
        creds = request_credentials(request)
        ws = web.WebSocketResponse(protocols=("binary",))
        try:
            caller = await self.authorize(creds)
            origin = request.headers.get("Origin")
            if caller.by_cookie and origin and urlsplit(origin).netloc != request.host:
                # A page on another site could ride the browser's cookie: it must name the session.
                raise Refusal(403, "a cross-site console request must pass session_id explicitly")
            if not ws.can_prepare(request):
                raise Refusal(400, "GET /console expects a WebSocket upgrade (or use CONNECT)")
            tunnel = await self.open(creds)
        except Refusal as r:
            return r.response()
        try:
            await ws.prepare(request)
            self._websockets.add(ws)
            await relay(_ws_to_stream(ws, tunnel.writer), _stream_to_ws(tunnel.reader, ws))
        finally:
            self._websockets.discard(ws)
            tunnel.writer.close()
            self.release(tunnel.target)
            if ws.prepared:  # prepare() itself may have failed: the client left
                await ws.close()
        return ws

    # ---- life -------------------------------------------------------------------------------
    def watch(self, conn: FirstBytes) -> None:
        self._undecided.add(conn)

    async def shutdown(self, app: web.Application) -> None:
        """Close every console connection, so stopping the daemon never waits on a viewer."""
        for conn in list(self._undecided):
            conn.close()
        for ws in list(self._websockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
        for task in list(self._connect_tasks):
            task.cancel()
        await asyncio.gather(*self._connect_tasks, return_exceptions=True)


# ---- the request head of a CONNECT --------------------------------------------------------------
async def read_connect_head(reader: asyncio.StreamReader) -> Credentials:
    """Parse `CONNECT /console?… HTTP/1.x` and its headers into the credentials and query."""
    try:
        request_line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or parts[0] != "CONNECT" or not parts[2].startswith("HTTP/1."):
            raise Refusal(400, "malformed request line")
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADER_LINES):
            raw = await reader.readline()
            if not raw.endswith(b"\n"):
                raise Refusal(400, "the request head is incomplete")
            line = raw.decode("latin-1").rstrip("\r\n")
            if not line:
                break
            name, sep, value = line.partition(":")
            if not sep:
                raise Refusal(400, "malformed header line")
            headers[name.strip().lower()] = value.strip()
        else:
            raise Refusal(431, "too many header lines")
    except ValueError:  # a line longer than the reader's limit
        raise Refusal(431, "request head too large") from None
    target = urlsplit(parts[1])
    if target.path != CONSOLE_PATH:
        raise Refusal(404, f"nothing to CONNECT to at {target.path}")
    query: dict[str, str] = {}
    for key, value in parse_qsl(target.query, keep_blank_values=True):
        query.setdefault(key, value)
    return Credentials(query, parse_cookies(headers.get("cookie", "")), headers.get("authorization"))


# ---- relaying ------------------------------------------------------------------------------------
async def relay(one_way: Awaitable[None], other_way: Awaitable[None]) -> None:
    """Run both directions; when one ends, give the other LINGER seconds to drain, then stop it."""
    tasks = {asyncio.ensure_future(one_way), asyncio.ensure_future(other_way)}
    try:
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            await asyncio.wait(pending, timeout=LINGER)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _end_of_stream(dst: asyncio.StreamWriter) -> None:
    """Pass the end on as a half-close where the transport can (not TLS), so the peer finishes."""
    with contextlib.suppress(OSError, RuntimeError):
        if dst.can_write_eof() and not dst.is_closing():
            dst.write_eof()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()
        _end_of_stream(dst)


async def _ws_to_stream(ws: web.WebSocketResponse, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                dst.write(msg.data)
                await dst.drain()
            elif msg.type == WSMsgType.TEXT:
                # websockify's old "base64" text framing is not offered; say so rather than guess
                await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=b"binary frames only")
                break
        _end_of_stream(dst)


async def _stream_to_ws(src: asyncio.StreamReader, ws: web.WebSocketResponse) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await src.read(CHUNK):
            await ws.send_bytes(data)
    await ws.close()


# ---- taking CONNECT connections before aiohttp's parser sees them ------------------------------
class FirstBytes(asyncio.Protocol):
    """A new connection's first protocol: its first bytes decide who serves it, then it steps aside."""

    def __init__(self, http_protocol: Callable[[], Any], endpoint: ConsoleEndpoint) -> None:
        self._http_protocol = http_protocol
        self._endpoint = endpoint
        self._transport: asyncio.Transport | None = None
        self._head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._endpoint.watch(self)

    def data_received(self, data: bytes) -> None:
        self._head += data
        if len(self._head) < len(CONNECT_PREFIX) and CONNECT_PREFIX.startswith(self._head):
            return  # not enough to tell yet
        if self._head.startswith(CONNECT_PREFIX):
            protocol: asyncio.Protocol = self._endpoint.tunnel_protocol()
        else:
            protocol = self._http_protocol()
        transport, head = self._transport, self._head
        self._transport, self._head = None, b""
        assert transport is not None
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(head)

    def eof_received(self) -> bool | None:
        return None  # the peer left before saying anything: close

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class TunnelingServer:
    """aiohttp's Server as the runner sees it (shutdown, connections…), except that a new
    connection starts with FirstBytes instead of aiohttp's request handler."""

    def __init__(self, http: web.Server, endpoint: ConsoleEndpoint) -> None:
        self._http = http
        self._endpoint = endpoint

    def __call__(self) -> asyncio.Protocol:
        return FirstBytes(self._http, self._endpoint)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._http, name)


ENDPOINT_KEY = web.AppKey("console_endpoint", ConsoleEndpoint)

with warnings.catch_warnings():
    # aiohttp discourages subclassing Application; this subclass only overrides the hook that
    # makes the connection protocol factory, which is the one place a CONNECT can be caught.
    warnings.simplefilter("ignore", DeprecationWarning)

    class TunnelingApplication(web.Application):
        """An Application whose connections go through FirstBytes once a console endpoint is installed."""

        def _make_handler(self, **kwargs: Any) -> web.Server:
            server = super()._make_handler(**kwargs)
            endpoint = self.get(ENDPOINT_KEY)
            return server if endpoint is None else cast(web.Server, TunnelingServer(server, endpoint))


def install(app: web.Application, ctx: Context) -> ConsoleEndpoint:
    """Serve /console on `app`: the WebSocket route here; CONNECT when `app` is a TunnelingApplication."""
    endpoint = ConsoleEndpoint(ctx)
    app[ENDPOINT_KEY] = endpoint
    app.router.add_get(CONSOLE_PATH, endpoint.websocket, allow_head=False)
    app.on_shutdown.append(endpoint.shutdown)
    return endpoint
