"""event.*: from, register/unregister/next, inject, get_current_id."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyxapi.api.dispatch import Call, Handler, WireValue
from pyxapi.engine.events import EventService, Registration, make_token, parse_token
from pyxapi.model.errors import ApiError
from pyxapi.wire.marshal import Format

if TYPE_CHECKING:
    pass

# event.next waits this long per round before looking again (it blocks until something arrives).
NEXT_POLL_SECONDS = 30.0


def _events(call: Call) -> EventService:
    service: EventService = call.ctx.services["events"]
    return service


async def event_from(call: Call, classes: list[str], token: str, timeout: float) -> WireValue:
    events = _events(call)
    sub = events.subscription(classes)
    since = parse_token(token)
    if since is None:
        changes = events.snapshot(sub)
    else:
        changes = await events.wait(sub, since, timeout)
    gen = events.store.generation

    def encode(fmt: Format) -> dict[str, Any]:
        return {
            "events": events.encode_events(changes, fmt),
            "valid_ref_counts": events.valid_ref_counts(sub),
            "token": make_token(gen),
        }

    return WireValue(encode)


def register(call: Call, classes: list[str]) -> None:
    events = _events(call)
    events.subscription(classes)  # reject bad entries now, not at event.next
    reg = events.registrations.setdefault(call.session_ref, Registration(generation=events.store.generation))
    reg.entries |= set(classes)


def unregister(call: Call, classes: list[str]) -> None:
    reg = _events(call).registrations.get(call.session_ref)
    if reg is not None:
        reg.entries -= set(classes)


async def next_events(call: Call) -> WireValue:
    events = _events(call)
    reg = events.registrations.get(call.session_ref)
    if reg is None:
        raise ApiError("SESSION_NOT_REGISTERED", call.session_ref)
    while True:
        changes = await events.wait(events.subscription(reg.entries), reg.generation, NEXT_POLL_SECONDS)
        if changes:
            break
    reg.generation = max(c.gen for c in changes)
    return WireValue(lambda fmt: events.encode_events(changes, fmt))


def inject(call: Call, cls: str, ref: str) -> str:
    events = _events(call)
    cdef = call.ctx.model.class_by_lower(cls)
    if cdef is None or not events.store.has_class(cdef.name):
        raise ApiError("EVENT_SUBSCRIPTION_PARSE_FAILURE", cls)
    before = events.store.generation
    events.store.touch(cdef.name, ref)
    # A token from before the touch, so event.from with it returns the injected event at once.
    return make_token(before)


def get_current_id(call: Call) -> int:
    return _events(call).store.generation


MESSAGES: dict[str, Handler] = {
    "from": event_from,
    "register": register,
    "unregister": unregister,
    "next": next_events,
    "inject": inject,
    "get_current_id": get_current_id,
}
