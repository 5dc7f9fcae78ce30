"""One contract suite for the storage drivers: the simulator, the real file SR, and the shared nfs
(against nfs-ganesha) and iscsi (against tgtd) SRs, each server in a namespace of its own.

Real qemu-img/qemu-io and real files in pytest tmp dirs. Missing qemu-utils is a test FAILURE, never a
skip: the drivers are not done unless they run against the real tools. A test marked @needs(...) runs on
the drivers declaring those capabilities; test_undeclared_capabilities_are_refused holds the others to
refusing them (storage_fixtures.py).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pyxapi.drivers.storage import make_driver, qemuimg
from pyxapi.drivers.storage.base import (
    Capability,
    ImportFailed,
    InvalidUuid,
    SRInUse,
    SRNotAttached,
    SRNotEmpty,
    StorageDriver,
    StorageError,
    UnsafePath,
    VDIInUse,
    VDIMissing,
    VDITooSmall,
)
from pyxapi.drivers.storage.transfer import export_stream
from pyxapi.model.schema import load_model
from tests.drivers.storage_fixtures import (  # noqa: F401 - nfs_share/iscsi_portal/qemu_utils: fixtures
    GiB,
    Harness,
    MiB,
    TiB,
    iscsi_portal,
    kinds_for,
    make_harness,
    make_vdi,
    needs,
    new_uuid,
    nfs_share,
    qemu_utils,
    run,
)

CREATE = Capability.VDI_CREATE


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "h" in metafunc.fixturenames:
        metafunc.parametrize("h", kinds_for(metafunc.function), indirect=True)


@pytest.fixture
async def h(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    async with make_harness(request, request.param, tmp_path) as harness:
        yield harness


# ------------------------------------------------------------------------------------------ SR life


@needs(CREATE, Capability.VDI_CLONE, Capability.VDI_SNAPSHOT, Capability.VDI_RESIZE)
async def test_driver_describes_itself(h: Harness) -> None:
    assert isinstance(h.driver, StorageDriver)
    info = h.driver.sm_info
    assert info.sr_type == h.driver.sr_type == h.kind
    for cap in (Capability.VDI_CREATE, Capability.VDI_CLONE, Capability.VDI_SNAPSHOT, Capability.VDI_RESIZE):
        assert cap in info.capabilities and info.features[cap] == 1
    assert info.vendor and info.copyright and info.version


@needs(CREATE)
async def test_sr_create_attach_stat_probe(h: Harness) -> None:
    stat = await h.driver.stat_sr(h.sr)
    assert stat.physical_size > 0 and stat.virtual_allocation == 0
    found = await h.driver.probe(h.sr.device_config)
    assert [p.uuid for p in found] == [h.sr.uuid]
    with pytest.raises(StorageError):  # the same place cannot hold a second SR
        await h.driver.create_sr(h.sr.device_config, h.sr.uuid)


@needs(CREATE)
async def test_operations_need_an_attached_sr(h: Harness) -> None:
    await h.driver.detach_sr(h.sr)
    with pytest.raises(SRNotAttached) as err:
        await h.driver.create_vdi(h.sr, new_uuid(), GiB)
    assert err.value.description == ["SR_NOT_ATTACHED", h.sr.uuid]
    await h.driver.attach_sr(h.sr)
    assert await h.driver.scan(h.sr) == []


@needs(Capability.VDI_DELETE)
async def test_destroy_sr_with_vdis_is_refused(h: Harness) -> None:
    location = await make_vdi(h)
    with pytest.raises(SRNotEmpty) as err:
        await h.driver.destroy_sr(h.sr)
    assert err.value.description == ["SR_NOT_EMPTY"]
    assert [v.location for v in await h.driver.scan(h.sr)] == [location]
    await h.driver.destroy_vdi(h.sr, location)
    await h.driver.destroy_sr(h.sr)
    if h.sees_files:
        assert not h.root.exists()


# ------------------------------------------------------------------------------------------- VDIs


@needs(CREATE, Capability.THIN_PROVISIONING)
async def test_create_10gib_vdi_is_thin(h: Harness) -> None:
    info = await h.driver.create_vdi(h.sr, vid := new_uuid(), 10 * GiB)
    assert info.virtual_size == 10 * GiB and info.format == "qcow2" and info.uuid == vid
    assert info.physical_utilisation < 4 * MiB and not info.read_only and info.parent is None
    assert [v.location for v in await h.driver.scan(h.sr)] == [info.location]
    stat = await h.driver.stat_sr(h.sr)
    assert stat.virtual_allocation == 10 * GiB and stat.physical_utilisation < 4 * MiB
    raw = await h.driver.create_vdi(h.sr, new_uuid(), 3 * MiB + 1, "raw")
    assert raw.format == "raw" and raw.virtual_size == 3 * MiB + 512  # whole sectors, like qemu


@needs(CREATE, Capability.VDI_RESIZE)
async def test_disks_beyond_2tib(h: Harness) -> None:
    location = (await h.driver.create_vdi(h.sr, new_uuid(), 3 * TiB)).location
    await h.write(location, 3 * TiB - MiB, 0x77, MiB)
    grown = await h.driver.resize_vdi(h.sr, location, 4 * TiB)
    assert grown.virtual_size == 4 * TiB
    assert await h.read(location, 3 * TiB - MiB, MiB) == b"\x77" * MiB


@needs(Capability.VDI_CLONE)
async def test_clone_is_linked_and_isolated(h: Harness) -> None:
    src = await make_vdi(h, 10 * GiB)
    await h.write(src, 0, 0x5A, MiB)
    result = await h.driver.clone_vdi(h.sr, src, new_uuid())
    clone = result.vdi
    # O(1): both sides are empty overlays on one hidden base holding the data; nothing was copied.
    assert result.base and clone.parent == result.source.parent == result.base
    assert clone.physical_utilisation < MiB and result.source.physical_utilisation < MiB
    assert clone.virtual_size == 10 * GiB and not clone.is_a_snapshot
    assert result.source_repointed
    assert await h.read(clone.location, 0, MiB) == b"\x5a" * MiB
    await h.write(src, 0, 0x11, 64 * 1024)
    await h.write(clone.location, MiB - 64 * 1024, 0x22, 64 * 1024)
    assert await h.read(clone.location, 0, 64 * 1024) == b"\x5a" * 65536
    assert await h.read(src, MiB - 64 * 1024, 64 * 1024) == b"\x5a" * 65536
    assert {v.location for v in await h.driver.scan(h.sr)} == {src, clone.location}  # the base is hidden


@needs(Capability.VDI_CLONE)
async def test_clone_time_does_not_grow_with_size(h: Harness) -> None:
    timings = []
    for size in (GiB, 20 * GiB):
        location = await make_vdi(h, size)
        await h.write(location, 0, 0x33, 4 * MiB)
        start = time.monotonic()
        result = await h.driver.clone_vdi(h.sr, location, new_uuid())
        timings.append(time.monotonic() - start)
        assert result.vdi.physical_utilisation < MiB
    assert max(timings) < 2.0


@needs(Capability.VDI_SNAPSHOT, Capability.VDI_DELETE)
async def test_snapshot_keeps_point_in_time(h: Harness) -> None:
    src = await make_vdi(h)
    await h.write(src, 0, 0x5A, MiB)
    result = await h.driver.snapshot_vdi(h.sr, src, new_uuid())
    snap = result.vdi
    assert snap.is_a_snapshot and snap.snapshot_of == src and snap.parent == result.base
    await h.write(src, 0, 0x11, MiB)
    assert await h.read(snap.location, 0, MiB) == b"\x5a" * MiB
    assert await h.read(src, 0, MiB) == b"\x11" * MiB
    second = await h.driver.snapshot_vdi(h.sr, src, new_uuid())
    await h.driver.destroy_vdi(h.sr, src)
    assert await h.read(snap.location, 0, MiB) == b"\x5a" * MiB
    assert await h.read(second.vdi.location, 0, MiB) == b"\x11" * MiB
    await h.driver.destroy_vdi(h.sr, snap.location)
    await h.driver.destroy_vdi(h.sr, second.vdi.location)
    # Every hidden base went with its last child.
    assert await h.driver.scan(h.sr) == []
    assert (await h.driver.stat_sr(h.sr)).physical_utilisation < MiB
    if h.sees_files:
        assert h.files() == {".pyxapi-sr"}


@needs(Capability.VDI_SNAPSHOT, Capability.VDI_RESIZE)
async def test_coalesce_keeps_chains_short(h: Harness) -> None:
    src = await make_vdi(h)
    await h.write(src, 0, 0x5A, MiB)
    for _ in range(3):  # a daily backup: snapshot, copy it away, delete it
        snap = await h.driver.snapshot_vdi(h.sr, src, new_uuid())
        await h.write(src, MiB, 0x11, MiB)
        await h.driver.destroy_vdi(h.sr, snap.vdi.location)
    assert (await h.driver.stat_vdi(h.sr, src)).parent is not None
    await h.driver.resize_vdi(h.sr, src, 128 * MiB)  # the leaf outgrows its bases
    await h.driver.attach_vdi(h.sr, src)
    assert await h.driver.coalesce(h.sr) == []  # never under a running disk
    await h.driver.detach_vdi(h.sr, src)
    assert len(await h.driver.coalesce(h.sr)) == 3
    info = await h.driver.stat_vdi(h.sr, src)
    assert info.parent is None and info.virtual_size == 128 * MiB
    assert await h.read(src, 0, 2 * MiB) == b"\x5a" * MiB + b"\x11" * MiB
    if h.sees_files:
        assert h.files() == {".pyxapi-sr", src}
    # With two children left, a base stays.
    clone = await h.driver.clone_vdi(h.sr, src, new_uuid())
    assert await h.driver.coalesce(h.sr) == []
    assert (await h.driver.stat_vdi(h.sr, clone.vdi.location)).parent == clone.base


@needs(CREATE, Capability.VDI_CLONE)
async def test_raw_vdis_clone_by_full_copy(h: Harness) -> None:
    src = await make_vdi(h, 8 * MiB, "raw")
    await h.write(src, 0, 0x44, MiB)
    result = await h.driver.clone_vdi(h.sr, src, new_uuid())
    assert result.vdi.format == "raw" and result.base is None and not result.source_repointed
    await h.write(src, 0, 0x00, MiB)
    assert await h.read(result.vdi.location, 0, MiB) == b"\x44" * MiB


@needs(Capability.VDI_RESIZE)
async def test_resize_grows_never_shrinks(h: Harness) -> None:
    location = await make_vdi(h, GiB)
    await h.write(location, 0, 0x5A, MiB)
    info = await h.driver.resize_vdi(h.sr, location, 2 * GiB)
    assert info.virtual_size == 2 * GiB
    assert (await h.driver.stat_vdi(h.sr, location)).virtual_size == 2 * GiB
    assert await h.read(location, 0, MiB) == b"\x5a" * MiB
    with pytest.raises(VDITooSmall) as err:
        await h.driver.resize_vdi(h.sr, location, GiB)
    assert err.value.description == ["VDI_TOO_SMALL", location, str(2 * GiB)]
    await h.driver.attach_vdi(h.sr, location)
    with pytest.raises(VDIInUse):
        await h.driver.resize_vdi(h.sr, location, 3 * GiB)
    online = await h.driver.resize_vdi(h.sr, location, 3 * GiB, online=True)
    assert online.virtual_size == 3 * GiB
    await h.driver.detach_vdi(h.sr, location)


@needs(Capability.VDI_DELETE)
async def test_attach_rules(h: Harness) -> None:
    location = await make_vdi(h)
    attach = await h.driver.attach_vdi(h.sr, location)
    assert attach.format == "qcow2" and not attach.read_only
    if h.kind == "file":
        assert attach.path == str(h.root.resolve() / location) and Path(attach.path).is_file()
    with pytest.raises(VDIInUse):
        await h.driver.attach_vdi(h.sr, location)
    with pytest.raises(VDIInUse) as err:
        await h.driver.destroy_vdi(h.sr, location)
    assert err.value.description == ["VDI_IN_USE", location, "destroy"]
    with pytest.raises(SRInUse):
        await h.driver.detach_sr(h.sr)
    await h.driver.detach_vdi(h.sr, location)
    await h.driver.attach_vdi(h.sr, location, read_only=True)
    await h.driver.attach_vdi(h.sr, location, read_only=True)  # readers share
    await h.driver.detach_vdi(h.sr, location)
    await h.driver.detach_vdi(h.sr, location)
    await h.driver.destroy_vdi(h.sr, location)
    with pytest.raises(VDIMissing):
        await h.driver.stat_vdi(h.sr, location)


@needs(Capability.VDI_CLONE)
async def test_scan_finds_images_added_behind_our_back(h: Harness) -> None:
    h.add_foreign("disk-from-admin.qcow2", 2 * GiB)
    found = {v.location: v for v in await h.driver.scan(h.sr)}
    assert found["disk-from-admin.qcow2"].virtual_size == 2 * GiB
    assert found["disk-from-admin.qcow2"].uuid is None
    clone = await h.driver.clone_vdi(h.sr, "disk-from-admin.qcow2", new_uuid())
    assert clone.vdi.virtual_size == 2 * GiB


@needs(Capability.VDI_SNAPSHOT, Capability.VDI_COPY)
async def test_copy_is_full_and_independent(h: Harness) -> None:
    src = await make_vdi(h)
    await h.write(src, 0, 0x5A, MiB)
    snap = await h.driver.snapshot_vdi(h.sr, src, new_uuid())
    seen: list[float] = []
    copy = await h.driver.copy_vdi(h.sr, snap.vdi.location, h.sr, new_uuid(), seen.append)
    assert copy.parent is None and copy.virtual_size == 64 * MiB and not copy.is_a_snapshot
    assert seen and seen[-1] == 1.0
    await h.driver.destroy_vdi(h.sr, snap.vdi.location)
    await h.driver.destroy_vdi(h.sr, src)
    assert await h.read(copy.location, 0, MiB) == b"\x5a" * MiB


# ------------------------------------------------------------------------------------ import/export


@pytest.mark.parametrize("fmt", ["raw", "vhd", "qcow2"])
@needs(CREATE)
async def test_export_import_roundtrip(h: Harness, fmt: str) -> None:
    src = await make_vdi(h)
    await h.write(src, 0, 0x5A, MiB)
    await h.write(src, 40 * MiB, 0xC3, 2 * MiB)
    exported = h.tmp / f"disk.{fmt}"
    await h.driver.export_data(h.sr, src, fmt, exported)  # type: ignore[arg-type]
    info = json.loads(run("qemu-img", "info", "--output=json", "-f", qemuimg.QEMU_FORMAT[fmt], str(exported)))
    assert info["virtual-size"] == 64 * MiB and "backing-filename" not in info
    new = await h.driver.import_new_vdi(h.sr, new_uuid(), exported, fmt)  # type: ignore[arg-type]
    assert new.virtual_size == 64 * MiB
    into = await make_vdi(h, 128 * MiB)
    await h.driver.import_data(h.sr, into, exported, fmt)  # type: ignore[arg-type]
    assert (await h.driver.stat_vdi(h.sr, into)).virtual_size == 128 * MiB  # keeps its own size
    a, b, c = h.tmp / "a.raw", h.tmp / "b.raw", h.tmp / "c.raw"
    await h.driver.export_data(h.sr, src, "raw", a)
    await h.driver.export_data(h.sr, new.location, "raw", b)
    await h.driver.export_data(h.sr, into, "raw", c)
    run("qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", str(a), str(b))
    run("qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", str(a), str(c))  # extra tail must be zeros
    run("qemu-img", "compare", "-q", "-f", "raw", "-F", qemuimg.QEMU_FORMAT[fmt], str(a), str(exported))
    if h.sees_files:
        run("qemu-img", "compare", "-q", "-f", "qcow2", "-F", "qcow2", str(h.root / src), str(h.root / new.location))


async def test_export_as_a_stream(h: Harness) -> None:
    location = await make_vdi(h, 8 * MiB)
    await h.write(location, MiB, 0x5A, MiB)
    data = b"".join([chunk async for chunk in export_stream(h.driver, h.sr, location, "raw", str(h.tmp))])
    assert len(data) == 8 * MiB and data[MiB : 2 * MiB] == b"\x5a" * MiB and data[:MiB] == bytes(MiB)
    assert os.listdir(h.tmp) == []  # the temporary export is gone


@needs(CREATE)
async def test_import_from_a_stream(h: Harness) -> None:
    async def body() -> AsyncIterator[bytes]:
        for byte in (0x01, 0x02):
            yield bytes([byte]) * MiB

    info = await h.driver.import_new_vdi(h.sr, new_uuid(), body(), "raw")
    assert info.virtual_size == 2 * MiB
    assert await h.read(info.location, MiB, MiB) == b"\x02" * MiB
    assert h.files() - {".pyxapi-sr", info.location} == set()  # the spool file is gone


@pytest.mark.parametrize("damage", ["truncated-qcow2", "truncated-vhd", "garbage-qcow2", "backing-qcow2"])
@needs(CREATE)
async def test_bad_images_are_refused_and_leave_nothing(h: Harness, damage: str) -> None:
    src = await make_vdi(h, 16 * MiB)
    await h.write(src, 0, 0x5A, 8 * MiB)
    fmt = "vhd" if "vhd" in damage else "qcow2"
    image = h.tmp / f"bad.{fmt}"
    if damage.startswith("truncated"):
        await h.driver.export_data(h.sr, src, fmt, image)  # type: ignore[arg-type]
        with open(image, "r+b") as f:
            f.truncate(os.path.getsize(image) // 2)
    elif damage == "garbage-qcow2":
        image.write_bytes(b"QFI\xfb" + os.urandom(4096))
    else:  # a valid qcow2 whose backing file is a host file: importing it would leak that file
        run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", str(image), "1M")
    before = await h.driver.scan(h.sr)
    files_before = h.files()
    with pytest.raises(ImportFailed) as err:
        await h.driver.import_new_vdi(h.sr, new_uuid(), image, fmt)  # type: ignore[arg-type]
    assert err.value.code == "IMPORT_ERROR" and len(err.value.params) == 1
    with pytest.raises(ImportFailed):
        await h.driver.import_data(h.sr, src, image, fmt)  # type: ignore[arg-type]
    assert await h.driver.scan(h.sr) == before and h.files() == files_before
    assert await h.read(src, 0, MiB) == b"\x5a" * MiB


async def test_import_larger_than_vdi_is_refused(h: Harness) -> None:
    small = await make_vdi(h, 8 * MiB)
    image = h.tmp / "big.raw"
    with open(image, "wb") as f:
        f.truncate(16 * MiB)
    with pytest.raises(VDITooSmall) as err:
        await h.driver.import_data(h.sr, small, image, "raw")
    assert err.value.params == [small, str(16 * MiB)]


# ------------------------------------------------------------------------------------------ safety


@pytest.mark.parametrize(
    "location",
    ["../escape.qcow2", "/etc/passwd", "sub/dir.qcow2", ".hidden.qcow2", "disk.txt", "..", "a..b.qcow2", "x y.qcow2"],
)
async def test_unsafe_locations_are_rejected(h: Harness, location: str) -> None:
    for call in (
        h.driver.stat_vdi(h.sr, location),
        h.driver.destroy_vdi(h.sr, location),
        h.driver.attach_vdi(h.sr, location),
        h.driver.clone_vdi(h.sr, location, new_uuid()),
        h.driver.import_data(h.sr, location, h.tmp, "raw"),
    ):
        with pytest.raises(UnsafePath) as err:
            await call
        assert err.value.code == "INVALID_VALUE" and err.value.params[0] == "location"


@pytest.mark.parametrize("bad", ["../../etc/x", "not-a-uuid", "5A1F7C56-1C8B-4B8E-9E4B-1D0D3C2A4F10"])
@needs(CREATE)
async def test_new_vdi_names_must_be_uuids(h: Harness, bad: str) -> None:
    files = h.files()
    with pytest.raises(InvalidUuid) as err:
        await h.driver.create_vdi(h.sr, bad, GiB)
    assert err.value.description == ["UUID_INVALID", "VDI", bad]
    assert h.files() == files and await h.driver.scan(h.sr) == []


async def test_undeclared_capabilities_are_refused(h: Harness) -> None:
    """Capabilities are the contract: what a driver does not declare, it refuses with xapi's error."""
    caps = h.driver.capabilities
    assert caps <= set(Capability) and Capability.VDI_ATTACH in caps and Capability.VDI_DETACH in caps
    assert h.driver.sm_info.capabilities == caps and h.driver.sm_info.features == {c: 1 for c in caps}
    location = await make_vdi(h, 8 * MiB)
    await h.write(location, 0, 0x5A, MiB)  # every kind carries data
    assert await h.read(location, 0, MiB) == b"\x5a" * MiB
    calls = {
        Capability.VDI_CREATE: lambda: h.driver.create_vdi(h.sr, new_uuid(), MiB),
        Capability.VDI_DELETE: lambda: h.driver.destroy_vdi(h.sr, location),
        Capability.VDI_CLONE: lambda: h.driver.clone_vdi(h.sr, location, new_uuid()),
        Capability.VDI_SNAPSHOT: lambda: h.driver.snapshot_vdi(h.sr, location, new_uuid()),
        Capability.VDI_RESIZE: lambda: h.driver.resize_vdi(h.sr, location, 16 * MiB),
    }
    for cap, call in calls.items():
        if cap not in caps:
            with pytest.raises(StorageError) as err:
                await call()
            assert err.value.description == ["SR_OPERATION_NOT_SUPPORTED", h.sr.uuid], cap
    assert {v.location for v in await h.driver.scan(h.sr)} == {location}  # nothing was made or lost


