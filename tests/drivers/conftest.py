"""Fixtures for the hypervisor driver tests (all named hv_*): the test guest image, a short run
directory, a throw-away network namespace, and a serial-shell client for talking to the guest."""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.drivers.storage_fixtures import Harness, file_harness

REPO = Path(__file__).resolve().parents[2]
HV_GUEST_SCRIPT = REPO / "images" / "build-test-guest"
HV_GUEST_CACHE = REPO / "var" / "cache" / "test-guest"


@dataclass(frozen=True)
class HvGuestImage:
    kernel: str
    initrd: str


def hv_require_qemu() -> None:
    """Fail (never skip) when QEMU is missing: the qemu suite must run wherever it is claimed to."""
    missing = [f"{tool} (Debian package {pkg})"
               for tool, pkg in (("qemu-system-x86_64", "qemu-system-x86"), ("qemu-img", "qemu-utils"),
                                 ("apt-get", "apt"), ("dpkg", "dpkg"))
               if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"the qemu hypervisor tests need: {', '.join(missing)} (make apt-deps)")
    if os.geteuid() != 0:
        pytest.fail("the qemu hypervisor tests need root (network namespace and taps)")


@pytest.fixture(scope="session")
def hv_guest_image() -> HvGuestImage:
    """The test guest, built once into var/cache/test-guest (the script itself skips a rebuild
    while its outputs exist and the script is unchanged)."""
    hv_require_qemu()
    res = subprocess.run([str(HV_GUEST_SCRIPT), str(HV_GUEST_CACHE)], capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        pytest.fail(f"building the test guest failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return HvGuestImage(str(HV_GUEST_CACHE / "vmlinuz"), str(HV_GUEST_CACHE / "initrd.img"))


@pytest.fixture(scope="session")
def hv_run_dir() -> Iterator[Path]:
    # Short on purpose: QEMU's unix sockets live under it (108-byte limit).
    path = Path(tempfile.mkdtemp(prefix="pyxhv-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def hv_netns() -> Iterator[str]:
    """A private network namespace: QEMU runs in it and its taps live there, off the host network."""
    hv_require_qemu()
    name = f"pyxhv-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def hv_make_tap(netns: str, name: str) -> None:
    subprocess.run(["ip", "-n", netns, "tuntap", "add", "dev", name, "mode", "tap"], check=True, capture_output=True)
    subprocess.run(["ip", "-n", netns, "link", "set", name, "up"], check=True, capture_output=True)


_markers = itertools.count(1000)


async def hv_serial_run(socket_path: str, command: str, *, timeout: float = 30.0) -> str:
    """Run a shell command on the test guest's serial shell and return its output.

    The tty echoes what we type, so the begin/end markers are computed by the guest's shell
    ($((n+0))): the echoed command line never contains the expanded marker."""
    n = next(_markers)
    begin, end = f"@@B{n}@@", f"@@E{n}@@"
    reader, writer = await asyncio.open_unix_connection(socket_path)
    try:
        writer.write(f"\necho @@B$(({n}+0))@@; {command}; echo @@E$(({n}+0))@@\n".encode())
        await writer.drain()
        buf = ""
        async with asyncio.timeout(timeout):
            while end not in buf:
                chunk = await reader.read(4096)
                if not chunk:
                    raise EOFError("serial console closed")
                buf += chunk.decode(errors="replace")
        out = buf.split(begin, 1)[1].split(end, 1)[0] if begin in buf else ""
        return out.replace("\r", "").strip("\n")
    finally:
        writer.close()


async def hv_serial_send(socket_path: str, command: str) -> None:
    """Type a command on the serial shell without waiting for output (poweroff, reboot...)."""
    _, writer = await asyncio.open_unix_connection(socket_path)
    try:
        writer.write(f"\n{command}\n".encode())
        await writer.drain()
        await asyncio.sleep(0.2)  # let QEMU pass it to the guest before we hang up
    finally:
        writer.close()


@pytest.fixture
async def fh(tmp_path: Path) -> AsyncIterator[Harness]:
    """A file SR of its own in tmp_path, for the file driver's tests."""
    async for h in file_harness(tmp_path):
        yield h
