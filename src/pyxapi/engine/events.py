"""event.from / event.next over the store's change marks.

A waiting client costs one pending future: the store wakes every waiter once per commit,
and each re-checks only its own subscription.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from pyxapi.db.store import Change, EventsLost, Store
from pyxapi.model.errors import ApiError
from pyxapi.model.schema import Model
from pyxapi.model.types import DATETIME, Record
from pyxapi.wire.marshal import Format, Marshaller, now_datetime

TOKEN_WIDTH = 20


@dataclass(frozen=True, slots=True)
class Subscription:
    """Classes (real names) watched whole, plus individual (class, ref) pairs."""

    classes: frozenset[str]
    objects: frozenset[tuple[str, str]]

    def matches(self, cls: str, ref: str) -> bool:
        return cls in self.classes or (cls, ref) in self.objects

    def watched_classes(self) -> set[str]:
        return set(self.classes) | {c for c, _ in self.objects}


@dataclass(slots=True)
class Registration:
    """event.register state for one session."""

    entries: set[str] = field(default_factory=set)
    generation: int = 0


def make_token(gen: int) -> str:
    # xapi's shape: "<db generation>,<message generation>"; messages share our one generation.
    return f"{gen:0{TOKEN_WIDTH}d},{0:0{TOKEN_WIDTH}d}"


def parse_token(token: str) -> int | None:
    if token == "":
        return None
    head = token.split(",", 1)[0].strip()
    if not head.isdigit():
        raise ApiError("EVENT_FROM_TOKEN_PARSE_FAILURE", token)
    return int(head)


class EventService:
    def __init__(self, model: Model, store: Store, marshal: Marshaller, batch_delay: float = 0.05) -> None:
        self.model = model
        self.store = store
        self.marshal = marshal
        self.batch_delay = batch_delay
        self.registrations: dict[str, Registration] = {}
        self._event_classes = frozenset(c.name for c in model.stored_classes() if c.gen_events)

    def subscription(self, entries: list[str] | set[str]) -> Subscription:
        classes: set[str] = set()
        objects: set[tuple[str, str]] = set()
        for entry in entries:
            if entry == "*":
                classes |= self._event_classes
                continue
            name, _, ref = entry.partition("/")
            cdef = self.model.class_by_lower(name)
            if cdef is None or cdef.name not in self._event_classes:
                # xapi does not check class names: one without events simply matches nothing
                # (Xen Orchestra subscribes to every class it knows, `secret` included).
                continue
            if ref:
                objects.add((cdef.name, ref))
            else:
                classes.add(cdef.name)
        return Subscription(frozenset(classes), frozenset(objects))

    def _matching(self, sub: Subscription, since: int) -> list[Change]:
        try:
            changes = self.store.changes_since(since)
        except EventsLost:
            raise ApiError("EVENTS_LOST") from None
        return [c for c in changes if sub.matches(c.cls, c.ref)]

    async def wait(self, sub: Subscription, since: int, timeout: float) -> list[Change]:
        """Changes matching `sub` after `since`; waits up to `timeout` for the first one."""
        since = min(since, self.store.generation)  # a token from before a restart means "from now"
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            found = self._matching(sub, since)
            if found:
                # Give the writer a moment to finish related changes, so one reply carries them.
                await asyncio.sleep(self.batch_delay)
                return self._matching(sub, since)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            await self.store.wait_for_change(self.store.generation, remaining)

    def snapshot(self, sub: Subscription) -> list[Change]:
        """Token "": an `add` for every live object matching the subscription."""
        gen = self.store.generation
        out = []
        for cls in sorted(sub.watched_classes()):
            for ref in self.store.refs(cls):
                if sub.matches(cls, ref):
                    out.append(Change(cls, ref, "add", gen))
        return out

    def encode_events(self, changes: list[Change], fmt: Format) -> list[dict[str, Any]]:
        ts = self.marshal.encode(now_datetime(), DATETIME, fmt)
        events = []
        for c in changes:
            ev: dict[str, Any] = {
                "id": str(c.gen),
                "timestamp": ts,
                "class": c.cls.lower(),
                "operation": c.op,
                "ref": c.ref,
            }
            rec = self.store.find(c.cls, c.ref)
            if rec is not None and c.op != "del":
                ev["snapshot"] = self.marshal.encode(rec, Record(c.cls), fmt)
                if "uuid" in rec:
                    ev["obj_uuid"] = rec["uuid"]
            events.append(ev)
        return events

    def valid_ref_counts(self, sub: Subscription) -> dict[str, int]:
        return {cls.lower(): self.store.count(cls) for cls in sorted(sub.watched_classes())}
