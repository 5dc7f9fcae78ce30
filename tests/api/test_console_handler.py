"""The console endpoint in process: console objects following the power state (simulator), and
CONNECT / WebSocket tunnels relayed to small fake RFB and serial servers on Unix sockets."""

from __future__ import annotations

import asyncio
import base64
import shutil
import ssl
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from pyxapi.api.app import make_app
from pyxapi.api.dispatch import Dispatcher
from pyxapi.auth import AccountFile
from pyxapi.context import Config, Context
from pyxapi.drivers.hypervisor.base import ConsoleInfo
from pyxapi.main import build, ensure_root_account
from pyxapi.ops import console as console_ops
from pyxapi.ops.vm_monitor import VMMonitor
from pyxapi.security import ensure_tls_certificate, ssl_context

MIB = 1 << 20
RFB_BANNER = b"RFB 003.008\n"
SECURITY_NONE = b"\x01\x01"  # one security type offered: None
READER = ("reader", "reader-pw")
ROOT_PW = "root-pw"
WAIT = 10.0  # every wait in this file is bounded


@dataclass
class FakeServer:
    """A Unix-socket server standing in for QEMU's VNC (speaks the start of RFB) or serial port (echoes)."""

    path: str
    rfb: bool
    connections: int = 0
    server: asyncio.AbstractServer | None = None
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            if self.rfb:
                writer.write(RFB_BANNER)
                await writer.drain()
                if await reader.readexactly(len(RFB_BANNER)) != RFB_BANNER:
                    return
                writer.write(SECURITY_NONE)
                await writer.drain()
            while data := await reader.read(4096):  # then echo, to show bytes flow both ways
                writer.write(data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()


@dataclass
class Env:
    ctx: Context
    dispatcher: Dispatcher
    runner: web.AppRunner
    port: int
    tls_port: int
    rfb: FakeServer
    serial: FakeServer
    session: str
    vm: str = ""
    clients: list[asyncio.StreamWriter] = field(default_factory=list)  # closed at teardown

    async def call(self, method: str, *args: Any) -> Any:
        return await self.dispatcher.call(method, [self.session, *args], "json")

    async def connect(
        self, target: str, headers: tuple[str, ...] = (), *, tls: bool = False, first: bytes = b""
    ) -> Answer:
        """Send `CONNECT target` (and `first`, bytes a client may send before the answer comes)."""
        ctx = None
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        async with asyncio.timeout(WAIT):
            reader, writer = await self.open(tls_ctx=ctx)
            lines = "".join(f"{h}\r\n" for h in headers)
            writer.write(f"CONNECT {target} HTTP/1.0\r\n{lines}\r\n".encode() + first)
            await writer.drain()
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        return Answer(int(head.split(" ", 2)[1]), head, reader, writer)

    async def open(self, tls_ctx: ssl.SSLContext | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        port = self.tls_port if tls_ctx else self.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls_ctx)
        self.clients.append(writer)
        return reader, writer

    async def consoles(self, vm: str | None = None) -> dict[str, dict[str, Any]]:
        refs = await self.call("VM.get_consoles", vm or self.vm)
        return {(rec := await self.call("console.get_record", r))["protocol"]: {**rec, "ref": r} for r in refs}


@pytest.fixture
async def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    sockets = Path(tempfile.mkdtemp(prefix="pyxc-", dir="/tmp"))  # short: Unix socket paths are limited
    accounts = AccountFile(tmp_path / "accounts.json")
    monkeypatch.setenv("PYXAPI_ROOT_PASSWORD", ROOT_PW)
    ensure_root_account(accounts)
    accounts.set_password(*READER, "read-only")
    ctx, dispatcher = build(Config(data_dir=tmp_path, hypervisor="sim", port=8080, tls_port=8443))
    rfb, serial = FakeServer(str(sockets / "vnc"), True), FakeServer(str(sockets / "serial"), False)
    await rfb.start()
    await serial.start()
    driver = ctx.services["hypervisor"]
    sim_console = driver.console

    async def console(uuid: str) -> ConsoleInfo:
        await sim_console(uuid)  # keeps the simulator's "no such domain" behaviour
        return ConsoleInfo(rfb.path, serial.path, None)

    monkeypatch.setattr(driver, "console", console)
    runner = web.AppRunner(make_app(dispatcher, 1 << 20), access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    cert, key = ensure_tls_certificate(tmp_path, "localhost", ["127.0.0.1"])
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context(cert, key)).start()
    (_, port), (_, tls_port) = runner.addresses[0][:2], runner.addresses[1][:2]
    e = Env(ctx, dispatcher, runner, port, tls_port, rfb, serial, ctx.sessions.open("root", "pool-admin"))
    e.vm = await new_running_vm(e)
    yield e
    for w in e.clients:
        w.close()
    if runner.server is not None:  # a test may have shut it down already
        await runner.cleanup()
    await rfb.stop()
    await serial.stop()
    shutil.rmtree(sockets, ignore_errors=True)


async def new_running_vm(e: Env, name: str = "c") -> str:
    vm = str(
        await e.call(
            "VM.create",
            {
                "name_label": name,
                "memory_static_max": 256 * MIB,
                "memory_dynamic_max": 256 * MIB,
                "memory_dynamic_min": 128 * MIB,
                "memory_static_min": 64 * MIB,
                "VCPUs_max": 1,
                "VCPUs_at_startup": 1,
            },
        )
    )
    await e.call("VM.start", vm, False, False)
    return vm


@dataclass
class Answer:
    status: int
    head: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def read(self, n: int) -> bytes:
        async with asyncio.timeout(WAIT):
            return await self.reader.readexactly(n)

    async def at_eof(self) -> bool:
        async with asyncio.timeout(WAIT):
            return await self.reader.read() == b""


def basic(user: str, password: str) -> str:
    return "Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def rfb_handshake(a: Answer) -> None:
    assert await a.read(len(RFB_BANNER)) == RFB_BANNER
    a.writer.write(RFB_BANNER)
    await a.writer.drain()
    assert await a.read(2) == SECURITY_NONE


# ---- console objects ----------------------------------------------------------------------------
async def test_consoles_follow_the_power_state(env: Env) -> None:
    consoles = await env.consoles()
    assert set(consoles) == {"rfb", "vt100"}
    for rec in consoles.values():
        assert rec["VM"] == env.vm
        assert rec["location"] == f"https://127.0.0.1:8443/console?ref={rec['ref']}"
    # re-adoption after a daemon restart runs record_running again: nothing is duplicated
    driver = env.ctx.services["hypervisor"]
    await driver.close()  # the daemon stops; the domain keeps running
    await VMMonitor(env.ctx, driver).reconcile()
    assert await env.consoles() == consoles
    await env.call("VM.pause", env.vm)
    assert await env.consoles() == consoles
    await env.call("VM.unpause", env.vm)
    await env.call("VM.suspend", env.vm)
    assert await env.consoles() == {}
    assert env.ctx.store.count("console") == 0
    await env.call("VM.resume", env.vm, False, False)
    assert set(await env.consoles()) == {"rfb", "vt100"}
    await env.call("VM.hard_shutdown", env.vm)
    assert await env.consoles() == {} and env.ctx.store.count("console") == 0


async def test_location_names_a_reachable_address_and_port(env: Env) -> None:
    ctx, ref = env.ctx, "OpaqueRef:x"
    ctx.store.set_field("host", ctx.host_ref, "address", "192.0.2.7")
    ctx.config.tls_port = 443
    assert console_ops.location(ctx, ref) == f"https://127.0.0.1/console?ref={ref}"  # bound to loopback only
    ctx.config.host = "0.0.0.0"
    assert console_ops.location(ctx, ref) == f"https://192.0.2.7/console?ref={ref}"  # the host's address
    ctx.config.tls_port = None
    assert console_ops.location(ctx, ref) == f"http://192.0.2.7:8080/console?ref={ref}"
    ctx.config.host, ctx.config.tls_port = "::", 8443
    ctx.store.set_field("host", ctx.host_ref, "address", "2001:db8::7")
    assert console_ops.location(ctx, ref) == f"https://[2001:db8::7]:8443/console?ref={ref}"


# ---- CONNECT ------------------------------------------------------------------------------------
async def test_connect_with_a_session_relays_rfb(env: Env) -> None:
    rfb = (await env.consoles())["rfb"]["ref"]
    a = await env.connect(f"/console?ref={rfb}&session_id={env.session}")
    assert a.head.startswith("HTTP/1.1 200 OK\r\n")
    await rfb_handshake(a)
    a.writer.write(b"ping")
    await a.writer.drain()
    assert await a.read(4) == b"ping"
    a.writer.close()


async def test_connect_accepts_cookie_basic_uuid_and_vm_ref(env: Env) -> None:
    consoles = await env.consoles()
    rfb, uuid = consoles["rfb"]["ref"], consoles["rfb"]["uuid"]
    vm_uuid = await env.call("VM.get_uuid", env.vm)
    variants: list[tuple[str, tuple[str, ...]]] = [
        (f"/console?ref={rfb}", (f"Cookie: other=1; session_id={env.session}",)),
        (f"/console?ref={rfb}", (basic("root", ROOT_PW),)),
        (f"/console?uuid={uuid}&session_id={env.session}", ()),
        (f"/console?uuid={vm_uuid}&session_id={env.session}", ()),  # a VM stands for its rfb console
        (f"/console?ref={env.vm}&session_id={env.session}", ()),
        (f"/console?ref={rfb.replace(':', '%3A')}&session_id={env.session.replace(':', '%3A')}", ()),
    ]
    for target, headers in variants:
        a = await env.connect(target, headers)
        assert a.status == 200, (target, a.head)
        await rfb_handshake(a)
        a.writer.close()
    assert env.rfb.connections == len(variants)


async def test_connect_without_valid_credentials_is_refused_and_relays_nothing(env: Env) -> None:
    rfb = (await env.consoles())["rfb"]["ref"]
    reader_session = env.ctx.sessions.open(READER[0], "read-only")
    cases = [
        ((), 401),
        (("Cookie: session_id=OpaqueRef:00000000-0000-0000-0000-000000000000",), 401),
        ((basic("root", "wrong"),), 401),
        (("Authorization: Bearer abc",), 401),
        (("Authorization: Basic !!notbase64",), 401),
        ((f"Cookie: session_id={reader_session}",), 403),  # read-only may not use consoles
        ((basic(*READER),), 403),
    ]
    for headers, status in cases:
        a = await env.connect(f"/console?ref={rfb}", headers, first=RFB_BANNER)
        assert a.status == status, (headers, a.head)
        if status == 401:
            assert 'WWW-Authenticate: Basic realm="xapi"' in a.head
        await a.reader.read()  # the body, then the connection ends
        assert await a.at_eof()
        a.writer.close()
    bad = await env.connect(f"/console?ref={rfb}&session_id=OpaqueRef:nope")
    assert bad.status == 401
    assert env.rfb.connections == 0


async def test_connect_to_nothing_or_a_stopped_vm(env: Env) -> None:
    s = env.session
    old = (await env.consoles())["rfb"]["ref"]
    for target, status in [
        (f"/console?ref=OpaqueRef:00000000-0000-0000-0000-000000000000&session_id={s}", 404),
        (f"/console?session_id={s}", 400),
        (f"/elsewhere?ref={old}&session_id={s}", 404),
    ]:
        a = await env.connect(target)
        assert a.status == status, (target, a.head)
    await env.call("VM.hard_shutdown", env.vm)
    a = await env.connect(f"/console?ref={old}&session_id={s}")
    assert a.status == 404
    vm_uuid = await env.call("VM.get_uuid", env.vm)
    a = await env.connect(f"/console?uuid={vm_uuid}&session_id={s}")
    assert a.status == 404
    assert env.rfb.connections == 0


async def test_host_console_needs_pool_admin(env: Env) -> None:
    store, ctx = env.ctx.store, env.ctx
    dom0 = next(ref for ref, rec in store.items("VM") if rec["is_control_domain"])
    con = store.create("console", {"protocol": "rfb", "VM": dom0, "location": ""})
    operator = ctx.sessions.open("operator", "pool-operator")  # may use guests' consoles, not the host's
    a = await env.connect(f"/console?ref={con}&session_id={operator}")
    assert a.status == 403
    a = await env.connect(f"/console?ref={con}&session_id={env.session}")
    assert a.status == 404  # allowed, but this host offers no console of its own (yet)
    rfb = (await env.consoles())["rfb"]["ref"]
    a = await env.connect(f"/console?ref={rfb}&session_id={operator}")
    assert a.status == 200


async def test_malformed_connect_requests(env: Env) -> None:
    for raw in [
        b"CONNECT /console?ref=x\r\n\r\n",
        b"CONNECT /console HTTP/1.1\r\nno colon here\r\n\r\n",
        b"CONNECT /console?" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",
    ]:
        async with asyncio.timeout(WAIT):
            reader, writer = await env.open()
            writer.write(raw)
            status = (await reader.readline()).split(b" ")[1]
        assert status in (b"400", b"431"), raw[:40]
        writer.close()


async def test_connect_split_across_packets_and_over_tls(env: Env) -> None:
    rfb = (await env.consoles())["rfb"]["ref"]
    async with asyncio.timeout(WAIT):
        reader, writer = await env.open()
        for piece in (b"CON", b"NECT /cons", f"ole?ref={rfb}&session_id={env.session} HTTP/1.1\r\n\r\n".encode()):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.05)
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")
        assert await reader.readexactly(len(RFB_BANNER)) == RFB_BANNER
    writer.close()
    a = await env.connect(f"/console?ref={rfb}&session_id={env.session}", tls=True)
    assert a.status == 200
    await rfb_handshake(a)
    a.writer.close()


