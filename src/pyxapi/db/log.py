"""The durable log behind the in-memory store.

The store is the working copy; a DurableLog makes each committed transaction survive a crash
before its reply leaves. SQLite is the default; a replicated log (etcd, for pools) can take its
place without the store changing, because the store also accepts changes that arrive from
outside (Store.apply_external).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

Record = dict[str, Any]


@dataclass(slots=True)
class Snapshot:
    """What a log hands back at start-up: the last generation and every stored object."""

    generation: int = 0
    objects: dict[str, dict[str, Record]] = field(default_factory=dict)


@dataclass(slots=True)
class Commit:
    generation: int
    upserts: list[tuple[str, str, Record]] = field(default_factory=list)
    deletes: list[tuple[str, str]] = field(default_factory=list)


class DurableLog(Protocol):
    def load(self) -> Snapshot: ...

    def commit(self, commit: Commit) -> None:
        """Make the commit durable before returning; raise if it could not be written."""
        ...

    def close(self) -> None: ...


class MemoryLog:
    """A log that keeps nothing: for unit tests and the simulator-only scale runs."""

    def __init__(self) -> None:
        self.commits = 0

    def load(self) -> Snapshot:
        return Snapshot()

    def commit(self, commit: Commit) -> None:
        self.commits += 1

    def close(self) -> None:
        pass
