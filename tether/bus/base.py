"""What every bus offers. A lost signal must never lose data: readers fall back to the store."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tether import domain
from tether.views import compact_json

# Live text goes out to a reader at most this often (Subscription.get_all's `hold`), and a
# cluster worker publishes a session's text at most this often (bus/redis.py): with tokens
# every 20 ms, 2-3 of them per frame, far fewer writes for the same text.
DELTA_FLUSH_S = 0.05


class Delta:
    """A piece of an assistant message in flight: `text` starts at char `offset`.

    Its SSE frame is encoded once, whoever reads it (`sse`). A delta relayed by the Redis bus
    arrives with its frame's JSON already encoded by the worker (`wire`, everything after
    `{"seq":N,`) and its text's `length`; its text is decoded only if a reader must cut it."""

    __slots__ = (
        "_frame",
        "_text",
        "_wire",
        "length",
        "message_id",
        "offset",
        "session_id",
        "turn_id",
    )

    def __init__(
        self,
        session_id: str,
        turn_id: str,
        message_id: str,
        offset: int,
        text: str | None = None,
        *,
        wire: bytes | None = None,
        length: int | None = None,
    ):
        self.session_id = session_id
        self.turn_id = turn_id
        self.message_id = message_id
        self.offset = offset
        self._text = text
        self._wire = wire
        self.length = len(text) if text is not None else (length or 0)
        self._frame: tuple[int, bytes] | None = None  # the last SSE frame made: (seq, bytes)

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = str(json.loads(b"{" + self.wire)["data"]["delta"])
        return self._text

    @property
    def encoded(self) -> bool:
        """Relayed with its frame's JSON encoded already."""
        return self._text is None

    @property
    def end(self) -> int:
        return self.offset + self.length

    @property
    def wire(self) -> bytes:
        """The frame's JSON after its `{"seq":N,` (the same for every reader)."""
        if self._wire is None:
            data = {"message_id": self.message_id, "offset": self.offset, "delta": self.text}
            body = {
                "type": "message.delta",
                "session_id": self.session_id,
                "turn_id": self.turn_id,
                "data": data,
            }
            self._wire = compact_json(body).encode()[1:]
        return self._wire

    def sse(self, seq: int) -> bytes:
        """The SSE frame of this delta for a reader whose last event is `seq`."""
        frame = self._frame
        if frame is None or frame[0] != seq:
            head = b'id: %d\nevent: message.delta\ndata: {"seq":%d,' % (seq, seq)
            frame = self._frame = (seq, head + self.wire + b"\n\n")
        return frame[1]

    def payload(self, seq: int) -> dict[str, Any]:
        return {
            "seq": seq,
            "type": "message.delta",
            "session_id": self.session_id,
            "turn_id": self.turn_id,
            "data": {"message_id": self.message_id, "offset": self.offset, "delta": self.text},
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Delta):
            return NotImplemented
        return (self.session_id, self.turn_id, self.message_id, self.offset, self.text) == (
            other.session_id,
            other.turn_id,
            other.message_id,
            other.offset,
            other.text,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Delta({self.session_id!r}, {self.turn_id!r}, {self.message_id!r}, "
            f"{self.offset!r}, {self.text!r})"
        )


@dataclass(slots=True, frozen=True)
class Committed:
    """The events one transaction committed, in seq order; `sse`: their SSE frames by seq,
    encoded once for all readers."""

    events: list[domain.Event]
    sse: dict[int, bytes] = field(default_factory=dict, compare=False, repr=False)


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
        self._waiter: asyncio.Future[None] | None = None
        self._committed = False  # an event is queued: no holding back
        self._wake_on_delta = True
        self._last_text_at = -DELTA_FLUSH_S  # when text last went out (loop time)

    def put(self, item: Item) -> None:
        if len(self._items) >= self.max_pending:
            self._items.clear()
            self.lagged = True
            self._wake()
            return
        self._items.append(item)
        if isinstance(item, Committed):
            self._committed = True
            self._wake()
        elif self._wake_on_delta:
            self._wake()

    def lag(self) -> None:
        """This reader may have missed items: it must catch up from the store."""
        self._items.clear()
        self.lagged = True
        self._wake()

    async def get_all(self, idle_s: float | None = None, *, hold: bool = False) -> Received:
        """Everything published since the last call; waits for at least one item (or lag),
        or answers nothing after `idle_s`. `hold`: text (deltas alone) goes out at most every
        DELTA_FLUSH_S, gathered meanwhile (a reader writing every token as a frame of its own
        spends most of its time on the writes); an event goes out at once, with the text
        before it."""
        loop = asyncio.get_running_loop()
        if not self._items and not self.lagged:
            await self._wait(loop, idle_s)
        if hold and self._items and not (self._committed or self.lagged):
            due = self._last_text_at + DELTA_FLUSH_S - loop.time()
            if due > 0:
                self._wake_on_delta = False  # only an event or lag cuts the wait short
                try:
                    await self._wait(loop, due)
                finally:
                    self._wake_on_delta = True
        received = Received(list(self._items), self.lagged)
        if any(isinstance(item, Delta) for item in received.items):
            self._last_text_at = loop.time()  # the first text after a pause goes at once
        self._items.clear()
        self.lagged = self._committed = False
        return received

    async def _wait(self, loop: asyncio.AbstractEventLoop, at_most_s: float | None) -> None:
        # a timer resolving the waiter, not asyncio.timeout: one of these per frame sent
        self._waiter = waiter = loop.create_future()
        timer = None if at_most_s is None else loop.call_later(at_most_s, _resolve, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _wake(self) -> None:
        if self._waiter is not None:
            _resolve(self._waiter)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class EndWatch:
    """Who waits for a session's turns to end (a stop waiting for its confirmation): set
    when the bus hears that one did, by a way that does not queue behind live text."""

    def __init__(self, session_id: str):
        self.session_id = session_id
        self.ended: set[str] = set()
        self.event = asyncio.Event()

    def saw(self, turn_id: str) -> None:
        self.ended.add(turn_id)
        self.event.set()


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

    def notify_work(self, *, local: bool = False) -> None:
        """A turn became runnable (one wake-up, for one worker); `local`: only this process's
        claim loop needs waking (a slot of its own came free, it is stopping)."""
        ...

    async def wait_for_work(self, max_wait_s: float, *, take: bool = True) -> None:
        """Until a wake-up or `max_wait_s`; `take`: this worker has room, so it may take a
        wake-up meant for any worker (one that cannot claim must leave it to the others)."""
        ...

    def watch_ends(self, session_id: str) -> EndWatch:
        """Start hearing of the session's turns ending (then `unwatch_ends`)."""
        ...

    def unwatch_ends(self, watch: EndWatch) -> None: ...

    def turn_ended(self, turn_id: str) -> bool:
        """The bus heard that this turn ended (its late deltas are dropped)."""
        ...

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
