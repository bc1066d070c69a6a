"""The in-process bus of embedded mode."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable

from tether import domain
from tether.bus.base import Committed, Delta, EndWatch, Subscription

ENDS_MESSAGE = frozenset(
    {
        domain.EventType.MESSAGE_COMPLETED,
        domain.EventType.TURN_COMPLETED,
        domain.EventType.TURN_FAILED,
        domain.EventType.TURN_CANCELLED,
        domain.EventType.SESSION_DELETED,
    }
)


TURN_ENDS = frozenset(domain.TERMINAL_EVENT.values())


class LocalBus:
    def __init__(self) -> None:
        self._subs: defaultdict[str, set[Subscription]] = defaultdict(set)
        self._partials: dict[str, tuple[Delta, list[str]]] = {}
        self._work = asyncio.Event()
        self._webhooks = asyncio.Event()
        self._stop_callback: Callable[[str], None] | None = None
        self._end_watches: defaultdict[str, set[EndWatch]] = defaultdict(set)

    @property
    def up(self) -> bool:
        return True

    def publish_events(self, session_id: str, events: list[domain.Event]) -> None:
        if session_id in self._partials and any(e.type in ENDS_MESSAGE for e in events):
            del self._partials[session_id]
        for sub in self._subs.get(session_id, ()):
            sub.put(Committed(events))
        for watch in self._end_watches.get(session_id, ()):
            for event in events:
                if event.type in TURN_ENDS and event.turn_id:
                    watch.saw(event.turn_id)

    def watch_ends(self, session_id: str) -> EndWatch:
        watch = EndWatch(session_id)
        self._end_watches[session_id].add(watch)
        return watch

    def unwatch_ends(self, watch: EndWatch) -> None:
        watches = self._end_watches.get(watch.session_id)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del self._end_watches[watch.session_id]

    def turn_ended(self, turn_id: str) -> bool:
        return False  # in one process events and deltas are in order: readers see the end

    def publish_delta(self, delta: Delta) -> None:
        current = self._partials.get(delta.session_id)
        if current is None or current[0].message_id != delta.message_id:
            self._partials[delta.session_id] = (delta, [delta.text])
        else:
            current[1].append(delta.text)
        for sub in self._subs.get(delta.session_id, ()):
            sub.put(delta)

    async def subscribe(self, session_id: str) -> Subscription:
        sub = Subscription(session_id)
        self._subs[session_id].add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.session_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.session_id]

    async def partial(self, session_id: str) -> Delta | None:
        current = self._partials.get(session_id)
        if current is None:
            return None
        first, texts = current
        return Delta(session_id, first.turn_id, first.message_id, first.offset, "".join(texts))

    def notify_work(self, *, local: bool = False) -> None:
        self._work.set()

    async def wait_for_work(self, max_wait_s: float, *, take: bool = True) -> None:
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
        # arrives as the wait ends, and a worker stopping would then never stop claiming
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_wait_s):
                await self._work.wait()
        self._work.clear()

    def notify_webhooks(self) -> None:
        self._webhooks.set()

    async def wait_for_webhooks(self, max_wait_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_wait_s):
                await self._webhooks.wait()
        self._webhooks.clear()

    def signal_stop(self, turn_id: str) -> None:
        if self._stop_callback:
            self._stop_callback(turn_id)

    def on_stop(self, callback: Callable[[str], None] | None) -> None:
        self._stop_callback = callback

    async def close(self) -> None:
        self._subs.clear()
