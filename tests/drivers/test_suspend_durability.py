"""A memory image the QEMU driver writes (VM.suspend, VM.checkpoint) is on stable storage when the
driver reports success: QEMU's migration stream goes through `exec:cat > image`, which leaves the
image in the page cache; were it still there when a power loss came, the suspended VM's memory
would be lost although the client was told it was saved.

Checked the kernel's way (tests/drivers/pagecache.py): no page of the image is dirty or under
write-back once suspend / save_memory returns, and the image's directory was fsync'ed (the image
may be a new file). A real guest on QEMU (TCG), one for the whole module; its images are resumed,
so they are the real thing. test_the_probe_sees_an_image_left_in_the_page_cache runs the same
save with the driver's sync taken out and sees dirty pages: the check does not pass by construction.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from pyxapi.drivers.hypervisor import qemu
from pyxapi.drivers.hypervisor.base import DomainNotFound, DomainSpec, DomainState
from tests.drivers.conftest import HvGuestImage
from tests.drivers.hypervisor_harness import QemuHarness
from tests.drivers.pagecache import dirty_pages
from tests.drivers.syscall_log import Syscalls

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300), pytest.mark.slow]

MiB = 1 << 20
MARKER = "/root/durable-marker"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def qh(hv_guest_image: HvGuestImage, hv_run_dir: Path, hv_netns: str) -> AsyncIterator[QemuHarness]:
    h = QemuHarness(hv_guest_image, hv_run_dir / "suspend-durability", hv_netns)
    try:
        yield h
    finally:
        await h.cleanup()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def guest(qh: QemuHarness) -> DomainSpec:
    """One small guest, ready, with a file in its memory (the initramfs) to find after a resume."""
    spec = qh.spec("suspend-durability", mem=128)
    await qh.driver.start(spec)
    await qh.wait_ready(spec.uuid)
    await qh.guest_write(spec.uuid, MARKER, "in-memory-only")
    return spec


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Syscalls]:
    yield Syscalls(monkeypatch)


def assert_on_disk(image: Path, calls: Syscalls, mark: int) -> None:
    assert image.stat().st_size > MiB  # a real memory image, not an empty file that is trivially clean
    assert dirty_pages(image) == 0, "the memory image is still (partly) only in the page cache"
    synced = calls.events[mark:]
    ino = image.stat().st_ino
    assert any(e.op == "fsync" and not e.is_dir and e.ino == ino for e in synced)
    assert any(e.op == "fsync" and e.is_dir and os.path.samefile(e.path, image.parent) for e in synced)


async def test_the_probe_sees_an_image_left_in_the_page_cache(
    qh: QemuHarness, guest: DomainSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: without the driver's sync, the image QEMU just wrote has dirty pages (the
    kernel writes them back on its own only after dirty_expire_centisecs, 30 s by default)."""
    monkeypatch.setattr(qemu, "sync_image", lambda path: None)
    image = tmp_path / "unsynced.img"
    t0 = time.monotonic()
    await qh.driver.save_memory(guest.uuid, str(image))
    print(f"save_memory without sync: {time.monotonic() - t0:.2f}s, {image.stat().st_size / MiB:.0f} MiB")
    try:
        assert image.stat().st_size > MiB
        assert dirty_pages(image) > 0
    finally:
        await qh.driver.unpause(guest.uuid)


async def test_checkpoint_image_is_on_disk_when_save_memory_returns(
    qh: QemuHarness, guest: DomainSpec, tmp_path: Path, calls: Syscalls
) -> None:
    image = tmp_path / "checkpoint.img"
    mark = calls.mark()
    t0 = time.monotonic()
    await qh.driver.save_memory(guest.uuid, str(image))
    print(f"save_memory with sync: {time.monotonic() - t0:.2f}s, {image.stat().st_size / MiB:.0f} MiB")
    try:
        assert_on_disk(image, calls, mark)
    finally:
        await qh.driver.unpause(guest.uuid)
    # ... and the guest runs on from where it was.
    assert await qh.driver.state(guest.uuid) is DomainState.RUNNING
    assert await qh.guest_read(guest.uuid, MARKER) == "in-memory-only"


async def test_suspend_image_is_on_disk_when_suspend_returns(
    qh: QemuHarness, guest: DomainSpec, tmp_path: Path, calls: Syscalls
) -> None:
    image = tmp_path / "suspend.img"
    mark = calls.mark()
    await qh.driver.suspend(guest.uuid, str(image))
    with pytest.raises(DomainNotFound):
        await qh.driver.state(guest.uuid)
    assert_on_disk(image, calls, mark)
    # The image on disk is the guest: resumed from it, the guest still has what only its memory held.
    await qh.driver.resume(guest, str(image))
    await qh.wait_ready(guest.uuid)
    assert await qh.guest_read(guest.uuid, MARKER) == "in-memory-only"
