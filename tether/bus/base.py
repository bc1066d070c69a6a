"""What every bus offers. A lost signal must never lose data: readers fall back to the store."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tether import domain


@dataclass(slots=True, frozen=True)
class Delta:
    """A piece of an assistant message in flight: `text` starts at char `offset`."""

    session_id: str
    turn_id: str
    message_id: str
    offset: int
    text: str


@dataclass(slots=True, frozen=True)
class Committed:
    """The events one transaction committed, in seq order."""

    events: list[domain.Event]


Item = Committed | Delta


@dataclass(slots=True)
class Received:
    """What a reader got: the items published since it last asked, in publish order; `lagged`
    if some were lost meanwhile, so the reader must catch up from the store."""

    items: list[Item]
    lagged: bool = False


class Subscription:
    """A session's live feed for one reader: committed events and deltas, in publish order.

    A reader that falls `max_pending` items behind is marked `lagged` and loses its queued
    items; it must catch up from the store (events are durable, deltas are not)."""

    def __init__(self, session_id: str, max_pending: int = 10_000):
        self.session_id = session_id
        self.max_pending = max_pending
        self.lagged = False
        self._items: deque[Item] = deque()
        self._ready = asyncio.Event()

    def put(self, item: Item) -> None:
        if len(self._items) >= self.max_pending:
            self._items.clear()
            self.lagged = True
        else:
            self._items.append(item)
        self._ready.set()

    def lag(self) -> None:
        """This reader may have missed items: it must catch up from the store."""
        self._items.clear()
        self.lagged = True
        self._ready.set()

    async def get_all(self, idle_s: float | None = None) -> Received:
        """Everything published since the last call; waits for at least one item (or lag),
        or answers nothing after `idle_s`."""
        if not self._items and not self.lagged:
            self._ready.clear()
            if idle_s is None:
                await self._ready.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(idle_s):
                        await self._ready.wait()
        received = Received(list(self._items), self.lagged)
        self._items.clear()
        self.lagged = False
        return received


class Bus(Protocol):
    @property
    def up(self) -> bool:
        """Live updates work now (the in-process bus always; Redis when connected)."""
        ...

    def publish_events(self, session_id: str, events: list[domain.Event]) -> None: ...

    def publish_delta(self, delta: Delta) -> None: ...

    async def subscribe(self, session_id: str) -> Subscription:
        """A live feed of the session: everything published once this returns is in it.
        Unavailable if the bus is down."""
        ...

    def unsubscribe(self, sub: Subscription) -> None: ...

    async def partial(self, session_id: str) -> Delta | None:
        """The text of the message in flight so far, as one delta from offset 0."""
        ...

    def notify_work(self) -> None:
        """Turns became runnable."""
        ...

    async def wait_for_work(self, max_wait_s: float) -> None: ...

    def notify_webhooks(self) -> None:
        """Webhook deliveries became due (committed, retried by hand, handed back)."""
        ...

    async def wait_for_webhooks(self, max_wait_s: float) -> None:
        """Until `notify_webhooks` (here or, in cluster mode, anywhere), or `max_wait_s`."""
        ...

    def signal_stop(self, turn_id: str) -> None:
        """A stop was written for this turn: wake its executor."""
        ...

    def on_stop(self, callback: Callable[[str], None] | None) -> None: ...

    async def close(self) -> None: ...
