"""Bad requests and broken transfers on /import_raw_vdi and /export_raw_vdi: the HTTP status and
task error xapi gives, and never a half-written VDI, a stray file or a disk left claimed."""

from __future__ import annotations

import asyncio
import struct
import subprocess
from pathlib import Path

import pytest

from pyxapi.api.handlers import nbd_reader
from pyxapi.api.handlers.transfer_jobs import claim, clear_leftovers, work_dir
from tests.api import test_vdi_transfer as base
from tests.api.test_vdi_transfer import (
    READER,
    ROOT_PW,
    WAIT,
    Env,
    MiB,
    basic,
    control_domain_vbds,
    convert,
    default_sr,
    files_of,
    finished,
    pattern,
    read_head,
)
from tests.ops.test_storage_ops import new_vbd, new_vdi
from tests.ops.test_vm_power import new_vm

# The fixtures of the round-trip tests (pytest finds fixtures among module attributes).
api = base.api
env = base.env


async def filled_vdi(e: Env, size: int = 2 * MiB, seed: int = 7) -> tuple[str, bytes]:
    vdi = await new_vdi(e.api, await default_sr(e), size)
    data = pattern(size, seed)
    reply = await e.put(f"session_id={e.session}&vdi={vdi}", data)
    assert (await finished(e, reply.task))["status"] == "success"
    return vdi, data


async def contents(e: Env, vdi: str) -> bytes:
    reply = await e.get(f"session_id={e.session}&vdi={vdi}")
    assert reply.status == 200
    return reply.body


def tasks(e: Env) -> int:
    return e.api.ctx.store.count("task")


# ---- refused before any byte moves ---------------------------------------------------------------
async def test_credentials_and_roles(env: Env) -> None:
    vdi, _ = await filled_vdi(env)
    before = tasks(env)
    for reply in (await env.put(f"vdi={vdi}", b"x"), await env.get(f"vdi={vdi}")):
        assert reply.status == 401 and reply.headers["www-authenticate"] == 'Basic realm="xapi"'
    assert (await env.put(f"session_id=OpaqueRef:nope&vdi={vdi}", b"x")).status == 401
    assert (await env.get(f"vdi={vdi}", headers=basic("root", "wrong"))).status == 401
    # read-only may do neither (the model's http_actions roles)
    assert (await env.put(f"vdi={vdi}", b"x", headers=basic(*READER))).status == 403
    assert (await env.get(f"vdi={vdi}", headers=basic(*READER))).status == 403
    # a page on another site cannot ride the browser's session cookie
    cookie = {"Cookie": f"session_id={env.session}"}
    assert (await env.get(f"vdi={vdi}", headers={**cookie, "Origin": "http://elsewhere.example"})).status == 403
    assert (await env.put(f"vdi={vdi}", b"x", headers={**cookie, "Origin": "http://elsewhere.example"})).status == 403
    assert tasks(env) == before  # nothing was started for a refused caller
    assert (await env.get(f"vdi={vdi}", headers={**cookie, "Origin": f"http://127.0.0.1:{env.port}"})).status == 200
    assert (await env.get(f"vdi={vdi}", headers=basic("root", ROOT_PW))).status == 200


async def test_bad_names_and_formats_fail_the_task(env: Env) -> None:
    vdi, data = await filled_vdi(env)
    s = env.session
    cases = [
        (
            "PUT",
            "vdi=3fd0b9c8-0000-4000-8000-000000000000",
            500,
            ["UUID_INVALID", "VDI", "3fd0b9c8-0000-4000-8000-000000000000"],
        ),
        ("PUT", "vdi=OpaqueRef:nothing", 500, ["UUID_INVALID", "VDI", "OpaqueRef:nothing"]),
        ("GET", "vdi=not-a-uuid", 500, ["UUID_INVALID", "VDI", "not-a-uuid"]),
        ("GET", "format=raw", 500, ["INTERNAL_ERROR", "Missing vdi query parameter"]),
        ("PUT", f"vdi={vdi}&format=vmdk", 404, ["INTERNAL_ERROR", "Unknown format vmdk"]),
        ("GET", f"vdi={vdi}&format=tar2", 404, ["INTERNAL_ERROR", "Unknown format tar2"]),
        ("PUT", f"vdi={vdi}&format=vhd&chunked=true", 404, ["INTERNAL_ERROR", "Cannot handle chunked VHD"]),
        ("PUT", "format=raw", 400, ["VDI_MISSING"]),
        ("PUT", f"vdi={vdi}&format=raw", 400, ["VDI_TOO_SMALL", vdi, str(3 * MiB)]),
    ]
    for method, query, status, error in cases:
        task = await env.call("task.create", "t", "")
        target = f"/{'import' if method == 'PUT' else 'export'}_raw_vdi?session_id={s}&task_id={task}&{query}"
        body = bytes(3 * MiB) if method == "PUT" else None
        reply = await env.request(method, target, body)
        assert reply.status == status, (query, reply.status, reply.body)
        rec = await finished(env, task)
        assert (rec["status"], rec["error_info"]) == ("failure", error), query
        assert reply.task == task
    # an unknown task_id is not a task to report on
    reply = await env.put(f"session_id={s}&vdi={vdi}&task_id=OpaqueRef:none", b"x")
    assert reply.status == 404 and reply.body.split() == [b"HANDLE_INVALID", b"task", b"OpaqueRef:none"]
    assert await contents(env, vdi) == data and control_domain_vbds(env) == []


