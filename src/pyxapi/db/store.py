"""The in-memory object store: records, indexes, relations and event generations.

Records are plain dicts of internal values, replaced (never mutated in place) on every write,
so a reader holding one sees a consistent snapshot. Writes go through one path: they apply to
memory immediately (with undo kept), and the outermost transaction commits them to the durable
log before anyone is told; a failed commit is rolled back. Every commit bumps the generation
that event.from tokens are made of.
"""

from __future__ import annotations

import asyncio
import uuid as uuidlib
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pyxapi.db.log import Commit, DurableLog, Record
from pyxapi.model.errors import HANDLE_INVALID, UUID_INVALID, ApiError
from pyxapi.model.schema import ClassDef, Model
from pyxapi.model.types import Map, Prim, Ref, Set

NULL_REF = "OpaqueRef:NULL"


def new_ref() -> str:
    return f"OpaqueRef:{uuidlib.uuid4()}"


def new_uuid() -> str:
    return str(uuidlib.uuid4())


@dataclass(slots=True)
class Mark:
    """When an object last changed (gen), when it was created, and whether it is now gone."""

    gen: int
    created_gen: int
    deleted: bool


@dataclass(slots=True)
class Change:
    cls: str
    ref: str
    op: str  # add | mod | del
    gen: int


@dataclass(slots=True)
class _Tx:
    # (cls, ref) -> the record as it was before the transaction (None: created in it)
    before: dict[tuple[str, str], Record | None] = field(default_factory=dict)
    touched: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _RelationEnd:
    other_cls: str
    other_field: str
    this_is_set: bool  # this end holds a set (many-to-many, or the "many" end)


class EventsLost(Exception):
    """A token older than the oldest change the store still remembers."""


