"""The built-in templates a fresh host offers, as xapi installs its default templates.

They are (re)installed on every start by name, so a new pyxapi version can update them;
user templates are never touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyxapi.db.store import Store

MIB = 1 << 20
TEST_GUEST = "pyxapi test guest"


def _base(name: str, description: str, memory: int, disks: str, install: str) -> dict[str, Any]:
    return {
        "name_label": name,
        "name_description": description,
        "is_a_template": True,
        "user_version": 1,
        "memory_static_max": memory,
        "memory_dynamic_max": memory,
        "memory_dynamic_min": memory,
        "memory_static_min": 16 * MIB,
        "memory_target": memory,
        "VCPUs_max": 1,
        "VCPUs_at_startup": 1,
        "actions_after_shutdown": "destroy",
        "actions_after_reboot": "restart",
        "actions_after_crash": "restart",
        "actions_after_softreboot": "soft_reboot",
        "HVM_boot_policy": "BIOS order",
        "HVM_boot_params": {"order": "cdn"},
        "platform": {"acpi": "1", "apic": "true", "pae": "true", "viridian": "false", "nx": "true"},
        "domain_type": "hvm",
        "other_config": {"default_template": "true", "disks": disks, "install-methods": install},
        "power_state": "Halted",
    }


def builtin_templates(images_dir: Path) -> list[dict[str, Any]]:
    system_disk = '<provision><disk device="0" size="{}" sr="" bootable="true" type="system"/></provision>'
    other = _base(
        "Other install media",
        "Boots from a CD or an existing disk (BIOS)",
        1024 * MIB,
        system_disk.format(8 << 30),
        "cdrom",
    )
    uefi = _base(
        "Generic Linux UEFI",
        "A Linux guest booted by UEFI firmware (OVMF)",
        1024 * MIB,
        system_disk.format(8 << 30),
        "cdrom",
    )
    uefi["HVM_boot_params"] = {"order": "cdn", "firmware": "uefi"}
    guest_dir = images_dir / "test-guest"
    test = _base(
        TEST_GUEST,
        "pyxapi's small Linux test guest (busybox, guest agent), booted directly from its kernel",
        256 * MIB,
        "<provision/>",
        "",
    )
    test.update(
        {
            "PV_kernel": str(guest_dir / "vmlinuz"),
            "PV_ramdisk": str(guest_dir / "initrd.img"),
            "PV_args": "console=ttyS0 quiet panic=-1",
            "HVM_boot_params": {"order": "c"},
        }
    )
    test["memory_dynamic_min"] = 128 * MIB
    return [other, uefi, test]


def install_templates(store: Store, images_dir: Path) -> None:
    with store.transaction():
        for template in builtin_templates(images_dir):
            existing = [
                ref
                for ref in store.by_name_label("VM", template["name_label"])
                if store.get("VM", ref)["other_config"].get("default_template") == "true"
            ]
            if existing:
                store.update("VM", existing[0], template)
            else:
                store.create("VM", template)