async def test_a_refused_expect_100_client_never_sends_its_body(env: Env) -> None:
    vdi, data = await filled_vdi(env)
    reader, writer = await env.open()
    writer.write(
        f"PUT /import_raw_vdi?session_id={env.session}&vdi={vdi} HTTP/1.1\r\nHost: x\r\n"
        f"Expect: 100-continue\r\nContent-Length: {64 * MiB}\r\n\r\n".encode()
    )
    async with asyncio.timeout(WAIT):
        status, head, _ = await read_head(reader)  # a final answer straight away, no 100 Continue
    assert status == 400 and "Connection: close" in head
    assert await contents(env, vdi) == data


async def test_read_only_and_unplugged(env: Env) -> None:
    vdi, data = await filled_vdi(env)
    await env.call("VDI.set_read_only", vdi, True)
    reply = await env.put(f"session_id={env.session}&vdi={vdi}", b"z" * 512)
    assert reply.status == 400 and (await finished(env, reply.task))["error_info"] == ["VDI_READONLY", vdi]
    assert (await env.get(f"session_id={env.session}&vdi={vdi}")).body == data  # reading is fine
    await env.call("VDI.set_read_only", vdi, False)
    sr = await default_sr(env)
    [pbd] = await env.call("SR.get_PBDs", sr)
    await env.call("PBD.unplug", pbd)
    reply = await env.put(f"session_id={env.session}&vdi={vdi}", b"z" * 512)
    assert reply.status == 400 and (await finished(env, reply.task))["error_info"] == ["SR_HAS_NO_PBDS", sr]
    reply = await env.get(f"session_id={env.session}&vdi={vdi}")
    assert reply.status == 500 and (await finished(env, reply.task))["error_info"] == ["SR_HAS_NO_PBDS", sr]
    await env.call("PBD.plug", pbd)
    assert await contents(env, vdi) == data


# ---- the disk's owner ----------------------------------------------------------------------------
async def test_a_disk_a_running_vm_writes_cannot_be_imported_or_exported(env: Env) -> None:
    vdi, data = await filled_vdi(env)
    vm = await new_vm(env.api)
    await new_vbd(env.api, vm, vdi, "0")
    await env.call("VM.start", vm, False, False)
    reply = await env.put(f"session_id={env.session}&vdi={vdi}", b"q" * 512)
    assert reply.status == 400 and (await finished(env, reply.task))["error_info"] == ["VDI_IN_USE", vdi, "attach"]
    reply = await env.get(f"session_id={env.session}&vdi={vdi}")
    assert reply.status == 500 and (await finished(env, reply.task))["error_info"] == ["VDI_IN_USE", vdi, "attach"]
    await env.call("VM.hard_shutdown", vm)
    assert await contents(env, vdi) == data


