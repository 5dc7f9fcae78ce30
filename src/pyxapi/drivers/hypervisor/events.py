"""Fan-out of driver events to any number of subscribers.

A subscription is registered when ``subscribe()`` returns (not on first iteration), so a caller
that subscribes before acting cannot miss the event its action causes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")


class EventStream(Generic[T]):
    def __init__(self, hub: EventHub[T]) -> None:
        self._hub = hub
        self._queue: asyncio.Queue[T] = asyncio.Queue()
        self.closed = False

    def _put(self, item: T) -> None:
        self._queue.put_nowait(item)

    async def get(self, timeout: float | None = None) -> T:
        """The next event; TimeoutError after ``timeout`` seconds."""
        if timeout is None:
            return await self._queue.get()
        async with asyncio.timeout(timeout):
            return await self._queue.get()

    def pending(self) -> list[T]:
        """Events already queued, without waiting."""
        out: list[T] = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out

    def close(self) -> None:
        self.closed = True
        self._hub._subscribers.discard(self)

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        if self.closed and self._queue.empty():
            raise StopAsyncIteration
        return await self.get()

    def __enter__(self) -> EventStream[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventHub(Generic[T]):
    def __init__(self) -> None:
        self._subscribers: set[EventStream[T]] = set()

    def subscribe(self) -> EventStream[T]:
        stream = EventStream(self)
        self._subscribers.add(stream)
        return stream

    def publish(self, item: T) -> None:
        for s in list(self._subscribers):
            s._put(item)
