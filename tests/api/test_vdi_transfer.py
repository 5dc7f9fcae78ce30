"""PUT /import_raw_vdi and GET /export_raw_vdi in process: a real HTTP server on loopback, the
simulated hypervisor, the default file SR (real qemu-img images in a temporary directory).

The client here is a hand-written HTTP/1.x over asyncio streams, so each test decides exactly what
goes on the wire: xe's "head, wait for the answer, then the body", Expect: 100-continue, chunked
transfer encoding, a body cut short. The error cases are in test_vdi_transfer_errors.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import subprocess
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from pyxapi.api.app import make_app
from tests.ops.test_storage_ops import new_vdi
from tests.ops.test_vm_power import Api, api  # noqa: F401 - the fixture

MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
WAIT = 60.0  # every network wait here is bounded
ROOT_PW = "root-pw"
READER = ("reader", "reader-pw")


@dataclass
class Reply:
    status: int
    head: str
    headers: dict[str, str]
    body: bytes

    @property
    def task(self) -> str:
        return self.headers.get("task-id", "")


@dataclass
class Env:
    api: Api
    port: int
    runner: web.AppRunner
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def session(self) -> str:
        return self.api.session

    async def call(self, method: str, *args: Any) -> Any:
        return await self.api(method, *args)

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=4 * MiB)
        self.writers.append(writer)
        return reader, writer

    async def request(
        self,
        method: str,
        target: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
        *,
        version: str = "1.1",
        wait_answer_first: bool = False,
        chunked: bool = False,
    ) -> Reply:
        """One request on a fresh connection. `wait_answer_first`: send the head, read the answer's
        head, then the body (what xe does; also how Expect: 100-continue clients behave)."""
        reader, writer = await self.open()
        pieces = [body] if isinstance(body, bytes) else list(body or [])
        hdrs = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
        if chunked:
            hdrs["Transfer-Encoding"] = "chunked"
        elif body is not None and not any(k.lower() == "content-length" for k in hdrs):
            hdrs["Content-Length"] = str(sum(len(p) for p in pieces))
        head = f"{method} {target} HTTP/{version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        async with asyncio.timeout(WAIT):
            writer.write(head.encode())
            await writer.drain()
            answer = await read_head(reader) if wait_answer_first else None
            if answer is not None and answer[0] == 100:
                answer = await read_head(reader)
            if answer is None or answer[0] == 200:
                for p in pieces:
                    writer.write(f"{len(p):x}\r\n".encode() + p + b"\r\n" if chunked else p)
                    await writer.drain()
                if chunked:
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
            if answer is None:
                answer = await read_head(reader)
            status, head_text, headers_in = answer
            data = await read_body(reader, headers_in)
        writer.close()
        return Reply(status, head_text, headers_in, data)

    async def put(self, query: str, body: bytes | Iterable[bytes] | None, **kw: Any) -> Reply:
        return await self.request("PUT", f"/import_raw_vdi?{query}", body if body is not None else b"", **kw)

    async def get(self, query: str, **kw: Any) -> Reply:
        return await self.request("GET", f"/export_raw_vdi?{query}", **kw)


async def read_head(reader: asyncio.StreamReader) -> tuple[int, str, dict[str, str]]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head.split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ", 2)[1]), head, headers


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int((await reader.readline()).split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readline()
                return bytes(out)
            out += await reader.readexactly(size)
            await reader.readline()
    return await reader.read()


@pytest.fixture
async def env(api: Api, tmp_path: Path) -> AsyncIterator[Env]:  # noqa: F811
    api.ctx.accounts.set_password("root", ROOT_PW, "pool-admin")
    api.ctx.accounts.set_password(*READER, "read-only")
    storage = api.ctx.services["storage"]
    await storage.start()
    # handler_cancellation: as `pyxapi serve` runs it, so a client leaving cancels its handler.
    runner = web.AppRunner(make_app(api.d, 1 << 20), access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    e = Env(api, runner.addresses[0][1], runner)
    yield e
    for w in e.writers:
        w.close()
    await runner.cleanup()
    await storage.stop()


# ---- helpers shared with the error tests ---------------------------------------------------------
async def default_sr(e: Env) -> str:
    return str(await e.call("pool.get_default_SR", e.api.ctx.pool_ref))


def sr_dir(e: Env, sr: str) -> Path:
    store = e.api.ctx.store
    [pbd] = store.get("SR", sr)["PBDs"]
    return Path(store.get("PBD", pbd)["device_config"]["location"])


def files_of(e: Env, sr: str) -> set[str]:
    return {p.name for p in sr_dir(e, sr).iterdir()}


def vdi_path(e: Env, vdi: str) -> Path:
    rec = e.api.ctx.store.get("VDI", vdi)
    return sr_dir(e, rec["SR"]) / rec["location"]


def pattern(size: int, seed: int = 7) -> bytes:
    """Recognisable, non-repeating bytes with a zero stretch in the middle (holes must read back)."""
    block = bytes((i * seed + i // 251) % 256 for i in range(MiB))
    data = bytearray((block * (size // MiB + 1))[:size])
    data[size // 4 : size // 2] = bytes(size // 2 - size // 4)
    return bytes(data)


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=120, check=False)


def convert(src: Path, src_fmt: str, dst: Path, dst_fmt: str) -> None:
    options = {"vhd": ["-o", "subformat=dynamic,force_size=on"], "qcow2": []}.get(dst_fmt, [])
    qfmt = {"vhd": "vpc"}
    res = qemu_img(
        "convert", "-f", qfmt.get(src_fmt, src_fmt), "-O", qfmt.get(dst_fmt, dst_fmt), *options, str(src), str(dst)
    )
    assert res.returncode == 0, res.stderr


def virtual_size(path: Path, fmt: str) -> int:
    res = qemu_img("info", "--output=json", "-f", {"vhd": "vpc"}.get(fmt, fmt), str(path))
    assert res.returncode == 0, res.stderr
    return int(json.loads(res.stdout)["virtual-size"])


def same_contents(a: Path, a_fmt: str, b: Path, b_fmt: str) -> bool:
    """qemu-img compare (the guest-visible bytes are identical) and the same virtual size."""
    qfmt = {"vhd": "vpc"}
    res = qemu_img("compare", "-f", qfmt.get(a_fmt, a_fmt), "-F", qfmt.get(b_fmt, b_fmt), str(a), str(b))
    assert res.returncode in (0, 1), res.stderr
    return res.returncode == 0 and virtual_size(a, a_fmt) == virtual_size(b, b_fmt)


async def finished(e: Env, task: str) -> dict[str, Any]:
    """The task once final (not pending, nor still cancelling)."""
    async with asyncio.timeout(WAIT):
        while True:
            rec = e.api.ctx.store.get("task", task)
            if rec["status"] in ("success", "failure", "cancelled"):
                return rec
            await asyncio.sleep(0.01)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def control_domain_vbds(e: Env) -> list[str]:
    store = e.api.ctx.store
    dom0 = store.get("host", e.api.ctx.host_ref)["control_domain"]
    return list(store.get("VM", dom0)["VBDs"])


# ---- round trips ---------------------------------------------------------------------------------
async def test_raw_import_then_export_with_a_client_task(env: Env, tmp_path: Path) -> None:
    sr = await default_sr(env)
    vdi = await new_vdi(env.api, sr, 8 * MiB)
    data = pattern(8 * MiB)
    task = await env.call("task.create", "my import", "")
    reply = await env.put(f"session_id={env.session}&vdi={vdi}&format=raw&task_id={task}", data)
    assert reply.status == 200 and reply.task == task
    rec = await finished(env, task)
    assert rec["status"] == "success", rec["error_info"]
    assert rec["result"] == f"<value>{vdi}</value>" and rec["progress"] == 1.0
    assert control_domain_vbds(env) == []  # the transfer's hold on the disk is gone
    # raw export: the same bytes, with the length, type and file name xapi sends
    uuid = await env.call("VDI.get_uuid", vdi)
    reply = await env.get(f"session_id={env.session}&vdi={uuid}&format=raw")
    assert reply.status == 200 and reply.body == data
    assert reply.headers["content-length"] == str(8 * MiB)
    assert reply.headers["content-type"] == "application/octet-stream"
    assert reply.headers["content-disposition"] == f'attachment; filename="{uuid}.raw"'
    export_task = await finished(env, reply.task)
    assert export_task["status"] == "success" and export_task["name_label"] == "Exporting raw VDI"
    assert export_task["result"] == ""
    # sizes stay true: the zero stretch became a hole in the qcow2 image
    assert 0 < await env.call("VDI.get_physical_utilisation", vdi) < 8 * MiB


@pytest.mark.parametrize("fmt", ["vhd", "qcow2"])
async def test_export_as_vhd_or_qcow2_and_import_back_byte_identical(env: Env, tmp_path: Path, fmt: str) -> None:
    sr = await default_sr(env)
    source = tmp_path / "source.raw"
    source.write_bytes(pattern(6 * MiB + 512, seed=13))
    vdi = await new_vdi(env.api, sr, 6 * MiB + 512)
    reply = await env.put(f"session_id={env.session}&vdi={vdi}", source.read_bytes())  # format defaults to raw
    assert (await finished(env, reply.task))["status"] == "success"
    reply = await env.get(f"session_id={env.session}&vdi={vdi}&format={fmt}")
    assert reply.status == 200 and reply.headers["content-type"] == {"vhd": "application/vhd"}.get(
        fmt, "application/x-qemu-disk"
    )
    exported = tmp_path / f"exported.{fmt}"
    exported.write_bytes(reply.body)
    assert int(reply.headers["content-length"]) == len(reply.body) == exported.stat().st_size
    assert same_contents(exported, fmt, source, "raw")
    copy = await new_vdi(env.api, sr, 6 * MiB + 512)
    reply = await env.put(f"session_id={env.session}&vdi={copy}&format={fmt}", exported.read_bytes())
    assert (await finished(env, reply.task))["status"] == "success"
    assert same_contents(vdi_path(env, copy), "qcow2", source, "raw")
    assert same_contents(vdi_path(env, copy), "qcow2", vdi_path(env, vdi), "qcow2")


async def test_xe_style_put_waits_for_the_answer_before_the_body(env: Env) -> None:
    """The real xe: HTTP/1.0, Content-Length, Basic credentials, and not a byte of the disk before
    the server's `200 OK`. Then the answer's body ends when the import is done."""
    vdi = await new_vdi(env.api, await default_sr(env), 4 * MiB)
    data = pattern(4 * MiB, seed=3)
    reply = await env.put(
        f"vdi={vdi}&format=raw", data, headers=basic("root", ROOT_PW), version="1.0", wait_answer_first=True
    )
    assert reply.status == 200 and reply.head.startswith("HTTP/1.0 200")
    rec = env.api.ctx.store.get("task", reply.task)
    assert rec["status"] == "success", rec["error_info"]  # final by the time the body ended
    assert rec["name_label"] == "Importing raw VDI"
    assert (await env.get(f"vdi={vdi}", headers=basic("root", ROOT_PW))).body == data


async def test_expect_100_continue_and_chunked_transfer_encoding(env: Env) -> None:
    vdi = await new_vdi(env.api, await default_sr(env), 3 * MiB)
    data = pattern(3 * MiB, seed=5)
    pieces = [data[i : i + 100_000] for i in range(0, len(data), 100_000)]  # odd sizes: re-cut server side
    reply = await env.put(
        f"session_id={env.session}&vdi={vdi}",
        pieces,
        chunked=True,
        headers={"Expect": "100-continue"},
        wait_answer_first=True,
    )
    assert reply.status == 200
    assert (await finished(env, reply.task))["status"] == "success"
    assert (await env.get(f"session_id={env.session}&vdi={vdi}")).body == data
    # the session may come as a cookie too
    reply = await env.get(f"vdi={vdi}&format=raw", headers={"Cookie": f"session_id={env.session}"})
    assert reply.status == 200 and reply.body == data


async def test_xapi_chunk_protocol_writes_pieces_over_the_current_contents(env: Env) -> None:
    vdi = await new_vdi(env.api, await default_sr(env), 4 * MiB)
    base = pattern(4 * MiB, seed=11)
    reply = await env.put(f"session_id={env.session}&vdi={vdi}", base)
    assert (await finished(env, reply.task))["status"] == "success"
    edits = [(MiB + 3, b"A" * 1000), (3 * MiB, b"B" * MiB), (0, b"C" * 10)]
    body = b"".join(struct.pack("<QI", off, len(d)) + d for off, d in edits) + struct.pack("<QI", 0, 0)
    reply = await env.put(f"session_id={env.session}&vdi={vdi}&chunked=true", body)
    rec = await finished(env, reply.task)
    assert rec["status"] == "success", rec["error_info"]
    expected = bytearray(base)
    for off, d in edits:
        expected[off : off + len(d)] = d
    assert (await env.get(f"session_id={env.session}&vdi={vdi}")).body == bytes(expected)


async def test_import_into_an_sr_makes_a_vdi_only_when_the_image_is_good(env: Env, tmp_path: Path) -> None:
    sr = await default_sr(env)
    sr_uuid = await env.call("SR.get_uuid", sr)
    before = set(await env.call("SR.get_VDIs", sr))
    data = pattern(2 * MiB + 4096)
    reply = await env.put(f"session_id={env.session}&sr_uuid={sr_uuid}&format=raw", data)
    rec = await finished(env, reply.task)
    assert rec["status"] == "success", rec["error_info"]
    vdi = rec["result"].removeprefix("<value>").removesuffix("</value>")
    assert set(await env.call("SR.get_VDIs", sr)) == before | {vdi}
    vrec = await env.call("VDI.get_record", vdi)
    assert vrec["name_label"] == "Imported VDI" and vrec["virtual_size"] == len(data)
    assert (await env.get(f"session_id={env.session}&vdi={vdi}")).body == data
    # qcow2 into the SR by ref: sized from the image
    image = tmp_path / "up.qcow2"
    raw = tmp_path / "up.raw"
    raw.write_bytes(pattern(3 * MiB, seed=9))
    convert(raw, "raw", image, "qcow2")
    reply = await env.put(f"session_id={env.session}&sr_id={sr}&format=qcow2", image.read_bytes())
    rec = await finished(env, reply.task)
    assert rec["status"] == "success", rec["error_info"]
    made = rec["result"].removeprefix("<value>").removesuffix("</value>")
    assert await env.call("VDI.get_virtual_size", made) == 3 * MiB
    assert same_contents(vdi_path(env, made), "qcow2", raw, "raw")


async def test_disks_over_2_tib_move_as_qcow2(env: Env, tmp_path: Path) -> None:
    """A 3 TiB disk with data past the 2 TiB mark, imported and exported as qcow2 without writing
    (or sending) the empty terabytes; VHD cannot describe it and is refused before any work."""
    image = tmp_path / "big.qcow2"
    assert qemu_img("create", "-f", "qcow2", str(image), str(3 * TiB)).returncode == 0
    res = subprocess.run(
        [
            "qemu-io",
            "-f",
            "qcow2",
            "-c",
            f"write -P 0x5a {2 * TiB + 7 * MiB} 1M",
            "-c",
            "write -P 0x11 0 64k",
            str(image),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    vdi = await new_vdi(env.api, await default_sr(env), 3 * TiB)
    reply = await env.put(f"session_id={env.session}&vdi={vdi}&format=qcow2", image.read_bytes())
    rec = await finished(env, reply.task)
    assert rec["status"] == "success", rec["error_info"]
    assert same_contents(vdi_path(env, vdi), "qcow2", image, "qcow2")
    assert os.stat(vdi_path(env, vdi)).st_blocks * 512 < 64 * MiB
    reply = await env.get(f"session_id={env.session}&vdi={vdi}&format=qcow2")
    assert reply.status == 200 and len(reply.body) < 64 * MiB
    back = tmp_path / "back.qcow2"
    back.write_bytes(reply.body)
    assert same_contents(back, "qcow2", image, "qcow2")
    reply = await env.get(f"session_id={env.session}&vdi={vdi}&format=vhd")
    assert reply.status == 500
    rec = await finished(env, reply.task)
    assert rec["error_info"] == ["VDI_TOO_LARGE", vdi, str(2040 * GiB)]


async def test_progress_is_reported_while_the_body_arrives(env: Env) -> None:
    vdi = await new_vdi(env.api, await default_sr(env), 16 * MiB)
    task = await env.call("task.create", "slow import", "")
    seen: list[float] = []
    gate = asyncio.Event()

    async def watch() -> None:
        while not gate.is_set():
            seen.append(env.api.ctx.store.get("task", task)["progress"])
            await asyncio.sleep(0.01)

    async def slow_body() -> AsyncIterator[bytes]:
        data = pattern(16 * MiB)
        for i in range(0, len(data) - 2 * MiB, 2 * MiB):
            yield data[i : i + 2 * MiB]
            await asyncio.sleep(0.6)  # longer than the progress writer's period

    watcher = asyncio.create_task(watch())
    reader, writer = await env.open()
    writer.write(
        f"PUT /import_raw_vdi?session_id={env.session}&vdi={vdi}&task_id={task} HTTP/1.1\r\n"
        f"Host: x\r\nContent-Length: {16 * MiB}\r\n\r\n".encode()
    )
    async with asyncio.timeout(WAIT):
        status, _, _ = await read_head(reader)  # 200 before the body
        assert status == 200
        async for piece in slow_body():
            writer.write(piece)
            await writer.drain()
        gate.set()  # the last piece is the conversion's cue: its share of the progress follows
        await watcher
        writer.write(pattern(16 * MiB)[-2 * MiB :])
        await reader.read()
    rec = await finished(env, task)
    assert rec["status"] == "success", rec["error_info"]
    during = sorted({p for p in seen if 0 < p < 1})
    assert len(during) >= 3 and max(during) <= 0.5 + 1e-9 < 1.0, during  # upload is the first half


async def test_a_simulated_sr_moves_data_the_same_way(env: Env) -> None:
    """The handlers only speak the driver contract: the sim driver (no image files to stream from)
    imports and exports through its own import_data/export_data."""
    sr = await env.call("SR.create", env.api.ctx.host_ref, {}, 0, "sim SR", "", "sim", "user", False, {})
    vdi = await new_vdi(env.api, sr, 3 * MiB)
    data = pattern(3 * MiB, seed=17)
    reply = await env.put(f"session_id={env.session}&vdi={vdi}", data)
    assert (await finished(env, reply.task))["status"] == "success"
    reply = await env.get(f"session_id={env.session}&vdi={vdi}")
    assert reply.status == 200 and reply.body == data
    assert (await finished(env, reply.task))["status"] == "success" and control_domain_vbds(env) == []