async def test_while_a_transfer_runs_the_disk_is_held(env: Env) -> None:
    vdi, _ = await filled_vdi(env)
    new = pattern(2 * MiB, seed=29)
    reader, writer = await env.open()
    writer.write(
        f"PUT /import_raw_vdi?session_id={env.session}&vdi={vdi} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {len(new)}\r\n\r\n".encode()
        + new[:MiB]
    )
    await writer.drain()
    async with asyncio.timeout(WAIT):
        status, _, headers = await read_head(reader)
    assert status == 200
    # the control domain holds the disk read-write, as xapi's with_block_attached_device does
    [vbd] = control_domain_vbds(env)
    vbd_rec = await env.call("VBD.get_record", vbd)
    assert (vbd_rec["VDI"], vbd_rec["mode"], vbd_rec["currently_attached"]) == (vdi, "RW", True)
    assert await env.api.error("VDI.destroy", vdi) == ["VDI_IN_USE", vdi, "destroy"]
    assert await env.api.error("VDI.resize", vdi, 4 * MiB) == ["VDI_IN_USE", vdi, "resize"]
    assert await env.api.error("VDI.clone", vdi, {}) == ["VDI_IN_USE", vdi, "clone"]
    assert await env.api.error("VBD.unplug", vbd) == ["VBD_NOT_UNPLUGGABLE", vbd]
    assert "destroy" not in await env.call("VDI.get_allowed_operations", vdi)
    vm = await new_vm(env.api)
    await new_vbd(env.api, vm, vdi, "0")
    assert await env.api.error("VM.start", vm, False, False) == ["VDI_IN_USE", vdi, "attach"]
    second = await env.put(f"session_id={env.session}&vdi={vdi}", b"w" * 512)
    assert second.status == 400 and (await finished(env, second.task))["error_info"] == ["VDI_IN_USE", vdi, "attach"]
    assert (await env.get(f"session_id={env.session}&vdi={vdi}")).status == 500
    writer.write(new[MiB:])
    await writer.drain()
    async with asyncio.timeout(WAIT):
        await reader.read()
    assert (await finished(env, headers["task-id"]))["status"] == "success"
    assert control_domain_vbds(env) == [] and "destroy" in await env.call("VDI.get_allowed_operations", vdi)
    assert await contents(env, vdi) == new
    await env.call("VM.start", vm, False, False)  # free again
    await env.call("VM.hard_shutdown", vm)


