"""Who has a VDI open, for drivers that hand out images themselves (file, nfs): any number of
readers, or one writer, as xapi allows a disk attached read-write to one running VM only."""

from __future__ import annotations

from dataclasses import dataclass

from .base import VDIInUse


@dataclass(slots=True)
class _Use:
    readers: int = 0
    writer: bool = False


class DiskUses:
    def __init__(self) -> None:
        self._uses: dict[tuple[str, str], _Use] = {}

    def claim(self, sr_uuid: str, location: str, read_only: bool) -> None:
        """Count one more user; VDI_IN_USE when a writer would meet anyone else."""
        use = self._uses.get((sr_uuid, location), _Use())
        if use.writer or (not read_only and use.readers):
            raise VDIInUse(location, "attach")
        if read_only:
            use.readers += 1
        else:
            use.writer = True
        self._uses[(sr_uuid, location)] = use

    def release(self, sr_uuid: str, location: str) -> None:
        key = (sr_uuid, location)
        use = self._uses.get(key)
        if use is None:
            return  # detaching twice is harmless, as in xapi
        if use.writer:
            use.writer = False
        elif use.readers:
            use.readers -= 1
        if not use.writer and not use.readers:
            del self._uses[key]

    def in_use(self, sr_uuid: str, location: str) -> bool:
        return (sr_uuid, location) in self._uses

    def written(self, sr_uuid: str, location: str) -> bool:
        use = self._uses.get((sr_uuid, location))
        return use is not None and use.writer

    def any_in(self, sr_uuid: str) -> bool:
        return any(key[0] == sr_uuid for key in self._uses)

    def busy(self, sr_uuid: str) -> set[str]:
        """The locations of this SR someone has open."""
        return {location for (sr, location) in self._uses if sr == sr_uuid}
