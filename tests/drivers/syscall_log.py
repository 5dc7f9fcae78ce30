"""The order in which code under test syncs files and gives them names, from inside the process.

os.fsync, os.link, os.rename and os.replace are wrapped (monkeypatch; worker threads call the same
functions) and logged with the inode each one concerns. `assert_durable` then checks the rule for data
that must survive a power loss: a name is only given to data already fsync'ed, and the directory
holding the name is fsync'ed afterwards, before the operation reports success.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass(frozen=True, slots=True)
class Event:
    op: str  # "fsync" or "name" (link, rename, replace)
    ino: int  # the inode synced, or the one the new name points at
    path: str  # the synced file or directory, or the new name
    is_dir: bool = False


class Syscalls:
    """os.fsync, os.link, os.rename and os.replace as the code under test calls them (threads too)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[Event] = []
        real_fsync, real_link, real_rename, real_replace = os.fsync, os.link, os.rename, os.replace

        def fsync(fd: Any) -> None:
            fd = fd if isinstance(fd, int) else fd.fileno()
            st = os.fstat(fd)
            path = os.readlink(f"/proc/self/fd/{fd}")
            real_fsync(fd)
            self.events.append(Event("fsync", st.st_ino, path, stat.S_ISDIR(st.st_mode)))

        def naming(real: Callable[..., None]) -> Callable[..., None]:
            def call(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
                ino = os.lstat(src).st_ino
                real(src, dst, *args, **kwargs)
                self.events.append(Event("name", ino, os.path.abspath(dst)))

            return call

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "link", naming(real_link))
        monkeypatch.setattr(os, "rename", naming(real_rename))
        monkeypatch.setattr(os, "replace", naming(real_replace))

    def mark(self) -> int:
        return len(self.events)

    def names_since(self, mark: int, root: Path) -> list[str]:
        return [os.path.basename(e.path) for e in self.events[mark:] if e.op == "name" and _in(e.path, root)]

    def assert_durable(self, mark: int, root: Path, presumed: set[int]) -> None:
        """Since `mark`: each name given in root points at data fsync'ed before (or at an inode in
        `presumed`: files that were already on disk and that the call did not write), and root was
        fsync'ed after the last such name."""
        synced = set(presumed)
        undurable: list[str] = []
        for e in self.events[mark:]:
            if e.op == "fsync" and e.is_dir and os.path.realpath(e.path) == os.path.realpath(root):
                undurable.clear()
            elif e.op == "fsync" and not e.is_dir:
                synced.add(e.ino)
            elif e.op == "name" and _in(e.path, root):
                assert e.ino in synced, f"{os.path.basename(e.path)} was given to data never fsync'ed"
                undurable.append(os.path.basename(e.path))
        assert not undurable, f"no directory fsync after naming {undurable}"


def _in(path: str, root: Path) -> bool:
    return os.path.dirname(os.path.realpath(path)) == os.path.realpath(root)


def inodes(root: Path) -> set[int]:
    return {p.lstat().st_ino for p in root.iterdir()}
