"""Disk data is on stable storage before the client is told it was written (drivers/storage/durable.py),
checked end to end in process: PUT /import_raw_vdi (into a VDI, into an SR, xapi's chunk protocol),
VDI.copy (to a new VDI and over an existing one) and PUT /import of an XVA, each on the default file
SR with real qemu-img images. Then what a failed import leaves: the task fails, the VDI keeps its old
contents, and the same upload retried succeeds.

Two checks, as in tests/drivers/test_storage_durability.py: the kernel's page cache (pagecache.py):
when the task or call reports success, no page of the VDI's file is dirty any more; and the order of
the syscalls (syscall_log.py): every name given in the SR directory names data already fsync'ed, and
the directory is fsync'ed after it. The page check alone is not enough where a file is renamed over
an existing one: ext4 (auto_da_alloc) then starts writing the new file out at the rename, so its
pages may be clean by the time they are looked at although nothing waited for the disk.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api import test_vdi_transfer as base
from tests.api.test_vdi_transfer import Env, MiB, convert, default_sr, finished, same_contents, sr_dir, vdi_path
from tests.api.test_vdi_transfer_errors import contents, cut_upload
from tests.drivers.pagecache import dirty_pages
from tests.drivers.syscall_log import Syscalls, inodes
from tests.ops.test_storage_ops import new_vbd, new_vdi
from tests.ops.test_vm_power import new_vm

# The fixtures of the round-trip tests (pytest finds fixtures among module attributes).
api = base.api
env = base.env


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Syscalls]:
    yield Syscalls(monkeypatch)


def result_ref(task: dict[str, str]) -> str:
    return task["result"].removeprefix("<value>").removesuffix("</value>")


async def succeeded(e: Env, task: str) -> dict[str, str]:
    rec = await finished(e, task)
    assert rec["status"] == "success", rec["error_info"]
    return rec


async def test_http_imports_are_on_disk_when_the_task_succeeds(env: Env, calls: Syscalls, tmp_path: Path) -> None:
    sr = await default_sr(env)
    sr_uuid = await env.call("SR.get_uuid", sr)
    root = sr_dir(env, sr)
    # raw into a VDI
    vdi = await new_vdi(env.api, sr, 8 * MiB)
    data = os.urandom(8 * MiB)
    before, mark = inodes(root), calls.mark()
    await succeeded(env, (await env.put(f"session_id={env.session}&vdi={vdi}&format=raw", data)).task)
    assert calls.names_since(mark, root) == [vdi_path(env, vdi).name]
    calls.assert_durable(mark, root, before)
    assert dirty_pages(vdi_path(env, vdi)) == 0
    assert await contents(env, vdi) == data
    # qcow2 into a new VDI of the SR
    raw = tmp_path / "up.raw"
    raw.write_bytes(os.urandom(6 * MiB))
    image = tmp_path / "up.qcow2"
    convert(raw, "raw", image, "qcow2")
    before, mark = inodes(root), calls.mark()
    reply = await env.put(f"session_id={env.session}&sr_uuid={sr_uuid}&format=qcow2", image.read_bytes())
    made = result_ref(await succeeded(env, reply.task))
    assert calls.names_since(mark, root) == [vdi_path(env, made).name]
    calls.assert_durable(mark, root, before)
    assert dirty_pages(vdi_path(env, made)) == 0
    assert same_contents(vdi_path(env, made), "qcow2", raw, "raw")
    # xapi's chunk protocol: pieces written over the current contents
    piece = os.urandom(2 * MiB)
    body = struct.pack("<QI", MiB, len(piece)) + piece + struct.pack("<QI", 0, 0)
    before, mark = inodes(root), calls.mark()
    await succeeded(env, (await env.put(f"session_id={env.session}&vdi={vdi}&chunked=true", body)).task)
    assert calls.names_since(mark, root) == [vdi_path(env, vdi).name]
    calls.assert_durable(mark, root, before)
    assert dirty_pages(vdi_path(env, vdi)) == 0
    assert await contents(env, vdi) == data[:MiB] + piece + data[3 * MiB :]


async def test_vdi_copy_is_on_disk_when_the_call_returns(env: Env, calls: Syscalls) -> None:
    sr = await default_sr(env)
    root = sr_dir(env, sr)
    vdi = await new_vdi(env.api, sr, 8 * MiB)
    data = os.urandom(8 * MiB)
    await succeeded(env, (await env.put(f"session_id={env.session}&vdi={vdi}&format=raw", data)).task)
    before, mark = inodes(root), calls.mark()
    copy = await env.call("VDI.copy", vdi, sr, "OpaqueRef:NULL", "OpaqueRef:NULL")
    assert calls.names_since(mark, root) == [vdi_path(env, copy).name]
    calls.assert_durable(mark, root, before)
    assert dirty_pages(vdi_path(env, copy)) == 0
    into = await new_vdi(env.api, sr, 16 * MiB)  # over an existing VDI's contents
    before, mark = inodes(root), calls.mark()
    assert await env.call("VDI.copy", vdi, "OpaqueRef:NULL", "OpaqueRef:NULL", into) == into
    assert calls.names_since(mark, root) == [vdi_path(env, into).name]
    calls.assert_durable(mark, root, before)
    assert dirty_pages(vdi_path(env, into)) == 0
    assert await contents(env, copy) == data
    assert (await contents(env, into))[: 8 * MiB] == data


async def test_xva_import_disks_are_on_disk_when_the_import_succeeds(env: Env, calls: Syscalls) -> None:
    """The archive's disks are written into new VDIs through qemu-nbd, which flushes (NBD_CMD_FLUSH)
    before the import is done; the new VDIs' files are published like any other."""
    sr = await default_sr(env)
    vm = await new_vm(env.api, name_label="durable xva")
    vdi = await new_vdi(env.api, sr, 8 * MiB)
    await new_vbd(env.api, vm, vdi, "0")
    data = os.urandom(8 * MiB)
    await succeeded(env, (await env.put(f"session_id={env.session}&vdi={vdi}&format=raw", data)).task)
    uuid = await env.call("VM.get_uuid", vm)
    exported = await env.request("GET", f"/export?session_id={env.session}&uuid={uuid}")
    assert exported.status == 200
    await succeeded(env, exported.task)
    root = sr_dir(env, sr)
    before, mark = inodes(root), calls.mark()
    reply = await env.request("PUT", f"/import?session_id={env.session}", exported.body)
    assert reply.status == 200, reply.body
    calls.assert_durable(mark, root, before)
    [imported] = [v for v in await env.call("VM.get_by_name_label", "durable xva") if v != vm]
    [vbd] = await env.call("VM.get_VBDs", imported)
    new = await env.call("VBD.get_VDI", vbd)
    assert new != vdi and calls.names_since(mark, root) == [vdi_path(env, new).name]
    assert dirty_pages(vdi_path(env, new)) == 0
    assert await contents(env, new) == data


