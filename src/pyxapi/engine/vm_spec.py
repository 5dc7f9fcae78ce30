"""From a VM's records to the hypervisor's DomainSpec, with xapi's memory and vCPU checks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyxapi.db.store import Store
from pyxapi.drivers.hypervisor.base import DiskSpec, DomainSpec, NicSpec
from pyxapi.model.errors import ApiError

MIB = 1 << 20
DiskResolver = Callable[[str, dict[str, Any]], DiskSpec | None]  # (VBD ref, VBD record) -> disk
NicResolver = Callable[[str, dict[str, Any]], NicSpec | None]


def check_memory(rec: dict[str, Any]) -> None:
    """xapi's constraint: static_min ≤ dynamic_min ≤ dynamic_max ≤ static_max."""
    smin, dmin = rec["memory_static_min"], rec["memory_dynamic_min"]
    dmax, smax = rec["memory_dynamic_max"], rec["memory_static_max"]
    if not smin <= dmin <= dmax <= smax:
        raise ApiError(
            "MEMORY_CONSTRAINT_VIOLATION",
            "Memory limits must satisfy: static_min <= dynamic_min <= dynamic_max <= static_max",
        )
    if smax < 16 * MIB:
        raise ApiError("MEMORY_CONSTRAINT_VIOLATION", "memory_static_max is below 16 MiB")


def check_vcpus(rec: dict[str, Any]) -> None:
    if not 1 <= rec["VCPUs_at_startup"] <= rec["VCPUs_max"]:
        raise ApiError(
            "VALUE_NOT_SUPPORTED",
            "VCPUs_at_startup",
            str(rec["VCPUs_at_startup"]),
            "VCPUs_at_startup must be between 1 and VCPUs_max",
        )


def domain_spec(
    store: Store, vm: str, disks: DiskResolver | None = None, nics: NicResolver | None = None
) -> DomainSpec:
    rec = store.get("VM", vm)
    check_memory(rec)
    check_vcpus(rec)
    boot = rec["HVM_boot_params"]
    disk_specs = []
    for vbd in rec["VBDs"]:
        vbd_rec = store.get("VBD", vbd)
        spec = disks(vbd, vbd_rec) if disks else None
        if spec is not None:
            disk_specs.append(spec)
    nic_specs = []
    for vif in rec["VIFs"]:
        nic = nics(vif, store.get("VIF", vif)) if nics else None
        if nic is not None:
            nic_specs.append(nic)
    static_max = rec["memory_static_max"] // MIB * MIB
    return DomainSpec(
        uuid=rec["uuid"],
        name=rec["name_label"],
        vcpus_max=rec["VCPUs_max"],
        vcpus_at_startup=rec["VCPUs_at_startup"],
        memory_static_max=static_max,
        memory_target=min(static_max, max(MIB, rec["memory_dynamic_max"])),
        firmware="uefi" if boot.get("firmware") == "uefi" else "bios",
        kernel=rec["PV_kernel"] or None,
        ramdisk=rec["PV_ramdisk"] or None,
        cmdline=rec["PV_args"],
        boot_order=boot.get("order", "cd") or "cd",
        disks=tuple(sorted(disk_specs, key=lambda d: d.device)),
        nics=tuple(sorted(nic_specs, key=lambda n: n.device)),
        platform={k: str(v) for k, v in rec["platform"].items()},
        domain_type=str(rec.get("domain_type") or ""),
        bootloader=str(rec.get("PV_bootloader") or ""),
    )