class Store:
    def __init__(self, model: Model, log: DurableLog, tombstone_limit: int = 100_000) -> None:
        self.model = model
        self._log = log
        self._tombstone_limit = tombstone_limit
        self._objects: dict[str, dict[str, Record]] = {c.name: {} for c in model.stored_classes()}
        self._class_of: dict[str, str] = {}
        self._by_uuid: dict[str, dict[str, str]] = {c: {} for c in self._objects}
        self._by_name: dict[str, dict[str, set[str]]] = {c: {} for c in self._objects}
        self._marks: OrderedDict[tuple[str, str], Mark] = OrderedDict()
        self._tombstones = 0
        self._lost_before = 0
        self.generation = 0
        self._changed = asyncio.Event()
        self._tx: _Tx | None = None
        self._relations = self._relation_index()
        self._defaults = {c: self._class_defaults(self.model.classes[c]) for c in self._objects}
        self._persisted_fields = {
            c: tuple(f.name for f in self.model.classes[c].fields.values() if f.persist) for c in self._objects
        }
        self._int_key_maps = {
            c: tuple(
                f.name
                for f in self.model.classes[c].fields.values()
                if isinstance(f.type, Map) and f.type.key == Prim("int")
            )
            for c in self._objects
        }

    # ---- set-up ---------------------------------------------------------------------------
    def _relation_index(self) -> dict[tuple[str, str], list[_RelationEnd]]:
        index: dict[tuple[str, str], list[_RelationEnd]] = {}
        for r in self.model.relations:
            if (r.one_cls, r.one_field) == (r.many_cls, r.many_field):
                continue  # a field naming itself as its other end is no relation to keep
            index.setdefault((r.one_cls, r.one_field), []).append(
                _RelationEnd(r.many_cls, r.many_field, r.many_to_many)
            )
            if r.many_to_many:
                index.setdefault((r.many_cls, r.many_field), []).append(_RelationEnd(r.one_cls, r.one_field, True))
        return index

    @staticmethod
    def _class_defaults(cdef: ClassDef) -> Record:
        out: Record = {}
        for f in cdef.fields.values():
            if f.has_default:
                out[f.name] = f.default
            else:
                out[f.name] = _zero(f.type)
        return out

    def load(self) -> None:
        """Fill memory from the durable log (start-up)."""
        snap = self._log.load()
        self.generation = snap.generation
        for cls, objs in snap.objects.items():
            if cls not in self._objects:
                continue  # a class the model no longer has
            for ref, stored in objs.items():
                rec = self.defaults(cls)
                rec.update({k: v for k, v in stored.items() if k in rec})
                for fname in self._int_key_maps[cls]:
                    rec[fname] = {int(k): v for k, v in rec[fname].items()}
                self._index_put(cls, ref, rec, None)
                self._objects[cls][ref] = rec

    def defaults(self, cls: str) -> Record:
        # Defaults are flat (scalars, or lists/maps of scalars): copying the containers is enough.
        return {k: v.copy() if isinstance(v, list | dict) else v for k, v in self._defaults[cls].items()}

    # ---- reads ----------------------------------------------------------------------------
    def has_class(self, cls: str) -> bool:
        return cls in self._objects

    def get(self, cls: str, ref: str) -> Record:
        rec = self._objects[cls].get(ref)
        if rec is None:
            raise ApiError(HANDLE_INVALID, cls, ref)
        return rec

    def find(self, cls: str, ref: str) -> Record | None:
        objs = self._objects.get(cls)
        return objs.get(ref) if objs is not None else None

    def exists(self, cls: str, ref: str) -> bool:
        return ref in self._objects.get(cls, ())

    def class_of(self, ref: str) -> str | None:
        return self._class_of.get(ref)

    def refs(self, cls: str) -> list[str]:
        return list(self._objects[cls])

    def items(self, cls: str) -> list[tuple[str, Record]]:
        return list(self._objects[cls].items())

    def count(self, cls: str) -> int:
        return len(self._objects[cls])

    def by_uuid(self, cls: str, uuid: str) -> str:
        ref = self._by_uuid[cls].get(uuid)
        if ref is None:
            raise ApiError(UUID_INVALID, cls, uuid)
        return ref

    def by_name_label(self, cls: str, name: str) -> list[str]:
        return list(self._by_name[cls].get(name, ()))

    # ---- writes ---------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes into one durable commit. Only synchronous code may run inside."""
        if self._tx is not None:
            yield
            return
        tx = self._tx = _Tx()
        try:
            yield
        except BaseException:
            self._tx = None
            self._undo(tx)
            raise
        self._tx = None
        try:
            self._commit(tx)
        except BaseException:
            self._undo(tx)
            raise

    def create(self, cls: str, fields: Record, ref: str | None = None) -> str:
        ref = ref or new_ref()
        rec = self.defaults(cls)
        rec.update(fields)
        if not rec.get("uuid") and "uuid" in rec:
            rec["uuid"] = new_uuid()
        with self.transaction():
            self._write(cls, ref, rec)
            for fname in rec:
                self._relate(cls, ref, fname, _zero_like(rec[fname]), rec[fname])
        return ref

    def update(self, cls: str, ref: str, changes: Record) -> None:
        old = self.get(cls, ref)
        new = {**old, **changes}
        with self.transaction():
            self._write(cls, ref, new)
            for fname, value in changes.items():
                if old.get(fname) != value:
                    self._relate(cls, ref, fname, old.get(fname), value)

    def set_field(self, cls: str, ref: str, fname: str, value: Any) -> None:
        self.update(cls, ref, {fname: value})

    def destroy(self, cls: str, ref: str) -> None:
        old = self.get(cls, ref)
        with self.transaction():
            for fname, value in old.items():
                self._relate(cls, ref, fname, value, _zero_like(value))
            self._write(cls, ref, None)

    def touch(self, cls: str, ref: str) -> None:
        """Record a change without changing anything (event.inject)."""
        rec = self.get(cls, ref)
        with self.transaction():
            self._write(cls, ref, dict(rec))

    def _write(self, cls: str, ref: str, rec: Record | None) -> None:
        tx = self._tx
        assert tx is not None, "writes happen inside a transaction"
        objs = self._objects[cls]
        old = objs.get(ref)
        key = (cls, ref)
        if key not in tx.before:
            tx.before[key] = old
            tx.touched.append(key)
        self._index_put(cls, ref, rec, old)
        if rec is None:
            objs.pop(ref, None)
        else:
            objs[ref] = rec

    def _relate(self, cls: str, ref: str, fname: str, old: Any, new: Any) -> None:
        """Keep the other end of a relation in step with this end's change."""
        ends = self._relations.get((cls, fname))
        if not ends:
            return
        old_refs = set(old) if isinstance(old, list) else {old}
        new_refs = set(new) if isinstance(new, list) else {new}
        for end in ends:
            for other in old_refs - new_refs:
                self._edit_set(end.other_cls, other, end.other_field, ref, add=False)
            for other in new_refs - old_refs:
                self._edit_set(end.other_cls, other, end.other_field, ref, add=True)

    def _edit_set(self, cls: str, ref: Any, fname: str, item: str, add: bool) -> None:
        if not isinstance(ref, str) or ref == NULL_REF:
            return
        rec = self._objects[cls].get(ref)
        if rec is None:
            return
        current = rec.get(fname)
        if isinstance(current, list):
            if add and item not in current:
                self._write(cls, ref, {**rec, fname: [*current, item]})
            elif not add and item in current:
                self._write(cls, ref, {**rec, fname: [x for x in current if x != item]})
        elif isinstance(current, str):  # a one-to-one end kept as a Ref
            self._write(cls, ref, {**rec, fname: item if add else NULL_REF})

    def _index_put(self, cls: str, ref: str, new: Record | None, old: Record | None) -> None:
        if old is not None:
            self._by_uuid[cls].pop(old.get("uuid", ""), None)
            names = self._by_name[cls].get(old.get("name_label", ""))
            if names is not None:
                names.discard(ref)
        if new is None:
            self._class_of.pop(ref, None)
            return
        self._class_of[ref] = cls
        if "uuid" in new:
            self._by_uuid[cls][new["uuid"]] = ref
        if "name_label" in new:
            self._by_name[cls].setdefault(new["name_label"], set()).add(ref)

    def _undo(self, tx: _Tx) -> None:
        for key in reversed(tx.touched):
            cls, ref = key
            before = tx.before[key]
            current = self._objects[cls].get(ref)
            self._index_put(cls, ref, before, current)
            if before is None:
                self._objects[cls].pop(ref, None)
            else:
                self._objects[cls][ref] = before

    def _commit(self, tx: _Tx) -> None:
        gen = self.generation + 1
        commit = Commit(generation=gen)
        for cls, ref in tx.touched:
            cdef = self.model.classes[cls]
            if not (cdef.persist and (cdef.in_database or cls == "message")):
                continue
            rec = self._objects[cls].get(ref)
            if rec is None:
                if tx.before[(cls, ref)] is not None:
                    commit.deletes.append((cls, ref))
            else:
                commit.upserts.append((cls, ref, {f: rec[f] for f in self._persisted_fields[cls] if f in rec}))
        if commit.upserts or commit.deletes:
            self._log.commit(commit)
        self._publish(gen, [(cls, ref, tx.before[(cls, ref)] is None) for cls, ref in tx.touched])

    def apply_external(
        self, generation: int, upserts: list[tuple[str, str, Record]], deletes: list[tuple[str, str]]
    ) -> None:
        """Install changes another writer already committed to the shared log (pools)."""
        touched = []
        for cls, ref, stored in upserts:
            if cls not in self._objects:
                continue
            old = self._objects[cls].get(ref)
            rec = {**(old or self.defaults(cls)), **stored}
            self._index_put(cls, ref, rec, old)
            self._objects[cls][ref] = rec
            touched.append((cls, ref, old is None))
        for cls, ref in deletes:
            old = self._objects.get(cls, {}).pop(ref, None)
            if old is not None:
                self._index_put(cls, ref, None, old)
                touched.append((cls, ref, False))
        self._publish(max(generation, self.generation + 1), touched)

    # ---- events ---------------------------------------------------------------------------
    def _publish(self, gen: int, touched: list[tuple[str, str, bool]]) -> None:
        self.generation = gen
        for cls, ref, created in touched:
            if not self.model.classes[cls].gen_events:
                continue
            key = (cls, ref)
            mark = self._marks.pop(key, None)
            alive = ref in self._objects[cls]
            if mark is not None and mark.deleted:
                self._tombstones -= 1
            created_gen = gen if created else (mark.created_gen if mark else 0)
            if not alive and created:
                continue  # born and gone within one commit: nobody saw it
            self._marks[key] = Mark(gen, created_gen, not alive)
            if not alive:
                self._tombstones += 1
        if self._tombstones > self._tombstone_limit:
            self._prune_tombstones()
        self._changed.set()
        self._changed = asyncio.Event()

    def _prune_tombstones(self) -> None:
        target = self._tombstone_limit * 9 // 10
        for key in list(self._marks):
            if self._tombstones <= target:
                break
            mark = self._marks[key]
            if mark.deleted:
                del self._marks[key]
                self._tombstones -= 1
                self._lost_before = max(self._lost_before, mark.gen)

    def changes_since(self, gen: int) -> list[Change]:
        """Objects changed after generation `gen`, oldest first, one entry per object."""
        if gen < self._lost_before:
            raise EventsLost()
        out = []
        for (cls, ref), mark in reversed(self._marks.items()):
            if mark.gen <= gen:
                break
            if mark.deleted:
                if mark.created_gen > gen:
                    continue  # created and deleted since the token: no event at all
                op = "del"
            else:
                op = "add" if mark.created_gen > gen else "mod"
            out.append(Change(cls, ref, op, mark.gen))
        out.reverse()
        return out

    async def wait_for_change(self, after: int, timeout: float) -> bool:
        """Sleep until the generation passes `after` (True) or the timeout ends (False)."""
        while self.generation <= after:
            event = self._changed
            try:
                await asyncio.wait_for(event.wait(), timeout)
            except TimeoutError:
                return self.generation > after
        return True


def _zero(t: Any) -> Any:
    match t:
        case Set():
            return []
        case Map():
            return {}
        case Ref():
            return NULL_REF
        case Prim("int"):
            return 0
        case Prim("float"):
            return 0.0
        case Prim("bool"):
            return False
        case Prim("datetime"):
            return "19700101T00:00:00Z"
    return ""


def _zero_like(value: Any) -> Any:
    if isinstance(value, list):
        return []
    if isinstance(value, str) and value.startswith("OpaqueRef:"):
        return NULL_REF
    return value
