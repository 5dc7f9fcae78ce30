"""The lvm driver on this kernel: no device-mapper, so SR.create/probe/attach are refused with xapi's LVM
errors naming the reason, on a real loop device, after the device_config checks; and what it says on a
host where device-mapper exists (paths given to the driver) so the check itself is shown to decide."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyxapi.drivers.storage import make_driver
from pyxapi.drivers.storage.base import SRHandle, StorageError
from pyxapi.drivers.storage.lvm import LvmStorageDriver, device_mapper_problem
from tests.drivers.nfs_server import need
from tests.drivers.storage_fixtures import new_uuid


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    need("losetup")
    backing = tmp_path / "pv.img"
    with open(backing, "wb") as f:
        f.truncate(64 * 1024**2)
    device = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


async def refused(call: object) -> list[str]:
    with pytest.raises(StorageError) as err:
        await call  # type: ignore[misc]
    return err.value.description


def test_this_kernel_has_no_device_mapper() -> None:
    problem = device_mapper_problem()
    assert problem is not None and "device-mapper" in problem
    assert not Path("/dev/mapper/control").exists()


async def test_create_probe_attach_name_the_missing_device_mapper(loop_device: str) -> None:
    driver = make_driver("lvm")
    config = {"device": loop_device}
    for call, code in (
        (driver.create_sr(config, new_uuid()), "SR_BACKEND_FAILURE_77"),
        (driver.probe(config), "SR_BACKEND_FAILURE_52"),
        (driver.attach_sr(SRHandle(new_uuid(), config)), "SR_BACKEND_FAILURE_52"),
    ):
        description = await refused(call)
        assert description[0] == code and "device-mapper" in description[2], description
    # Nothing was written to the device: no LVM label appeared.
    head = Path(loop_device).read_bytes()[:4096]
    assert b"LABELONE" not in head and head == bytes(4096)
    assert driver.capabilities == {"SR_PROBE"}  # no VDI capability is claimed


@pytest.mark.parametrize(
    ("device", "code"),
    [("", "SR_BACKEND_FAILURE_90"), ("/etc/hostname", "SR_BACKEND_FAILURE_91"), ("sda", "SR_BACKEND_FAILURE_91")],
)
async def test_device_config_is_checked_first(device: str, code: str) -> None:
    config = {"device": device} if device else {}
    assert (await refused(make_driver("lvm").create_sr(config, new_uuid())))[0] == code


async def test_with_device_mapper_present_the_reason_changes(loop_device: str, tmp_path: Path) -> None:
    misc, control = tmp_path / "misc", tmp_path / "control"
    misc.write_text(" 63 device-mapper\n")
    control.touch()
    assert device_mapper_problem(control, misc) is None
    description = await refused(LvmStorageDriver(control, misc).create_sr({"device": loop_device}, new_uuid()))
    assert description[0] == "SR_BACKEND_FAILURE_38" and "not implemented" in description[2]
    control.unlink()
    description = await refused(LvmStorageDriver(control, misc).create_sr({"device": loop_device}, new_uuid()))
    assert description[0] == "SR_BACKEND_FAILURE_77" and "control is missing" in description[2]
