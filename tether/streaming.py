"""Following a session's events: the durable backlog from the store, then the live feed from
the bus, with no gap and no duplicate, until the session is purged. The one subscribe / lag /
catch-up loop: SSE (native and compat surfaces), WebSockets and a stop waiting for its turn's
end all read through `Feed`.

Durable events arrive exactly once and in seq order; deltas carry the seq of the last durable
event before them (their resume point) and the char offset of their text, so a reader that
reconnects gets the in-flight message's text so far as one coalesced delta. The bus only
wakes: whenever the feed may have missed something (it lagged, it was quiet for `idle_s`, a
commit arrived out of order, the bus is down) it catches up from the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Protocol

from tether import domain, errors
from tether.bus import Bus, Committed, Delta, Subscription
from tether.store import Store
from tether.views import compact_json

_PAGE = 500
_POLL_S = 1.0  # without a bus, how often a reader with no idle_s asks the store
_TURN_ENDS = frozenset(domain.TERMINAL_EVENT.values())
_GONE = domain.EventType.SESSION_DELETED  # live only: the session was purged
_DELTA = domain.EventType.MESSAGE_DELTA.value


class Frame:
    """One thing to send: `seq` is the SSE id (the last durable seq at this point). Its SSE
    bytes (`sse`) are encoded once and shared by every reader that sends the same thing; its
    `payload` (the JSON as a dict, for surfaces that translate it) is built on demand."""

    __slots__ = (
        "_cache",
        "_payload",
        "_source",
        "ends_turn",
        "pauses_turn",
        "seq",
        "turn_id",
        "type",
    )

    def __init__(
        self,
        seq: int,
        type: str,
        payload: dict[str, Any] | None,
        turn_id: str | None,
        ends_turn: bool = False,  # the turn's terminal event
        pauses_turn: bool = False,  # the turn now waits on interrupts: its stream ends, for now
        *,
        source: domain.Event | Delta | None = None,
        cache: dict[int, bytes] | None = None,  # an event's bytes, by seq, shared by readers
    ):
        self.seq = seq
        self.type = type
        self._payload = payload
        self.turn_id = turn_id
        self.ends_turn = ends_turn
        self.pauses_turn = pauses_turn
        self._source = source
        self._cache = cache

    @property
    def payload(self) -> dict[str, Any]:
        if self._payload is None:
            source = self._source
            assert source is not None
            self._payload = (
                source.payload(self.seq) if isinstance(source, Delta) else source.as_dict()
            )
        return self._payload

    @property
    def terminal(self) -> bool:
        """A stream of the turn's events ends here."""
        return self.ends_turn or self.pauses_turn

    def sse(self) -> bytes:
        """`id: <seq>`, `event: <type>`, `data: <JSON>`."""
        if isinstance(self._source, Delta):
            return self._source.sse(self.seq)
        cache = self._cache
        if cache is not None and (cached := cache.get(self.seq)) is not None:
            return cached
        data = compact_json(self.payload)
        encoded = f"id: {self.seq}\nevent: {self.type}\ndata: {data}\n\n".encode()
        if cache is not None:
            cache[self.seq] = encoded
        return encoded


def event_frame(event: domain.Event, cache: dict[int, bytes] | None = None) -> Frame:
    waiting = event.type is domain.EventType.INTERRUPT_CREATED and event.data.get("turn_waiting")
    return Frame(
        event.seq,
        event.type.value,
        None,
        event.turn_id,
        ends_turn=event.type in _TURN_ENDS,
        pauses_turn=bool(waiting),
        source=event,
        cache=cache,
    )


def delta_frame(seq: int, delta: Delta) -> Frame:
    return Frame(seq, _DELTA, None, delta.turn_id, source=delta)


class Batches(Protocol):
    """Batches of frames that can be closed whether or not they were read (an SSE body)."""

    def __aiter__(self) -> AsyncIterator[list[Frame]]: ...

    async def aclose(self) -> None: ...


class Following:
    """A feed's frames that own the feed: closing them closes the feed, even if they were
    never read (an answer that failed before it streamed must not leave a subscription)."""

    def __init__(self, feed: Feed, frames: AsyncGenerator[list[Frame], None]):
        self._feed = feed
        self._frames = frames

    def __aiter__(self) -> AsyncIterator[list[Frame]]:
        return self._frames

    async def aclose(self) -> None:
        try:
            await self._frames.aclose()
        finally:
            self._feed.close()


