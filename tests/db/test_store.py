from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pyxapi.db.log import MemoryLog
from pyxapi.db.sqlite import SqliteLog
from pyxapi.db.store import NULL_REF, EventsLost, Store
from pyxapi.model import ApiError, load_model

MODEL = load_model()


def make_store(log=None, **kw) -> Store:
    store = Store(MODEL, log or MemoryLog(), **kw)
    store.load()
    return store


def test_create_fills_defaults_and_indexes() -> None:
    store = make_store()
    ref = store.create("VM", {"name_label": "web1"})
    rec = store.get("VM", ref)
    assert ref.startswith("OpaqueRef:")
    assert rec["power_state"] == "Halted"  # the model's default
    assert rec["VBDs"] == [] and rec["other_config"] == {}
    assert store.by_uuid("VM", rec["uuid"]) == ref
    assert store.by_name_label("VM", "web1") == [ref]
    assert store.class_of(ref) == "VM"


def test_missing_objects_raise_the_real_errors() -> None:
    store = make_store()
    with pytest.raises(ApiError) as e:
        store.get("VM", "OpaqueRef:nope")
    assert e.value.description == ["HANDLE_INVALID", "VM", "OpaqueRef:nope"]
    with pytest.raises(ApiError) as e:
        store.by_uuid("VM", "not-a-uuid")
    assert e.value.description == ["UUID_INVALID", "VM", "not-a-uuid"]


def test_one_to_many_relation_is_kept_both_ways() -> None:
    store = make_store()
    vm1 = store.create("VM", {"name_label": "a"})
    vm2 = store.create("VM", {"name_label": "b"})
    vbd = store.create("VBD", {"VM": vm1})
    assert store.get("VM", vm1)["VBDs"] == [vbd]
    store.set_field("VBD", vbd, "VM", vm2)
    assert store.get("VM", vm1)["VBDs"] == []
    assert store.get("VM", vm2)["VBDs"] == [vbd]
    store.destroy("VBD", vbd)
    assert store.get("VM", vm2)["VBDs"] == []


def test_many_to_many_relation_is_kept_both_ways() -> None:
    store = make_store()
    host = store.create("host", {"name_label": "h"})
    update = store.create("pool_update", {"name_label": "u"})
    store.set_field("host", host, "updates", [update])
    assert store.get("pool_update", update)["hosts"] == [host]
    store.set_field("host", host, "updates", [])
    assert store.get("pool_update", update)["hosts"] == []


def test_failed_transaction_rolls_back_memory() -> None:
    store = make_store()
    vm = store.create("VM", {"name_label": "keep"})
    gen = store.generation
    with pytest.raises(RuntimeError), store.transaction():
        store.set_field("VM", vm, "name_label", "changed")
        store.create("VBD", {"VM": vm})
        raise RuntimeError("boom")
    assert store.get("VM", vm)["name_label"] == "keep"
    assert store.get("VM", vm)["VBDs"] == []
    assert store.by_name_label("VM", "changed") == []
    assert store.generation == gen


class FailingLog(MemoryLog):
    def commit(self, commit) -> None:  # type: ignore[no-untyped-def]
        raise OSError("disk full")


def test_failed_commit_rolls_back_memory() -> None:
    store = make_store(FailingLog())
    with pytest.raises(OSError):
        store.create("VM", {"name_label": "lost"})
    assert store.refs("VM") == []


def test_changes_since_reports_add_mod_del_once_per_object() -> None:
    store = make_store()
    vm = store.create("VM", {"name_label": "a"})
    start = store.generation
    store.set_field("VM", vm, "name_label", "b")
    store.set_field("VM", vm, "name_label", "c")
    new = store.create("VM", {"name_label": "n"})
    gone = store.create("VM", {"name_label": "g"})
    store.destroy("VM", gone)
    changes = [(c.ref, c.op) for c in store.changes_since(start)]
    assert changes == [(vm, "mod"), (new, "add")]  # created-and-deleted inside the window: nothing
    assert [(c.ref, c.op) for c in store.changes_since(0) if c.ref == vm] == [(vm, "add")]
    mid = store.generation
    store.destroy("VM", new)
    assert [(c.ref, c.op) for c in store.changes_since(mid)] == [(new, "del")]


def test_old_tokens_are_lost_after_tombstones_are_pruned() -> None:
    store = make_store(tombstone_limit=10)
    start = store.generation
    for i in range(30):
        store.destroy("VM", store.create("VM", {"name_label": str(i)}))
        store.create("VM", {"name_label": f"keep{i}"})
    with pytest.raises(EventsLost):
        store.changes_since(start)
    assert store.changes_since(store.generation) == []


async def test_waiters_wake_on_commit() -> None:
    store = make_store()
    gen = store.generation
    waiter = asyncio.create_task(store.wait_for_change(gen, 5.0))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    store.create("VM", {"name_label": "x"})
    assert await asyncio.wait_for(waiter, 1.0) is True
    assert await store.wait_for_change(store.generation, 0.05) is False


def test_sqlite_log_survives_reopen_and_skips_non_persistent(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = make_store(SqliteLog(path))
    vm = store.create("VM", {"name_label": "durable", "other_config": {"k": "v"}, "VCPUs_max": 4})
    store.create("session", {"auth_user_name": "root"})
    vbd = store.create("VBD", {"VM": vm})
    gen = store.generation
    again = make_store(SqliteLog(path))
    rec = again.get("VM", vm)
    assert rec["name_label"] == "durable" and rec["other_config"] == {"k": "v"} and rec["VCPUs_max"] == 4
    assert rec["VBDs"] == [vbd]
    assert again.refs("session") == []  # sessions are not persistent in xapi either
    assert again.generation == gen
    assert again.get("VM", vm)["allowed_operations"] == []  # non-persistent field reset


def test_external_changes_become_events() -> None:
    store = make_store()
    start = store.generation
    store.apply_external(start + 5, [("VM", "OpaqueRef:ext", {"uuid": "u-ext", "name_label": "remote"})], [])
    assert store.get("VM", "OpaqueRef:ext")["power_state"] == "Halted"
    assert store.generation == start + 5
    assert [(c.ref, c.op) for c in store.changes_since(start)] == [("OpaqueRef:ext", "add")]
    assert store.find("VM", "OpaqueRef:missing") is None
    assert NULL_REF == "OpaqueRef:NULL"
