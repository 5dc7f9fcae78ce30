"""The nfs driver's own rules, against a real nfs-ganesha in a namespace (the contract suite covers the
VDI life cycle): XenServer's device_config errors, probe's answers, chains on the export, unsafe chains."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from xml.dom import minidom

import pytest

from pyxapi.drivers.storage.base import SRHandle, StorageError, UnsafePath
from pyxapi.drivers.storage.nfs import NfsStorageDriver
from tests.drivers.nfs_server import NfsServer
from tests.drivers.storage_fixtures import (  # noqa: F401 - nfs_share: the module's server
    GiB,
    Harness,
    MiB,
    make_harness,
    make_vdi,
    new_uuid,
    nfs_share,
    run,
)


@pytest.fixture
async def nh(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    async with make_harness(request, "nfs", tmp_path) as harness:
        yield harness


def served(share: NfsServer) -> set[str]:
    """Everything on the export, seen from the server's side."""
    return {str(p.relative_to(share.export)) for p in share.export.rglob("*")}


async def refused(call: object) -> list[str]:
    with pytest.raises(StorageError) as err:
        await call  # type: ignore[misc]
    return err.value.description


@pytest.mark.parametrize(
    ("config", "code", "words"),
    [
        ({"serverpath": "/x"}, "SR_BACKEND_FAILURE_102", "missing the server parameter"),
        ({"server": "SERVER"}, "SR_BACKEND_FAILURE_101", "missing the serverpath parameter"),
        ({"server": "SERVER", "serverpath": "relative"}, "SR_BACKEND_FAILURE_103", "serverpath argument"),
        ({"server": "SERVER", "serverpath": "/a/../b"}, "SR_BACKEND_FAILURE_103", "serverpath argument"),
        ({"server": "SERVER", "serverpath": "EXPORT", "nfsversion": "2"}, "SR_BACKEND_FAILURE_72", "nfsversion"),
        ({"server": "no-such-host.invalid", "serverpath": "/x"}, "SR_BACKEND_FAILURE_140", "DNS name"),
        ({"server": "bad host!", "serverpath": "/x"}, "SR_BACKEND_FAILURE_140", "DNS name"),
        ({"server": "HOSTSIDE", "serverpath": "/x"}, "SR_BACKEND_FAILURE_108", "NFS service"),
        ({"server": "SERVER", "serverpath": "/no/such/export"}, "SR_BACKEND_FAILURE_73", "NFS mount error"),
    ],
)
async def test_bad_device_config_gets_xenserver_errors_and_leaves_nothing(
    nfs_share: NfsServer,  # noqa: F811
    config: dict[str, str],
    code: str,
    words: str,
) -> None:
    names = {"SERVER": nfs_share.server, "HOSTSIDE": nfs_share.netns.host_addr, "EXPORT": str(nfs_share.export)}
    device_config = {k: names.get(v, v) for k, v in config.items()}
    before = served(nfs_share)
    driver = NfsStorageDriver()
    for call in (driver.create_sr(device_config, new_uuid()), driver.attach_sr(SRHandle(new_uuid(), device_config))):
        description = await refused(call)
        assert description[0] == code and words in description[2], description
        assert len(description) == 4
    assert served(nfs_share) == before


async def test_probe_lists_exports_then_srs(nh: Harness, nfs_share: NfsServer) -> None:  # noqa: F811
    # Without serverpath: NFSSR's answer, SR_BACKEND_FAILURE_101 carrying the export list as XML.
    description = await refused(nh.driver.probe({"server": nfs_share.server}))
    assert description[0] == "SR_BACKEND_FAILURE_101"
    doc = minidom.parseString(description[3])
    paths = [e.firstChild.data for e in doc.getElementsByTagName("Path")]  # type: ignore[union-attr]
    targets = {e.firstChild.data for e in doc.getElementsByTagName("Target")}  # type: ignore[union-attr]
    assert paths == [str(nfs_share.export)] and targets == {nfs_share.server}
    # With it: the SRs in that directory, by uuid (a second one appears once created).
    other = new_uuid()
    await nh.driver.create_sr(nh.sr.device_config, other)
    found = await nh.driver.probe(nh.sr.device_config)
    assert sorted(p.uuid for p in found) == sorted([nh.sr.uuid, other])
    assert all(p.info.physical_size > 0 for p in found)
    # A non-empty directory of that name is somebody's: SR_EXISTS, nothing touched.
    stranger = new_uuid()
    (Path(nh.sr.device_config["serverpath"]) / stranger).mkdir()
    (Path(nh.sr.device_config["serverpath"]) / stranger / "data").write_text("keep me")
    assert (await refused(nh.driver.create_sr(nh.sr.device_config, stranger)))[0] == "SR_BACKEND_FAILURE_42"
    assert (Path(nh.sr.device_config["serverpath"]) / stranger / "data").read_text() == "keep me"


async def test_clone_chain_lives_on_the_export(nh: Harness) -> None:
    src = await make_vdi(nh, GiB)
    await nh.write(src, 0, 0x5A, MiB)
    result = await nh.driver.clone_vdi(nh.sr, src, new_uuid())
    attach = await nh.driver.attach_vdi(nh.sr, result.vdi.location, read_only=True)
    await nh.driver.detach_vdi(nh.sr, result.vdi.location)
    assert attach.is_uri and attach.path == f"{nh.url_root}/{result.vdi.location}" and attach.format == "qcow2"
    chain = json.loads(run("qemu-img", "info", "--output=json", "--backing-chain", "-f", "qcow2", attach.path))
    assert chain[0]["backing-filename"] == f"{nh.url_root}/{result.base}"  # QEMU's nfs driver needs it absolute
    assert chain[0]["backing-filename-format"] == "qcow2" and len(chain) == 2
    base = nh.root / str(result.base)
    assert base.stat().st_mode & 0o222 == 0  # read-only on the server
    assert chain[1]["actual-size"] >= MiB > chain[0]["actual-size"] - 512 * 1024
    stat = await nh.driver.stat_sr(nh.sr)
    vfs = os.statvfs(nh.root)
    assert stat.physical_size == vfs.f_blocks * vfs.f_frsize  # true sizes, through the server
    assert stat.virtual_allocation == 2 * GiB and stat.physical_utilisation >= MiB


async def test_images_pointing_outside_the_sr_are_refused(nh: Harness, tmp_path: Path) -> None:
    for name, backing in (("host-file.qcow2", "/etc/hostname"), ("foreign.qcow2", "nfs://192.0.2.1/x/y.qcow2")):
        run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "raw", f"{nh.url_root}/{name}", "1M")
        with pytest.raises(UnsafePath, match="outside the SR"):
            await nh.driver.attach_vdi(nh.sr, name)
    (nh.root / "sub").mkdir()
    assert await nh.driver.scan(nh.sr) == []  # neither is offered as a VDI


async def test_nfs_version_4_for_file_operations(nh: Harness, nfs_share: NfsServer, tmp_path: Path) -> None:  # noqa: F811
    serverpath = nfs_share.export / f"v4-{new_uuid()[:8]}"
    serverpath.mkdir()
    config = {**nfs_share.device_config(serverpath), "nfsversion": "4"}
    sr = SRHandle(new_uuid(), config)
    await nh.driver.create_sr(config, sr.uuid)
    await nh.driver.attach_sr(sr)
    info = await nh.driver.create_vdi(sr, new_uuid(), 16 * MiB)
    assert [v.location for v in await nh.driver.scan(sr)] == [info.location]
    await nh.driver.destroy_vdi(sr, info.location)
    await nh.driver.destroy_sr(sr)
    assert list(serverpath.iterdir()) == []
