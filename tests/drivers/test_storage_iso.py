"""The iso SR: a read-only library of .iso files in a local directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pyxapi.drivers.storage import make_driver
from pyxapi.drivers.storage.base import SRHandle, StorageDriver, StorageError, UnsafePath
from tests.drivers.storage_fixtures import GiB, MiB, new_uuid


@pytest.fixture
async def iso(tmp_path: Path) -> AsyncIterator[tuple[StorageDriver, SRHandle, Path]]:
    lib = tmp_path / "isos"
    lib.mkdir()
    (lib / "debian 12 (netinst).iso").write_bytes(b"\x42" * 4 * MiB)
    (lib / "UPPER.ISO").write_bytes(b"\x43" * MiB)
    (lib / "notes.txt").write_text("not an iso")
    (lib / ".hidden.iso").write_bytes(b"x")
    (lib / "dir.iso").mkdir()
    (tmp_path / "secret.iso").write_bytes(b"secret")
    (lib / "escape.iso").symlink_to(tmp_path / "secret.iso")
    (lib / "alias.iso").symlink_to(lib / "UPPER.ISO")
    driver = make_driver("iso")
    sr = SRHandle(new_uuid(), {"location": str(lib)})
    await driver.create_sr(sr.device_config, sr.uuid)
    await driver.attach_sr(sr)
    yield driver, sr, lib


async def test_iso_scan_finds_only_isos_inside(iso: tuple[StorageDriver, SRHandle, Path]) -> None:
    driver, sr, _ = iso
    found = {v.location: v for v in await driver.scan(sr)}
    assert set(found) == {"debian 12 (netinst).iso", "UPPER.ISO", "alias.iso"}
    disc = found["debian 12 (netinst).iso"]
    assert disc.read_only and disc.content_type == "iso" and disc.virtual_size == 4 * MiB and disc.format == "raw"
    stat = await driver.stat_sr(sr)
    assert stat.content_type == "iso" and stat.virtual_allocation == 6 * MiB


async def test_iso_vdis_are_read_only(iso: tuple[StorageDriver, SRHandle, Path]) -> None:
    driver, sr, lib = iso
    attach = await driver.attach_vdi(sr, "UPPER.ISO", read_only=True)
    assert attach.read_only and attach.format == "raw" and Path(attach.path).read_bytes()[:1] == b"\x43"
    with pytest.raises(StorageError) as err:
        await driver.attach_vdi(sr, "UPPER.ISO")
    assert err.value.description == ["VDI_READONLY", "UPPER.ISO"]
    with pytest.raises(UnsafePath):
        await driver.attach_vdi(sr, "escape.iso", read_only=True)
    with pytest.raises(UnsafePath):
        await driver.stat_vdi(sr, "../secret.iso")
    for call in (
        driver.create_vdi(sr, new_uuid(), GiB),
        driver.destroy_vdi(sr, "UPPER.ISO"),
        driver.clone_vdi(sr, "UPPER.ISO", new_uuid()),
        driver.resize_vdi(sr, "UPPER.ISO", GiB),
        driver.import_data(sr, "UPPER.ISO", lib / "UPPER.ISO", "raw"),
    ):
        with pytest.raises(StorageError) as err:
            await call
        assert err.value.description == ["SR_OPERATION_NOT_SUPPORTED", sr.uuid]
    await driver.detach_vdi(sr, "UPPER.ISO")
    await driver.destroy_sr(sr)
    assert (lib / "UPPER.ISO").exists()  # forgetting a library never deletes its files


@pytest.mark.parametrize(("config", "code"), [({}, 220), ({"location": "isos"}, 226), ({"location": "/no/such"}, 226)])
async def test_iso_device_config_errors(config: dict[str, str], code: int) -> None:
    with pytest.raises(StorageError) as err:
        await make_driver("iso").create_sr(config, new_uuid())
    assert err.value.code == f"SR_BACKEND_FAILURE_{code}"
