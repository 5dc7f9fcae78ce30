"""SQLite (WAL) as the durable log: one row per object, the record as JSON.

The schema is derived from nothing but (class, ref): records carry whatever fields the model
has, so adding a field needs no migration; missing fields are filled from model defaults on load.
synchronous=NORMAL in WAL mode survives the process being killed at any point (what a crash of
the daemon is); `durable_fsync=True` switches to FULL for power-loss durability at a cost.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from pyxapi.db.log import Commit, Snapshot


class SqliteLog:
    def __init__(self, path: Path, durable_fsync: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable_fsync else 'NORMAL'}")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS objects (
                cls TEXT NOT NULL, ref TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (cls, ref)
            ) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            """
        )

    def load(self) -> Snapshot:
        snap = Snapshot()
        row = self._db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        snap.generation = int(row[0]) if row else 0
        for cls, ref, body in self._db.execute("SELECT cls, ref, body FROM objects"):
            snap.objects.setdefault(cls, {})[ref] = json.loads(body)
        return snap

    def commit(self, commit: Commit) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            if commit.upserts:
                db.executemany(
                    "INSERT OR REPLACE INTO objects (cls, ref, body) VALUES (?, ?, ?)",
                    [(c, r, json.dumps(rec, separators=(",", ":"))) for c, r, rec in commit.upserts],
                )
            if commit.deletes:
                db.executemany("DELETE FROM objects WHERE cls=? AND ref=?", commit.deletes)
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('generation', ?)", (str(commit.generation),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()
