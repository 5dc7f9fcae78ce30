"""Consoles of a real guest under QEMU, through a real daemon: the rfb console's CONNECT tunnel and
its WebSocket reach QEMU's VNC server (RFB handshake), the vt100 console reaches the guest's serial
shell, and without a valid session nothing is tunnelled."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import XenAPI

from tests.drivers.conftest import HvGuestImage, hv_guest_image  # noqa: F401 - the fixture, shared
from tests.e2e.test_vm_qemu import BOOT_SECONDS, install, qemu_daemon, session, wait_task  # noqa: F401
from tests.server_harness import Daemon

RFB_BANNER = b"RFB 003.008\n"
IO_SECONDS = 30.0  # one network exchange with the daemon (QEMU answers VNC long before the guest boots)


@dataclass
class Guest:
    daemon: Daemon
    session: XenAPI.Session
    vm: str
    consoles: dict[str, dict[str, Any]]  # protocol -> record (with its ref)

    @property
    def session_ref(self) -> str:
        return str(self.session._session)


@pytest.fixture(scope="module")
def guest(qemu_daemon: Daemon) -> Iterator[Guest]:  # noqa: F811
    s = session(qemu_daemon)
    x = s.xenapi
    vm = install(x, "console-e2e")
    rec = wait_task(x, x.Async.VM.start(vm, False, False))
    assert rec["status"] == "success", rec["error_info"]
    yield Guest(qemu_daemon, s, vm, consoles_of(x, vm))
    try:
        if x.VM.get_power_state(vm) != "Halted":
            x.VM.hard_shutdown(vm)
        x.session.logout()
    finally:
        s("close")()  # the SDK keeps its HTTP connection open otherwise


def consoles_of(x: Any, vm: str) -> dict[str, dict[str, Any]]:
    out = {}
    for ref in x.VM.get_consoles(vm):
        rec = x.console.get_record(ref)
        out[rec["protocol"]] = {**rec, "ref": ref}
    return out


def insecure_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the daemon's self-signed certificate
    return ctx


@dataclass
class Tunnel:
    status: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def read(self, n: int) -> bytes:
        async with asyncio.timeout(IO_SECONDS):
            return await self.reader.readexactly(n)

    def close(self) -> None:
        self.writer.close()


async def connect(location: str, extra_query: str = "") -> Tunnel:
    """CONNECT to a console's location exactly as it reads (https, its host and port)."""
    url = urlsplit(location)
    assert url.scheme == "https" and url.hostname and url.port
    target = f"{url.path}?{url.query}{extra_query}"
    async with asyncio.timeout(IO_SECONDS):
        reader, writer = await asyncio.open_connection(url.hostname, url.port, ssl=insecure_tls())
        writer.write(f"CONNECT {target} HTTP/1.0\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
    return Tunnel(int(head.split(b" ", 2)[1]), reader, writer)


async def rfb_security_types(read: Any, write: Any) -> bytes:
    """Answer QEMU's banner with RFB 3.8 and return the security types it offers."""
    assert await read(len(RFB_BANNER)) == RFB_BANNER
    await write(RFB_BANNER)
    count = (await read(1))[0]
    assert count > 0, "the VNC server refused the handshake"
    return await read(count)


def test_a_running_vm_has_rfb_and_vt100_consoles(guest: Guest) -> None:
    assert set(guest.consoles) == {"rfb", "vt100"}
    for rec in guest.consoles.values():
        assert rec["VM"] == guest.vm
        assert rec["location"] == f"https://127.0.0.1:{guest.daemon.tls_port}/console?ref={rec['ref']}"


async def test_rfb_console_over_connect(guest: Guest) -> None:
    tunnel = await connect(guest.consoles["rfb"]["location"], f"&session_id={guest.session_ref}")
    try:
        assert tunnel.status == 200

        async def write(data: bytes) -> None:
            tunnel.writer.write(data)
            await tunnel.writer.drain()

        assert 1 in await rfb_security_types(tunnel.read, write)  # QEMU offers "None" (no password)
    finally:
        tunnel.close()


async def test_rfb_console_over_websocket(guest: Guest) -> None:
    url = urlsplit(guest.consoles["rfb"]["location"])
    wss = url._replace(scheme="wss", query=f"{url.query}&session_id={guest.session_ref}").geturl()
    async with (
        aiohttp.ClientSession() as http,
        asyncio.timeout(IO_SECONDS),
        http.ws_connect(wss, ssl=insecure_tls(), protocols=("binary",)) as ws,
    ):
        assert ws.protocol == "binary"
        pending = bytearray()

        async def read(n: int) -> bytes:
            while len(pending) < n:  # frames need not match RFB message boundaries
                pending.extend(await ws.receive_bytes())
            out = bytes(pending[:n])
            del pending[:n]
            return out

        assert 1 in await rfb_security_types(read, ws.send_bytes)


async def test_no_tunnel_without_a_valid_session(guest: Guest) -> None:
    location = guest.consoles["rfb"]["location"]
    for extra in ("", "&session_id=OpaqueRef:00000000-0000-0000-0000-000000000000"):
        tunnel = await connect(location, extra)
        try:
            assert tunnel.status == 401
        finally:
            tunnel.close()
    wss = urlsplit(location)._replace(scheme="wss").geturl()
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            async with asyncio.timeout(IO_SECONDS):
                await http.ws_connect(wss, ssl=insecure_tls())
        assert e.value.status == 401


async def test_vt100_console_reaches_the_serial_shell(guest: Guest) -> None:
    tunnel = await connect(guest.consoles["vt100"]["location"], f"&session_id={guest.session_ref}")
    try:
        assert tunnel.status == 200
        # The shell may still be booting (TCG): type the command until its answer comes back. The
        # tty echoes what we type, which reads `hello-$((6*7))`; only the shell can print hello-42.
        seen = b""
        deadline = time.monotonic() + BOOT_SECONDS
        while b"hello-42" not in seen:
            assert time.monotonic() < deadline, f"no answer from the serial shell; it said: {seen[-500:]!r}"
            tunnel.writer.write(b"echo hello-$((6*7))\n")
            await tunnel.writer.drain()
            try:
                async with asyncio.timeout(3.0):
                    while b"hello-42" not in seen:
                        chunk = await tunnel.reader.read(4096)
                        assert chunk, "the serial console closed"
                        seen += chunk
            except TimeoutError:
                continue
    finally:
        tunnel.close()


async def test_consoles_go_when_the_vm_halts(guest: Guest) -> None:
    x = guest.session.xenapi
    vm = install(x, "console-e2e-halt")
    assert wait_task(x, x.Async.VM.start(vm, False, False))["status"] == "success"
    consoles = consoles_of(x, vm)
    assert set(consoles) == {"rfb", "vt100"}
    x.VM.hard_shutdown(vm)
    assert x.VM.get_consoles(vm) == []
    assert all(ref not in x.console.get_all() for ref in (c["ref"] for c in consoles.values()))
    tunnel = await connect(consoles["rfb"]["location"], f"&session_id={guest.session_ref}")
    try:
        assert tunnel.status == 404
    finally:
        tunnel.close()