async def test_a_failed_import_changes_nothing_and_a_retry_succeeds(env: Env, calls: Syscalls, tmp_path: Path) -> None:
    sr = await default_sr(env)
    vdi = await new_vdi(env.api, sr, 4 * MiB)
    old = os.urandom(4 * MiB)
    await succeeded(env, (await env.put(f"session_id={env.session}&vdi={vdi}&format=raw", old)).task)
    new = os.urandom(4 * MiB)
    # the client goes away half-way through
    task = await cut_upload(env, f"session_id={env.session}&vdi={vdi}&format=raw", new[: 2 * MiB], len(new))
    rec = await finished(env, task)
    assert (rec["status"], rec["error_info"]) == ("failure", ["IMPORT_ERROR_PREMATURE_EOF"])
    assert await contents(env, vdi) == old
    # a qcow2 cut short: refused whole
    raw = tmp_path / "new.raw"
    raw.write_bytes(new)
    image = tmp_path / "new.qcow2"
    convert(raw, "raw", image, "qcow2")
    body = image.read_bytes()
    rec = await finished(env, (await env.put(f"session_id={env.session}&vdi={vdi}&format=qcow2", body[:-MiB])).task)
    assert rec["status"] == "failure" and rec["error_info"][0] == "IMPORT_ERROR", rec["error_info"]
    assert await contents(env, vdi) == old
    # the same upload again, whole: done, and on disk
    root = sr_dir(env, sr)
    before, mark = inodes(root), calls.mark()
    await succeeded(env, (await env.put(f"session_id={env.session}&vdi={vdi}&format=qcow2", body)).task)
    calls.assert_durable(mark, root, before)
    assert dirty_pages(vdi_path(env, vdi)) == 0
    assert await contents(env, vdi) == new
