"""Storage drivers: one per SR type, all speaking the StorageDriver protocol of base.py."""

from __future__ import annotations

from .base import StorageDriver, StorageError

SR_TYPES = ("file", "iso", "sim", "nfs", "iscsi", "lvm")


def make_driver(sr_type: str) -> StorageDriver:
    """A new driver for an SR type (main.py wires one per type into the Context)."""
    # Imported here so that importing the package stays cheap and free of cycles.
    if sr_type == "file":
        from .file import FileStorageDriver

        return FileStorageDriver()
    if sr_type == "iso":
        from .iso import IsoStorageDriver

        return IsoStorageDriver()
    if sr_type == "nfs":
        from .nfs import NfsStorageDriver

        return NfsStorageDriver()
    if sr_type == "iscsi":
        from .iscsi import IscsiStorageDriver

        return IscsiStorageDriver()
    if sr_type == "lvm":
        from .lvm import LvmStorageDriver

        return LvmStorageDriver()
    if sr_type == "sim":
        from .sim import SimStorageDriver

        return SimStorageDriver()
    raise StorageError("SR_UNKNOWN_DRIVER", sr_type)
