"""The iscsi (LUN-per-VDI) driver against a real tgtd in a namespace: probe's XML answers, device_config
errors, LUNs as VDIs with stable identities, attach rules, data in and out of a LUN."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from xml.dom import minidom

import pytest

from pyxapi.drivers.storage.base import SRHandle, StorageError, VDIInUse, VDIMissing, VDITooSmall
from pyxapi.drivers.storage.iscsi import IscsiStorageDriver
from tests.drivers.iscsi_target import IscsiTarget
from tests.drivers.storage_fixtures import (  # noqa: F401 - iscsi_portal: the module's target
    Harness,
    MiB,
    iscsi_portal,
    make_harness,
    make_vdi,
    new_uuid,
    run,
)


@pytest.fixture
async def ih(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    async with make_harness(request, "iscsi", tmp_path) as harness:
        yield harness


async def refused(call: object) -> list[str]:
    with pytest.raises(StorageError) as err:
        await call  # type: ignore[misc]
    return err.value.description


def texts(xml: str, tag: str) -> list[str]:
    return [e.firstChild.data for e in minidom.parseString(xml).getElementsByTagName(tag)]  # type: ignore[union-attr]


async def test_probe_answers_iqns_then_luns(ih: Harness, iscsi_portal: IscsiTarget) -> None:  # noqa: F811
    first = await make_vdi(ih, 16 * MiB)
    await make_vdi(ih, 32 * MiB)
    iqn = ih.sr.device_config["targetIQN"]
    # No targetIQN: SR_BACKEND_FAILURE_96 with the portal's targets, as ISCSISR prints them.
    description = await refused(ih.driver.probe({"target": iscsi_portal.address}))
    assert description[0] == "SR_BACKEND_FAILURE_96"
    assert iqn in texts(description[3], "TargetIQN")
    assert set(texts(description[3], "IPAddress")) == {iscsi_portal.address}
    # targetIQN but no LUN chosen: SR_BACKEND_FAILURE_107 with the LUNs (id, size, SCSIid).
    description = await refused(ih.driver.probe(ih.sr.device_config))
    assert description[0] == "SR_BACKEND_FAILURE_107"
    assert texts(description[3], "LUNid") == ["1", "2"]
    assert texts(description[3], "size") == [str(16 * MiB), str(32 * MiB)]
    scsi_ids = texts(description[3], "SCSIid")
    # A chosen LUN: the SR holds only it, under the same identity scan reports.
    one = {**ih.sr.device_config, "SCSIid": scsi_ids[1]}
    assert await ih.driver.probe(one) == []
    sr = SRHandle(new_uuid(), one)
    await ih.driver.attach_sr(sr)
    [vdi] = await ih.driver.scan(sr)
    assert vdi.location == "LUN2" and vdi.sm_config["SCSIid"] == scsi_ids[1] and vdi.virtual_size == 32 * MiB
    with pytest.raises(VDIMissing):
        await ih.driver.stat_vdi(sr, first)
    await ih.driver.detach_sr(sr)


@pytest.mark.parametrize(
    ("config", "code"),
    [
        ({"targetIQN": "IQN"}, "SR_BACKEND_FAILURE_95"),
        ({"target": "ADDR", "port": "0", "targetIQN": "IQN"}, "SR_BACKEND_FAILURE_142"),
        ({"target": "ADDR", "port": "http", "targetIQN": "IQN"}, "SR_BACKEND_FAILURE_142"),
        ({"target": "no-such-host.invalid", "targetIQN": "IQN"}, "SR_BACKEND_FAILURE_140"),
        ({"target": "HOSTSIDE", "targetIQN": "IQN"}, "SR_BACKEND_FAILURE_141"),
        ({"target": "ADDR"}, "SR_BACKEND_FAILURE_96"),
        ({"target": "ADDR", "targetIQN": "not an iqn"}, "SR_BACKEND_FAILURE_106"),
        ({"target": "ADDR", "targetIQN": "iqn.2026-01.org.example:unknown"}, "SR_BACKEND_FAILURE_83"),
        ({"target": "ADDR", "targetIQN": "IQN", "LUNid": "9"}, "SR_BACKEND_FAILURE_107"),
        ({"target": "ADDR", "targetIQN": "IQN", "LUNid": "x"}, "SR_BACKEND_FAILURE_89"),
    ],
)
async def test_bad_device_config_gets_xenserver_errors(
    ih: Harness,
    iscsi_portal: IscsiTarget,  # noqa: F811
    config: dict[str, str],
    code: str,
) -> None:
    names = {"ADDR": iscsi_portal.address, "HOSTSIDE": iscsi_portal.netns.host_addr}
    names["IQN"] = ih.sr.device_config["targetIQN"]
    device_config = {k: names.get(v, v) for k, v in config.items()}
    driver = IscsiStorageDriver()
    for call in (driver.create_sr(device_config, new_uuid()), driver.attach_sr(SRHandle(new_uuid(), device_config))):
        description = await refused(call)
        assert description[0] == code and len(description) == 4, description


async def test_luns_are_vdis_with_stable_identities(ih: Harness) -> None:
    location = await make_vdi(ih, 16 * MiB)
    [vdi] = await ih.driver.scan(ih.sr)
    assert vdi.location == location == "LUN1" and vdi.format == "raw" and vdi.virtual_size == 16 * MiB
    again = IscsiStorageDriver()  # a restarted daemon finds the same VDI uuid
    await again.attach_sr(ih.sr)
    assert [v.uuid for v in await again.scan(ih.sr)] == [vdi.uuid]
    stat = await ih.driver.stat_sr(ih.sr)
    assert stat.physical_size == 16 * MiB == stat.virtual_allocation
    for bad in ("LUN0", "LUN7"):  # the controller LUN is no disk; LUN7 does not exist
        with pytest.raises(VDIMissing):
            await ih.driver.attach_vdi(ih.sr, bad)


async def test_attach_rules_and_the_datapath_uri(ih: Harness) -> None:
    location = await make_vdi(ih, 8 * MiB)
    attach = await ih.driver.attach_vdi(ih.sr, location)
    iqn = ih.sr.device_config["targetIQN"]
    assert attach.path == f"iscsi://{ih.sr.device_config['target']}:3260/{iqn}/1" and attach.format == "raw"
    with pytest.raises(VDIInUse):
        await ih.driver.attach_vdi(ih.sr, location, read_only=True)
    with pytest.raises(VDIInUse):
        await ih.driver.import_data(ih.sr, location, ih.tmp, "raw")
    assert (await refused(ih.driver.detach_sr(ih.sr)))[0] == "SR_BACKEND_FAILURE_16"
    await ih.driver.detach_vdi(ih.sr, location)
    await ih.driver.attach_vdi(ih.sr, location, read_only=True)
    await ih.driver.attach_vdi(ih.sr, location, read_only=True)
    with pytest.raises(VDIInUse):
        await ih.driver.attach_vdi(ih.sr, location)
    await ih.driver.detach_vdi(ih.sr, location)
    await ih.driver.detach_vdi(ih.sr, location)
    await ih.driver.attach_vdi(ih.sr, location)
    await ih.driver.detach_vdi(ih.sr, location)


async def test_import_overwrites_the_whole_lun_and_exports_back(ih: Harness) -> None:
    location = await make_vdi(ih, 16 * MiB)
    await ih.write(location, 12 * MiB, 0x77, MiB)  # old data beyond the image must not survive
    image = ih.tmp / "disk.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(image), str(8 * MiB))
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", str(image))
    seen: list[float] = []
    info = await ih.driver.import_data(ih.sr, location, image, "qcow2", seen.append)
    assert info.virtual_size == 16 * MiB and seen and seen[-1] == 1.0
    assert await ih.read(location, 0, MiB) == b"\x5a" * MiB
    assert await ih.read(location, 12 * MiB, MiB) == bytes(MiB)
    out = ih.tmp / "out.vhd"
    await ih.driver.export_data(ih.sr, location, "vhd", out)
    back = ih.tmp / "back.raw"
    run("qemu-img", "convert", "-f", "vpc", "-O", "raw", str(out), str(back))
    data = back.read_bytes()
    assert len(data) == 16 * MiB and data[:MiB] == b"\x5a" * MiB and data[MiB:] == bytes(15 * MiB)
    big = ih.tmp / "big.raw"
    big.write_bytes(b"\x01" * 17 * MiB)
    with pytest.raises(VDITooSmall):
        await ih.driver.import_data(ih.sr, location, big, "raw")
    assert await ih.read(location, 0, MiB) == b"\x5a" * MiB  # refused before a byte was written