async def test_vt100_relays_to_the_serial_port_one_client_at_a_time(env: Env) -> None:
    vt = (await env.consoles())["vt100"]["ref"]
    target = f"/console?ref={vt}&session_id={env.session}"
    first = await env.connect(target)
    assert first.status == 200
    first.writer.write(b"echo hello\n")
    assert await first.read(11) == b"echo hello\n"
    second = await env.connect(target)
    assert second.status == 503  # QEMU's serial socket would queue it silently
    first.writer.close()
    async with asyncio.timeout(WAIT):
        while True:
            third = await env.connect(target)
            if third.status == 200:
                break
            await asyncio.sleep(0.05)
    third.writer.close()


async def test_plain_http_still_served_alongside(env: Env) -> None:
    body = {"jsonrpc": "2.0", "method": "session.get_this_host", "params": [env.session, env.session], "id": 1}
    async with aiohttp.ClientSession() as http:
        for base in (f"http://127.0.0.1:{env.port}", f"https://127.0.0.1:{env.tls_port}"):
            for _ in range(2):  # keep-alive: the second request rides the same connection
                async with http.post(f"{base}/jsonrpc", json=body, ssl=False) as r:
                    assert (await r.json())["result"] == env.ctx.host_ref
            async with http.get(f"{base}/", ssl=False) as r:
                assert r.status == 200