def test_errors_match_the_catalogue() -> None:
    catalogue = load_model().errors
    import pyxapi.drivers.storage.base as base

    samples: list[StorageError] = [
        base.SRNotEmpty(),
        base.SRFull(1, 2),
        base.SRNotAttached("sr"),
        base.UnsafePath("x", "y"),
        base.InvalidUuid("VDI", "x"),
        base.OperationNotSupported("sr"),
        base.VDIMissing("sr", "x"),
        base.VDILocationMissing("sr", "x"),
        base.VDIInUse("x", "destroy"),
        base.VDIReadOnly("x"),
        base.VDITooSmall("x", 1),
        base.VDITooLarge("x", 1),
        base.VDIIsAPhysicalDevice("x"),
        base.ImportFailed("x"),
        base.CopyFailed(),
    ]
    with pytest.raises(StorageError) as unknown:
        make_driver("lvmoiscsi")
    samples.append(unknown.value)
    for exc in samples:
        assert exc.code in catalogue, exc.code
        assert len(exc.params) == len(catalogue[exc.code]), exc.code
    backend = base.BackendFailure(base.SMError.SR_NOT_EMPTY, "detail")
    assert backend.description == ["SR_BACKEND_FAILURE_39", "", "The SR is not empty [opterr=detail]", ""]
    assert len(backend.params) == len(catalogue["SR_BACKEND_FAILURE"])
