"""The hypervisor contract suite's harnesses: one per driver (simulator, QEMU), each starting the
shared guest its way and reading what the guest does (tests/drivers/test_hypervisor_contract.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

from pyxapi.drivers.hypervisor.base import (
    DiskSpec,
    DomainSpec,
    ExitReason,
)
from pyxapi.drivers.hypervisor.qemu import QemuDriver
from pyxapi.drivers.hypervisor.qemu_host import kill_domain
from pyxapi.drivers.hypervisor.sim import SimHost, SimHypervisor
from tests.drivers.conftest import HvGuestImage, hv_make_tap, hv_serial_run, hv_serial_send

MiB = 1 << 20
READY_TIMEOUT = 120.0  # TCG on two shared cores: a boot normally takes 3-10 s


class Harness:
    kind = ""
    reboot_keeps_domid = True  # Xen rebuilds a rebooted domain under a new domid
    expects_vnc = False  # the guest has a framebuffer served over VNC
    driver: Any
    shared: DomainSpec | None = None  # the guest the ordered tests share

    def spec(self, name: str, *, mem: int = 256, vcpus_max: int = 2) -> DomainSpec:
        raise NotImplementedError

    async def new_driver(self) -> Any:
        raise NotImplementedError

    async def wait_ready(self, uuid: str) -> None:
        pass

    async def guest_write(self, uuid: str, path: str, data: str) -> None:
        raise NotImplementedError

    async def guest_read(self, uuid: str, path: str) -> str | None:
        raise NotImplementedError

    async def guest_online_vcpus(self, uuid: str) -> int:
        raise NotImplementedError

    async def guest_sees_disk(self, uuid: str) -> str | None:
        """First bytes of the guest's first virtio disk, or None when it has none."""
        raise NotImplementedError

    async def guest_ignore_acpi(self, uuid: str) -> None:
        raise NotImplementedError

    async def guest_fill_disk(self, uuid: str, byte: int) -> None:
        """The guest writes `byte` over the first 512 bytes of its first virtio disk."""
        raise NotImplementedError

    async def guest_disk_size(self, uuid: str) -> int:
        """The size in bytes the guest sees for its first virtio disk."""
        raise NotImplementedError

    async def guest_poweroff(self, uuid: str) -> None:
        raise NotImplementedError

    async def guest_reboot(self, uuid: str) -> None:
        raise NotImplementedError

    async def kill(self, uuid: str) -> None:
        raise NotImplementedError

    async def crash_by_sysrq(self, uuid: str) -> None:
        """SysRq-c makes the guest kernel panic."""
        await self.driver.send_sysrq(uuid, "c")

    def make_tap(self, name: str) -> None:
        pass

    async def cleanup(self) -> None:
        pass