# ---- WebSocket ----------------------------------------------------------------------------------
async def test_websocket_relays_rfb(env: Env) -> None:
    rfb = (await env.consoles())["rfb"]["ref"]
    url = f"http://127.0.0.1:{env.port}/console?ref={rfb}&session_id={env.session}"
    async with aiohttp.ClientSession() as http:
        for protocols in (("binary",), ()):
            async with asyncio.timeout(WAIT), http.ws_connect(url, protocols=protocols) as ws:
                assert ws.protocol == (protocols[0] if protocols else None)
                assert await ws.receive_bytes() == RFB_BANNER
                await ws.send_bytes(RFB_BANNER)
                assert await ws.receive_bytes() == SECURITY_NONE
        tls_url = f"https://127.0.0.1:{env.tls_port}/console?ref={rfb}"
        cookie = {"Cookie": f"session_id={env.session}"}
        async with asyncio.timeout(WAIT), http.ws_connect(tls_url, ssl=False, headers=cookie) as ws:
            assert await ws.receive_bytes() == RFB_BANNER


async def test_websocket_handshake_fails_without_access(env: Env) -> None:
    rfb = (await env.consoles())["rfb"]["ref"]
    base = f"http://127.0.0.1:{env.port}/console?ref={rfb}"
    reader_session = env.ctx.sessions.open(READER[0], "read-only")
    async with aiohttp.ClientSession() as http:
        for url, headers, status in [
            (base, {}, 401),
            (f"{base}&session_id=OpaqueRef:nope", {}, 401),
            (f"{base}&session_id={reader_session}", {}, 403),
            # a page elsewhere riding the browser's cookie
            (base, {"Cookie": f"session_id={env.session}", "Origin": "https://evil.example"}, 403),
        ]:
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                async with asyncio.timeout(WAIT):
                    await http.ws_connect(url, headers=headers)
            assert e.value.status == status, url
        async with http.get(f"{base}&session_id={env.session}") as r:
            assert r.status == 400  # a GET that is not a WebSocket upgrade
    assert env.rfb.connections == 0


async def test_shutdown_closes_open_consoles(env: Env) -> None:
    rfb = (await env.consoles())["rfb"]["ref"]
    tunnel = await env.connect(f"/console?ref={rfb}&session_id={env.session}")
    await rfb_handshake(tunnel)
    idle_reader, _ = await env.open()  # a client that says nothing
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"http://127.0.0.1:{env.port}/console?ref={rfb}&session_id={env.session}")
        assert await ws.receive_bytes() == RFB_BANNER
        async with asyncio.timeout(WAIT):
            await env.runner.cleanup()
            assert await tunnel.at_eof()
            assert await idle_reader.read() == b""
            msg = await ws.receive()
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        await ws.close()