class Feed:
    """One reader of one session. Open it before the write whose consequences it waits for,
    so nothing published after that write can fall between."""

    def __init__(self, store: Store, bus: Bus, session_id: str, sub: Subscription | None):
        self.store = store
        self.bus = bus
        self.session_id = session_id
        self._sub = sub  # None: the bus is down, the store is polled

    @classmethod
    async def open(cls, store: Store, bus: Bus, session_id: str, *, live: bool = True) -> Feed:
        """`live`: the bus must be up (Unavailable otherwise); else a feed without it polls."""
        try:
            sub: Subscription | None = await bus.subscribe(session_id)
        except errors.Unavailable:
            if live:
                raise
            sub = None
        return cls(store, bus, session_id, sub)

    def close(self) -> None:
        if self._sub is not None:
            self.bus.unsubscribe(self._sub)
            self._sub = None

    async def frames(
        self,
        after: int,
        *,
        turn_id: str | None = None,
        idle_s: float | None = None,
        text: bool = True,
        live_from: bool = False,
    ) -> AsyncGenerator[list[Frame], None]:
        """Every event of the session after `after`, then live ones, forever (the caller
        stops), in batches: whatever is ready at once goes out together. With `turn_id`, only
        that turn's events and deltas; without `text`, no deltas. After `idle_s` without
        anything, an empty batch (a keep-alive). Ends when the session is purged.

        `live_from`: this feed subscribed before `after` was read, so everything after it
        is (barring a lost publish) in the live feed, deltas included and in their order
        among the events: no store read and no partial text to begin with. A reader that
        read the store first could pass a turn's end before the deltas queued for it, and
        drop them (a fast turn would stream no text)."""
        reader = _Reader(self, after, turn_id, text)
        if not live_from or self._sub is None:
            batch = [f async for f in reader.backlog()]
            if text and (partial := await self.bus.partial(self.session_id)):
                batch += reader.deltas([partial])
            if batch:
                yield batch
        while True:
            if self._sub is None:  # no bus: the store is all there is, read now and then
                await asyncio.sleep(idle_s or _POLL_S)
                batch = [f async for f in reader.backlog()]
                if not batch and not await self.store.sessions.exists(self.session_id):
                    return
                yield batch
                continue
            received = await self._sub.get_all(idle_s, hold=text)
            idle = not received.items and not received.lagged
            batch = []
            if received.lagged or idle:
                # lagged: items were dropped; idle: a publish may have been lost (a cluster
                # bus is at most once). Either way the store has every durable event.
                # Also whether the session is still there (a lost `session.deleted`).
                batch += [f async for f in reader.backlog()]
                if not batch and not await self.store.sessions.exists(self.session_id):
                    return
            else:
                async for frame in reader.live(received.items):
                    batch.append(frame)
            if batch or idle:
                yield batch  # an empty batch after idle_s: time for a keep-alive
            if reader.gone:
                return  # purged: nothing more will come, and it cannot be resumed


class _Reader:
    """Where one reading of a feed stands: the last durable seq passed, the text sent of each
    message, the turns whose end it passed (a late delta of a stale worker is dropped)."""

    def __init__(self, feed: Feed, after: int, turn_id: str | None, text: bool):
        self.feed = feed
        self.cursor = after
        self.turn_id = turn_id
        self.text = text
        self.sent: dict[str, int] = {}  # message_id -> chars already sent
        self.ended: set[str] = set()
        self.gone = False  # the session was purged

    def wanted(self, frame: Frame) -> bool:
        return self.turn_id is None or frame.turn_id == self.turn_id

    def durable(self, event: domain.Event, cache: dict[int, bytes] | None = None) -> Frame | None:
        if event.seq <= self.cursor:
            return None
        self.cursor = event.seq
        frame = event_frame(event, cache)
        if frame.ends_turn and frame.turn_id:
            self.ended.add(frame.turn_id)
        return frame if self.wanted(frame) else None

    async def backlog(self, until: int | None = None) -> AsyncIterator[Frame]:
        """The stored events after the cursor (up to seq `until`)."""
        while until is None or self.cursor < until:
            page = await self.feed.store.sessions.events_after(
                self.feed.session_id, self.cursor, _PAGE
            )
            for event in page:
                if until is not None and event.seq > until:
                    return
                if frame := self.durable(event):
                    yield frame
            if len(page) < _PAGE:
                return

    async def live(self, items: list[Committed | Delta]) -> AsyncIterator[Frame]:
        """The bus's items as frames: consecutive deltas of a message coalesce into one."""
        pending: list[Delta] = []
        for item in items:
            match item:
                case Delta():
                    pending.append(item)
                case Committed(events=events, sse=cache):
                    for frame in self.deltas(pending):
                        yield frame
                    pending = []
                    if any(e.type is _GONE for e in events):
                        self.gone = True
                        return
                    if events and events[0].seq > self.cursor + 1:
                        # A commit we have not been told of yet (another process published
                        # it later than this one): only that gap from the store. Reading on
                        # past these events could pass the turn's end before the deltas
                        # queued behind them, which would then be dropped.
                        async for frame in self.backlog(until=events[0].seq - 1):
                            yield frame
                    for event in events:
                        if durable := self.durable(event, cache):
                            yield durable
        for frame in self.deltas(pending):
            yield frame

    def deltas(self, deltas: list[Delta]) -> list[Frame]:
        """The part of `deltas` not yet sent, as frames. A run of one message's pieces made
        here goes as one frame; one relayed already encoded goes as it came (a frame of its
        own: concatenating would mean decoding and encoding it again)."""
        frames: list[Frame] = []
        run: list[Delta] = []

        def close_run() -> None:
            if len(run) == 1:
                frames.append(delta_frame(self.cursor, run[0]))
            elif run:
                first, text = run[0], "".join(d.text for d in run)
                merged = Delta(
                    first.session_id, first.turn_id, first.message_id, first.offset, text
                )
                frames.append(delta_frame(self.cursor, merged))
            run.clear()

        for delta in deltas:
            fresh = self._fresh(delta) if self.text else None
            if fresh is None:
                continue
            if run and (run[0].message_id != fresh.message_id or fresh.encoded):
                close_run()
            run.append(fresh)
            if fresh.encoded:
                close_run()
        close_run()
        return frames

    def _fresh(self, delta: Delta) -> Delta | None:
        """The part of `delta` not yet sent (None: nothing)."""
        if delta.turn_id in self.ended or (self.turn_id and delta.turn_id != self.turn_id):
            return None
        if self.feed.bus.turn_ended(delta.turn_id):
            return None  # heard of its end out of band: a stop's answer may be out already
        done = self.sent.get(delta.message_id, 0)
        end = delta.end
        if end <= done:
            return None
        if delta.offset < done:
            delta = Delta(
                delta.session_id,
                delta.turn_id,
                delta.message_id,
                done,
                delta.text[done - delta.offset :],
            )
        self.sent[delta.message_id] = end
        return delta