class SimHarness(Harness):
    kind = "sim"

    def __init__(self) -> None:
        self.host = SimHost()
        self.driver: SimHypervisor = SimHypervisor(self.host)

    def spec(self, name: str, *, mem: int = 256, vcpus_max: int = 2) -> DomainSpec:
        return DomainSpec(
            str(uuidlib.uuid4()),
            name,
            vcpus_max,
            1,
            mem * MiB,
            mem * MiB,
            kernel="/sim/vmlinuz",
            disks=(DiskSpec(3, None, is_cdrom=True),),
        )

    async def new_driver(self) -> SimHypervisor:
        self.driver = SimHypervisor(self.host)
        return self.driver

    async def guest_write(self, uuid: str, path: str, data: str) -> None:
        self.driver.guest_write_file(uuid, path, data)

    async def guest_read(self, uuid: str, path: str) -> str | None:
        return self.driver.guest_read_file(uuid, path)

    async def guest_online_vcpus(self, uuid: str) -> int:
        return (await self.driver.info(uuid)).vcpus

    async def guest_sees_disk(self, uuid: str) -> str | None:
        disks = [d for d in self.host.domains[uuid].spec.disks if not d.is_cdrom]
        if not disks:
            return None
        # Through qemu-io, so a qcow2 image reads as the guest would see it.
        out = subprocess.run(
            ["qemu-io", "-r", "-U", "-f", disks[0].format, "-c", "read -v 0 16", str(disks[0].path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        hex_bytes = out.splitlines()[0].split(":", 1)[1].split()[:16]
        return bytes(int(b, 16) for b in hex_bytes).decode(errors="replace")

    async def guest_ignore_acpi(self, uuid: str) -> None:
        self.driver.set_guest_responsive(uuid, False)

    async def guest_fill_disk(self, uuid: str, byte: int) -> None:
        # The simulated guest writes to whatever image the domain has for the disk now.
        disk = next(d for d in self.host.domains[uuid].spec.disks if not d.is_cdrom)
        subprocess.run(
            ["qemu-io", "-f", disk.format, "-c", f"write -P {byte} 0 512", str(disk.path)],
            check=True,
            capture_output=True,
        )

    async def guest_disk_size(self, uuid: str) -> int:
        d = self.host.domains[uuid]
        disk = next(x for x in d.spec.disks if not x.is_cdrom)
        return d.disk_sizes.get(disk.device) or image_size(str(disk.path))

    async def guest_poweroff(self, uuid: str) -> None:
        self.driver.simulate_exit(uuid, ExitReason.POWEROFF, "guest-shutdown")

    async def guest_reboot(self, uuid: str) -> None:
        self.driver.simulate_exit(uuid, ExitReason.REBOOT, "guest-reset")

    async def kill(self, uuid: str) -> None:
        self.driver.simulate_exit(uuid, ExitReason.KILLED)

    async def crash_by_sysrq(self, uuid: str) -> None:
        await self.driver.send_sysrq(uuid, "c")
        self.driver.simulate_exit(uuid, ExitReason.CRASH, "guest-panic")


class ShellGuest(Harness):
    """The guest's part played through the test guest's serial shell: shared by the QEMU and Xen
    harnesses, which differ in how the shell is reached (_sh) and in the name of the data disk."""

    data_disk = "vda"
    driver: Any

    async def _sh(self, uuid: str, command: str, timeout: float = 30.0) -> str:
        raise NotImplementedError

    async def guest_write(self, uuid: str, path: str, data: str) -> None:
        await self._sh(uuid, f"echo '{data}' > {path}")

    async def guest_read(self, uuid: str, path: str) -> str | None:
        out = await self._sh(uuid, f"cat {path} 2>/dev/null || echo @@NONE")
        return None if "@@NONE" in out else out.strip()

    async def guest_online_vcpus(self, uuid: str) -> int:
        out = (await self._sh(uuid, "cat /sys/devices/system/cpu/online")).strip().splitlines()[-1]
        count = 0
        for part in out.split(","):
            lo, _, hi = part.partition("-")
            count += int(hi or lo) - int(lo) + 1
        return count

    async def guest_sees_disk(self, uuid: str) -> str | None:
        dev = f"/dev/{self.data_disk}"
        out = await self._sh(uuid, f"[ -b {dev} ] && head -c 16 {dev} || echo @@NONE")
        return None if "@@NONE" in out else out

    async def guest_fill_disk(self, uuid: str, byte: int) -> None:
        await self._sh(
            uuid,
            f"head -c 512 /dev/zero | tr '\\000' '\\{byte:03o}' | dd of=/dev/{self.data_disk} bs=512 count=1"
            " conv=fsync 2>/dev/null; sync",
        )

    async def guest_disk_size(self, uuid: str) -> int:
        return int((await self._sh(uuid, f"cat /sys/block/{self.data_disk}/size")).strip()) * 512

    async def guest_poweroff(self, uuid: str) -> None:
        await hv_serial_send((await self.driver.console(uuid)).serial_socket, "poweroff -f")

    async def guest_reboot(self, uuid: str) -> None:
        await hv_serial_send((await self.driver.console(uuid)).serial_socket, "reboot -f")


class QemuHarness(ShellGuest):
    kind = "qemu"
    expects_vnc = True

    def __init__(self, image: HvGuestImage, run_dir: Path, netns: str) -> None:
        self.image = image
        self.run_dir = run_dir
        self.netns = netns
        self.driver: QemuDriver = QemuDriver(run_dir, accel="tcg", netns=netns)

    def spec(self, name: str, *, mem: int = 256, vcpus_max: int = 2) -> DomainSpec:
        return DomainSpec(
            str(uuidlib.uuid4()),
            name,
            vcpus_max,
            1,
            mem * MiB,
            mem * MiB,
            kernel=self.image.kernel,
            ramdisk=self.image.initrd,
            cmdline="console=ttyS0 quiet",
            disks=(DiskSpec(3, None, is_cdrom=True),),
        )

    async def new_driver(self) -> QemuDriver:
        self.driver = QemuDriver(self.run_dir, accel="tcg", netns=self.netns)
        return self.driver

    async def _sh(self, uuid: str, command: str, timeout: float = 30.0) -> str:
        return await hv_serial_run((await self.driver.console(uuid)).serial_socket, command, timeout=timeout)

    async def wait_ready(self, uuid: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                await self.driver.guest_agent_command(uuid, "guest-ping", timeout=3.0)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def guest_ignore_acpi(self, uuid: str) -> None:
        await self._sh(uuid, "killall acpid")

    async def kill(self, uuid: str) -> None:
        info = await self.driver.info(uuid)
        assert info.pid is not None
        os.kill(info.pid, signal.SIGKILL)

    def make_tap(self, name: str) -> None:
        hv_make_tap(self.netns, name)

    async def cleanup(self) -> None:
        for info in await self.driver.list_domains():
            await self.driver.shutdown(info.uuid, clean=False)
        await self.driver.close()
        # Anything left behind by a failed test: kill it by pid, proven ours by its command line.
        for pidfile in self.run_dir.glob("*/qemu.pid"):
            with contextlib.suppress(OSError, ValueError):
                kill_domain(int(pidfile.read_text()), pidfile.parent.name, pidfile)


def image_size(path: str) -> int:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", path], check=True, capture_output=True, text=True)
    return int(json.loads(out.stdout)["virtual-size"])
