"""What only the file SR and the simulator promise beyond the storage contract suite
(test_storage_contract.py): the file SR's chains, sizes, path checks and crash recovery on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pyxapi.drivers.storage import qemuimg
from pyxapi.drivers.storage.base import (
    Capability,
    InvalidDeviceConfig,
    SRHandle,
    StorageError,
    UnsafePath,
    VDIInUse,
)
from pyxapi.drivers.storage.file import FileStorageDriver
from pyxapi.drivers.storage.sim import SimStorageDriver
from tests.drivers.storage_fixtures import (  # noqa: F401 - qemu_utils: an autouse fixture
    GiB,
    Harness,
    MiB,
    make_vdi,
    new_uuid,
    qemu_utils,
    run,
)

CREATE = Capability.VDI_CREATE


# ---------------------------------------------------------------------------------- file specifics


async def test_file_clone_chain_on_disk(fh: Harness) -> None:
    src = await make_vdi(fh)
    await fh.write(src, 0, 0x5A, MiB)
    result = await fh.driver.clone_vdi(fh.sr, src, new_uuid())
    chain = json.loads(
        run("qemu-img", "info", "--output=json", "--backing-chain", "-f", "qcow2", str(fh.root / result.vdi.location))
    )
    assert [Path(c["filename"]).name for c in chain] == [result.vdi.location, result.base]
    assert chain[0]["backing-filename"] == result.base  # relative: the SR directory can move
    assert chain[0]["backing-filename-format"] == "qcow2"
    base = fh.root / str(result.base)
    assert base.stat().st_mode & 0o222 == 0  # bases are read-only
    assert chain[1]["actual-size"] >= MiB > chain[0]["actual-size"] - 512 * 1024


async def test_file_sizes_are_true(fh: Harness) -> None:
    stat = await fh.driver.stat_sr(fh.sr)
    vfs = os.statvfs(fh.root)
    assert stat.physical_size == vfs.f_blocks * vfs.f_frsize
    location = await make_vdi(fh, GiB)
    await fh.write(location, 0, 0x5A, 8 * MiB)
    info = await fh.driver.stat_vdi(fh.sr, location)
    assert info.physical_utilisation == os.stat(fh.root / location).st_blocks * 512 >= 8 * MiB
    assert (await fh.driver.stat_sr(fh.sr)).physical_utilisation >= 8 * MiB


async def test_file_symlinks_and_foreign_backing_files_are_refused(fh: Harness, tmp_path: Path) -> None:
    outside = tmp_path / "outside.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(outside), "1M")
    (fh.root / "link.qcow2").symlink_to(outside)
    run(
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "/etc/hostname",
        "-F",
        "raw",
        str(fh.root / "sneaky.qcow2"),
        "1M",
    )
    assert await fh.driver.scan(fh.sr) == []
    with pytest.raises(UnsafePath, match="symbolic link"):
        await fh.driver.attach_vdi(fh.sr, "link.qcow2")
    with pytest.raises(UnsafePath, match="outside the SR"):
        await fh.driver.attach_vdi(fh.sr, "sneaky.qcow2")
    with pytest.raises(UnsafePath):
        await fh.driver.destroy_vdi(fh.sr, "link.qcow2")
    assert outside.exists()


@pytest.mark.parametrize("location", ["relative/dir", "/tmp/../etc", "/tmp/./x", "", "/"])
async def test_file_device_config_paths_are_checked(tmp_path: Path, location: str) -> None:
    driver = FileStorageDriver()
    with pytest.raises(InvalidDeviceConfig) as err:
        await driver.create_sr({"location": location}, new_uuid())
    assert err.value.code in ("SR_BACKEND_FAILURE_1", "SR_BACKEND_FAILURE_94")
    assert not Path("/etc/.pyxapi-sr").exists() and not Path("relative").exists()


async def test_file_leftovers_of_a_crash_are_cleaned_on_attach(fh: Harness) -> None:
    (fh.root / ".tmp-deadbeef.qcow2").write_bytes(b"half written")
    await fh.driver.detach_sr(fh.sr)
    await fh.driver.attach_sr(fh.sr)
    assert fh.files() == {".pyxapi-sr"}


async def test_file_clone_interrupted_by_a_crash_is_completed_on_attach(fh: Harness) -> None:
    src = await make_vdi(fh)
    await fh.write(src, 0, 0x5A, MiB)
    new = f"{new_uuid()}.qcow2"
    base = f"{new_uuid()}.base.qcow2"
    for name in (src, new):  # what clone_vdi prepares, then the crash right after the first rename
        run(
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            base,
            "-F",
            "qcow2",
            str(fh.root / f".tmp-branch-{name}"),
            str(64 * MiB),
        )
    (fh.root / src).rename(fh.root / base)
    await fh.driver.detach_sr(fh.sr)
    await fh.driver.attach_sr(fh.sr)
    assert {v.location for v in await fh.driver.scan(fh.sr)} == {src, new}
    assert await fh.read(src, 0, MiB) == await fh.read(new, 0, MiB) == b"\x5a" * MiB
    assert fh.files() == {".pyxapi-sr", src, new, base}


async def test_file_export_reports_progress_and_refuses_live_disks(fh: Harness) -> None:
    location = await make_vdi(fh)
    await fh.write(location, 0, 0x5A, 4 * MiB)
    seen: list[float] = []
    await fh.driver.export_data(fh.sr, location, "vhd", fh.tmp / "x.vhd", seen.append)
    assert seen and seen[-1] == 1.0
    await fh.driver.attach_vdi(fh.sr, location)
    with pytest.raises(VDIInUse):
        await fh.driver.export_data(fh.sr, location, "raw", fh.tmp / "y.raw")


def test_missing_qemu_img_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(StorageError, match="qemu-utils"):
        qemuimg.executable()


# ----------------------------------------------------------------------------------- sim specifics


async def test_sim_refuses_writes_beyond_its_size(tmp_path: Path) -> None:
    driver = SimStorageDriver()
    sr = SRHandle(new_uuid(), {"size": str(4 * MiB)})
    await driver.create_sr(sr.device_config, sr.uuid)
    await driver.attach_sr(sr)
    info = await driver.create_vdi(sr, new_uuid(), 64 * MiB)  # thin: creating is free
    image = tmp_path / "full.raw"
    image.write_bytes(b"\x01" * 8 * MiB)
    with pytest.raises(StorageError) as err:
        await driver.import_data(sr, info.location, image, "raw")
    assert err.value.code == "SR_FULL"
    assert (await driver.stat_vdi(sr, info.location)).physical_utilisation == 0
