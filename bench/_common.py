"""Shared pieces of the benchmarks: a light keep-alive HTTP client, RPC envelopes, process
statistics from /proc, the bare aiohttp baseline server, and table printing.

The load generator must cost little next to the server it measures (the bench machine may
have only two cores), so the client is a hand-written HTTP/1.1 loop over asyncio streams
rather than aiohttp's client, whose per-request overhead would flatten the baseline.

Run as a script (`python bench/_common.py bare PORT XML_BODY JSON_BODY`) it serves the
baseline: a bare aiohttp app that answers every POST with a fixed body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JSON_PATHS = ("/jsonrpc", "/json")
# pyxapi sends these on every JSON-RPC reply; the baseline sends them too so both write the same bytes.
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type",
}


class RpcFailure(Exception):
    """The server answered an RPC with an API failure."""


# ---- HTTP/1.1 keep-alive client ----------------------------------------------------------------
class HttpConn:
    """One keep-alive connection; `send` and `receive` are split so a caller can leave a
    request pending (event.from) while it does something else."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> HttpConn:
        # Replies of a 10k-object snapshot run to many MB: a large limit avoids readuntil errors.
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        return self

    def send(self, path: str, body: bytes, content_type: str) -> None:
        assert self._writer is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self._writer.write(head.encode() + body)

    async def receive(self) -> bytes:
        assert self._reader is not None
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        length = None
        for line in lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if length is None:
            raise RuntimeError(f"reply without Content-Length: {status_line}")
        body = await self._reader.readexactly(length)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
        return body

    async def post(self, path: str, body: bytes, content_type: str) -> bytes:
        self.send(path, body, content_type)
        return await self.receive()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            # The server may already have gone away; closing is all we wanted.
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()


# ---- RPC envelopes ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Wire:
    """One RPC dialect: where requests go and how they are written and read."""

    name: str
    path: str
    content_type: str

    def request(self, method: str, params: list[Any]) -> bytes:
        if self.name == "json":
            return json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": 1}).encode()
        return xmlrpc.client.dumps(tuple(params), method, allow_none=True).encode()

    def result(self, reply: bytes) -> Any:
        if self.name == "json":
            doc = json.loads(reply)
            if "error" in doc and doc["error"] is not None:
                raise RpcFailure(doc["error"])
            return doc["result"]
        (value,), _ = xmlrpc.client.loads(reply)  # DateTime objects: xapi's trailing Z defeats datetime
        if not isinstance(value, dict):
            raise RpcFailure(f"not a XenAPI reply struct: {value!r:.200}")
        if value.get("Status") != "Success":
            raise RpcFailure(value.get("ErrorDescription"))
        return value["Value"]


JSON = Wire("json", "/jsonrpc", "application/json")
XML = Wire("xml", "/", "text/xml")


class RpcConn:
    """An HttpConn that speaks one wire; the request and the reply can be split as well."""

    def __init__(self, conn: HttpConn, wire: Wire) -> None:
        self.conn = conn
        self.wire = wire

    @classmethod
    async def open(cls, port: int, wire: Wire = JSON) -> RpcConn:
        return cls(await HttpConn("127.0.0.1", port).open(), wire)

    def send(self, method: str, *params: Any) -> None:
        self.conn.send(self.wire.path, self.wire.request(method, list(params)), self.wire.content_type)

    async def receive(self) -> Any:
        return self.wire.result(await self.conn.receive())

    async def call(self, method: str, *params: Any) -> Any:
        self.send(method, *params)
        return await self.receive()

    async def close(self) -> None:
        await self.conn.close()


# ---- statistics ---------------------------------------------------------------------------------
def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = math.ceil(q / 100 * len(sorted_values))
    return sorted_values[max(0, min(len(sorted_values), rank) - 1)]


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses: fields are counted after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _CLK_TCK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_nofile(wanted: int) -> int:
    """Raise the soft fd limit towards `wanted` (children inherit it); returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


# ---- processes ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port} within {timeout}s")


def start_bare(xml_body: Path, json_body: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start the baseline server (this file as a script) on a free loopback port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "bare", str(port), str(xml_body), str(json_body)],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_listening(proc, port)
    except BaseException:
        stop_process(proc)
        raise
    return proc, port


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """SIGTERM the one process we started (by its pid), SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


async def _serve_bare(port: int, xml_body: bytes, json_body: bytes) -> None:
    from aiohttp import web

    async def post(request: web.Request) -> web.Response:
        await request.read()  # pyxapi reads the whole request too; the baseline must not skip that
        if request.path in JSON_PATHS:
            return web.Response(body=json_body, headers={"Content-Type": "application/json", **CORS_HEADERS})
        return web.Response(body=xml_body, content_type="text/xml")

    app = web.Application()
    app.router.add_post("/{tail:.*}", post)
    # The same runner settings as pyxapi's serve(), so the difference is pyxapi's own work.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


# ---- output -------------------------------------------------------------------------------------
def table(headers: list[str], rows: list[list[str]]) -> str:
    """Right-aligned columns except the first, which names the row."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        first = str(cells[0]).ljust(widths[0])
        return "  ".join([first, *(str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "bare":
        raise SystemExit("usage: _common.py bare PORT XML_BODY_FILE JSON_BODY_FILE")
    asyncio.run(_serve_bare(int(sys.argv[2]), Path(sys.argv[3]).read_bytes(), Path(sys.argv[4]).read_bytes()))