# ---- broken transfers leave nothing behind -------------------------------------------------------
async def test_garbage_and_truncated_images_change_nothing(env: Env, tmp_path: Path) -> None:
    vdi, data = await filled_vdi(env)
    sr = await default_sr(env)
    files = files_of(env, sr)
    raw = tmp_path / "d.raw"
    raw.write_bytes(pattern(2 * MiB, seed=3))
    qcow = tmp_path / "d.qcow2"
    convert(raw, "raw", qcow, "qcow2")
    good = qcow.read_bytes()
    for fmt, body in (("qcow2", b"\x00garbage" * 1000), ("vhd", b"not a vhd" * 100), ("qcow2", good[: len(good) // 2])):
        reply = await env.put(f"session_id={env.session}&vdi={vdi}&format={fmt}", body)
        assert reply.status == 200  # accepted before the body was read, as xapi does
        rec = await finished(env, reply.task)
        assert rec["status"] == "failure" and rec["error_info"][0] == "IMPORT_ERROR", rec["error_info"]
        assert files_of(env, sr) == files and control_domain_vbds(env) == []
    # a qcow2 larger than the VDI
    big = tmp_path / "big.qcow2"
    made = subprocess.run(["qemu-img", "create", "-f", "qcow2", str(big), str(8 * MiB)], capture_output=True)
    assert made.returncode == 0
    reply = await env.put(f"session_id={env.session}&vdi={vdi}&format=qcow2", big.read_bytes())
    assert (await finished(env, reply.task))["error_info"] == ["VDI_TOO_SMALL", vdi, str(8 * MiB)]
    assert await contents(env, vdi) == data and files_of(env, sr) == files


async def cut_upload(e: Env, query: str, first: bytes, total: int, *, chunked: bool = False) -> str:
    """Start an upload, send `first`, then drop the connection; returns the task."""
    reader, writer = await e.open()
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    writer.write(f"PUT /import_raw_vdi?{query} HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n".encode())
    async with asyncio.timeout(WAIT):
        _, _, headers = await read_head(reader)
    writer.write(f"{len(first):x}\r\n".encode() + first + b"\r\n" if chunked else first)
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()
    return headers["task-id"]


async def test_a_client_that_disconnects_mid_upload_leaves_nothing(env: Env) -> None:
    vdi, data = await filled_vdi(env)
    sr = await default_sr(env)
    sr_uuid = await env.call("SR.get_uuid", sr)
    files, vdis = files_of(env, sr), set(await env.call("SR.get_VDIs", sr))
    some = b"\x01" * (MiB + 100)
    piece = struct.pack("<QI", 4096, MiB) + some[: MiB // 2]  # xapi's chunk protocol, a piece cut short
    for query, first, chunked in (
        (f"vdi={vdi}", some, False),
        (f"vdi={vdi}", some, True),
        (f"vdi={vdi}&chunked=true", piece, False),
        (f"sr_uuid={sr_uuid}", some, False),
    ):
        task = await cut_upload(env, f"session_id={env.session}&{query}", first, 2 * MiB, chunked=chunked)
        rec = await finished(env, task)
        assert (rec["status"], rec["error_info"]) == ("failure", ["IMPORT_ERROR_PREMATURE_EOF"]), query
        assert files_of(env, sr) == files and set(await env.call("SR.get_VDIs", sr)) == vdis
        assert control_domain_vbds(env) == [] and not any(work_dir(env.api.ctx).glob("*"))
    assert await contents(env, vdi) == data


async def test_task_cancel_stops_an_upload(env: Env) -> None:
    vdi, data = await filled_vdi(env)
    sr = await default_sr(env)
    files = files_of(env, sr)
    task = await env.call("task.create", "cancel me", "")
    reader, writer = await env.open()
    writer.write(
        f"PUT /import_raw_vdi?session_id={env.session}&vdi={vdi}&task_id={task} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {2 * MiB}\r\n\r\n".encode()
        + b"\x02" * MiB
    )
    async with asyncio.timeout(WAIT):
        assert (await read_head(reader))[0] == 200
        await asyncio.sleep(0.2)
        await env.call("task.cancel", task)
        rec = await finished(env, task)
        async with asyncio.timeout(5.0):  # at once, not after aiohttp's 10 s of lingering
            await reader.read()  # the server ends the answer and closes
    assert (rec["status"], rec["error_info"]) == ("cancelled", ["TASK_CANCELLED", task])
    assert await contents(env, vdi) == data and files_of(env, sr) == files and control_domain_vbds(env) == []


async def test_a_client_that_leaves_mid_export_releases_the_disk(env: Env) -> None:
    vdi, _ = await filled_vdi(env, 48 * MiB)
    reader, writer = await env.open()
    writer.write(f"GET /export_raw_vdi?session_id={env.session}&vdi={vdi} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    async with asyncio.timeout(WAIT):
        _, _, headers = await read_head(reader)
        await reader.readexactly(MiB)
    writer.transport.abort()
    rec = await finished(env, headers["task-id"])
    assert rec["status"] == "failure" and rec["error_info"][0] == "INTERNAL_ERROR", rec["error_info"]
    for _ in range(100):  # the job ends just after the task does
        if control_domain_vbds(env) == [] and not any(work_dir(env.api.ctx).glob("*")):
            break
        await asyncio.sleep(0.05)
    assert control_domain_vbds(env) == [] and not any(work_dir(env.api.ctx).glob("*"))
    await env.call("VDI.destroy", vdi)


async def test_claims_and_work_files_of_a_crashed_daemon_are_cleared_at_start(env: Env) -> None:
    vdi, _ = await filled_vdi(env)
    claim(env.api.ctx, vdi, "RW", "OpaqueRef:gone")
    work_dir(env.api.ctx).mkdir(parents=True, exist_ok=True)
    (work_dir(env.api.ctx) / "half.raw").write_bytes(b"x")
    assert await env.api.error("VDI.destroy", vdi) == ["VDI_IN_USE", vdi, "destroy"]
    await clear_leftovers(env.api.ctx)
    assert control_domain_vbds(env) == [] and not work_dir(env.api.ctx).exists()
    await env.call("VDI.destroy", vdi)


async def test_a_client_that_leaves_once_it_has_everything_is_no_failure(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clients close as soon as they hold Content-Length bytes; the export is a success by then,
    whatever the server still has to tidy up (qemu-nbd to stop, the answer's end to write)."""
    vdi, data = await filled_vdi(env, 4 * MiB, seed=31)
    slow_goodbye = nbd_reader.NbdReader.disconnect

    async def disconnect(self: nbd_reader.NbdReader) -> None:
        await asyncio.sleep(0.5)  # a loaded machine: the tidying up outlasts the client
        await slow_goodbye(self)

    monkeypatch.setattr(nbd_reader.NbdReader, "disconnect", disconnect)
    for fmt in ("raw", "raw", "qcow2"):
        reader, writer = await env.open()
        writer.write(
            f"GET /export_raw_vdi?session_id={env.session}&vdi={vdi}&format={fmt} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        async with asyncio.timeout(WAIT):
            _, _, headers = await read_head(reader)
            body = await reader.readexactly(int(headers["content-length"]))
        writer.transport.abort()
        rec = await finished(env, headers["task-id"])
        assert rec["status"] == "success", rec["error_info"]
        assert fmt != "raw" or body == data
    assert control_domain_vbds(env) == []
