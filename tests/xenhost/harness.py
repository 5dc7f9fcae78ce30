"""The Xen harness of the hypervisor contract suite (tests/drivers/test_hypervisor_contract.py).

It runs inside dom0 of the Xen test host (tests/drivers/test_hypervisor_xen.py starts it there
with PYXAPI_CONTRACT_XEN=1), with the Xen flavour of the test guest as domU. The guest's part is
played through its PV console shell (hvc0) and its xenstore agent; a kill is a raw domain destroy
hypercall behind the driver's back (Xen's kill -9).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import subprocess
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

import pytest

from tests.drivers.hypervisor_harness import ShellGuest

MiB = 1 << 20
READY_TIMEOUT = 180.0  # a PV guest under nested TCG: ~5-20 s when the machine is not loaded
GUEST_DIR = Path(os.environ.get("PYXAPI_XEN_GUEST", "/opt/pyxapi/guest"))


# Contract parameter → the domain type its guests are built as.
XEN_KINDS = {"xen": "pv", "xen-pvh": "pvh", "xen-hvm": "hvm"}


def xen_contract_params() -> list[Any]:
    """The contract suite's Xen parameters (PV, PVH and HVM guests), only where they can run: in the
    Xen test host's dom0. PYXAPI_CONTRACT_XEN=1 selects all three, or a comma-separated list of them."""
    wanted = os.environ.get("PYXAPI_CONTRACT_XEN", "")
    if not wanted:
        return []
    kinds = list(XEN_KINDS) if wanted == "1" else [k for k in wanted.split(",") if k in XEN_KINDS]
    return [pytest.param(kind, marks=pytest.mark.slow) for kind in kinds]


class XenHarness(ShellGuest):
    kind = "xen"
    data_disk = "xvdb"  # userdevice 1: a Xen PV disk
    reboot_keeps_domid = False  # Xen rebuilds a rebooted domain (as xapi's VM.clean_reboot does)
    shared: Any = None

    def __init__(self, run_dir: Path, domain_type: str = "pv") -> None:
        from pyxapi.drivers.hypervisor.xen.driver import XenDriver

        self.domain_type = domain_type
        # HVM guests' console is the device model's emulated serial port (ttyS0), PV and PVH guests'
        # is Xen's PV console (hvc0). All have a VNC console (a PV framebuffer for PV and PVH).
        self.console_dev = "ttyS0" if domain_type == "hvm" else "hvc0"
        self.run_dir = run_dir
        self.bridge = f"pyxbr{os.getpid() % 100000}"
        self.driver: Any = XenDriver(run_dir)
        self.expects_vnc = True  # the test host has the device model (qemu-system-xen)

    def spec(self, name: str, *, mem: int = 256, vcpus_max: int = 2) -> Any:
        from pyxapi.drivers.hypervisor.base import DiskSpec, DomainSpec

        return DomainSpec(
            str(uuidlib.uuid4()),
            name,
            vcpus_max,
            1,
            mem * MiB,
            mem * MiB,
            kernel=str(GUEST_DIR / "vmlinuz"),
            ramdisk=str(GUEST_DIR / "initrd.img"),
            # quiet: no kernel warnings amid console shell output
            cmdline=f"console={self.console_dev} quiet loglevel=3",
            disks=(DiskSpec(3, None, is_cdrom=True),),
            domain_type=self.domain_type,
        )

    async def new_driver(self) -> Any:
        from pyxapi.drivers.hypervisor.xen.driver import XenDriver

        self.driver = XenDriver(self.run_dir)
        return self.driver

    async def _sh(self, uuid: str, command: str, timeout: float = 60.0) -> str:
        from tests.drivers.conftest import hv_serial_run

        return await hv_serial_run((await self.driver.console(uuid)).serial_socket, command, timeout=timeout)

    async def wait_ready(self, uuid: str) -> None:
        """The agent has reported in xenstore and the console shell answers."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                info = await self.driver.guest_agent(uuid, timeout=5.0)
                if info.os.get("name"):
                    await self._sh(uuid, "true", timeout=10.0)
                    return
            except Exception:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.5)

    async def guest_ignore_acpi(self, uuid: str) -> None:
        # The PV shutdown request runs the guest's /sbin/poweroff: make it do nothing.
        await self._sh(uuid, "printf '#!/bin/sh\\nexit 0\\n' > /sbin/poweroff")

    async def kill(self, uuid: str) -> None:
        """The domain vanishes behind the toolstack's back, as a QEMU killed with SIGKILL does: a
        raw XEN_DOMCTL_destroydomain through libxenctrl (no libxl teardown, unlike `xl destroy`)."""
        domid = (await self.driver.info(uuid)).domid
        xc = ctypes.CDLL(ctypes.util.find_library("xenctrl") or "libxenctrl.so")
        xc.xc_interface_open.restype = ctypes.c_void_p
        xch = xc.xc_interface_open(None, None, 0)
        assert xch, "xc_interface_open failed"
        try:
            assert xc.xc_domain_destroy(ctypes.c_void_p(xch), ctypes.c_uint32(domid)) == 0, "xc_domain_destroy failed"
        finally:
            xc.xc_interface_close(ctypes.c_void_p(xch))

    async def crash_by_sysrq(self, uuid: str) -> None:
        await self.driver.send_sysrq(uuid, "c")

    def make_tap(self, name: str) -> None:
        if not Path(f"/sys/class/net/{self.bridge}").exists():
            subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True, capture_output=True)
            subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True, capture_output=True)
        subprocess.run(["ip", "tuntap", "add", "dev", name, "mode", "tap"], check=True, capture_output=True)
        subprocess.run(["ip", "link", "set", name, "master", self.bridge, "up"], check=True, capture_output=True)

    async def cleanup(self) -> None:
        for info in await self.driver.list_domains():
            await self.driver.shutdown(info.uuid, clean=False)
        await self.driver.close()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
