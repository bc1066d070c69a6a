"""Following a session's events: durable backlog from the store, then the live feed.

Transport-agnostic: SSE (native and compat surfaces) and WebSockets build on `follow`.
Durable events arrive exactly once and in seq order; deltas carry the seq of the last durable
event before them (their resume point) and the char offset of their text, so a reader that
reconnects gets the in-flight message's text so far as one coalesced delta.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from tether import domain
from tether.bus import Bus, Delta
from tether.store import Store

_PAGE = 500


@dataclass(slots=True)
class Frame:
    """One thing to send: `seq` is the SSE id (the last durable seq at this point)."""

    seq: int
    type: str
    payload: dict[str, Any]
    turn_id: str | None
    terminal: bool = False  # a turn's terminal event


def _event_frame(event: domain.Event) -> Frame:
    # a turn's stream ends when it ends, or when it starts waiting for a human
    waiting = event.type is domain.EventType.INTERRUPT_CREATED and event.data.get("turn_waiting")
    return Frame(
        event.seq,
        event.type.value,
        event.as_dict(),
        event.turn_id,
        terminal=event.type in _TERMINAL_TYPES or bool(waiting),
    )


_TERMINAL_TYPES = frozenset(domain.TERMINAL_EVENT.values())
_GONE = domain.EventType.SESSION_DELETED


def _delta_frame(seq: int, delta: Delta) -> Frame:
    return Frame(
        seq,
        domain.EventType.MESSAGE_DELTA.value,
        {
            "seq": seq,
            "type": domain.EventType.MESSAGE_DELTA.value,
            "session_id": delta.session_id,
            "turn_id": delta.turn_id,
            "data": {"message_id": delta.message_id, "offset": delta.offset, "delta": delta.text},
        },
        delta.turn_id,
    )


async def follow(
    store: Store,
    bus: Bus,
    session_id: str,
    after: int,
    *,
    turn_id: str | None = None,
    idle_s: float | None = None,
) -> AsyncIterator[list[Frame]]:
    """Every event of the session after `after`, then live ones, until the caller stops or
    the session is purged, in batches: whatever is ready at once goes out together. With
    `turn_id`, only that turn's events and deltas. After `idle_s` without anything, an empty
    batch (a keep-alive)."""
    sub = await bus.subscribe(session_id)  # before reading the backlog, so nothing falls between
    cursor = after
    sent: dict[str, int] = {}  # message_id -> chars already sent
    ended: set[str] = set()  # turns whose end we passed: a late delta (a stale worker) is not

    async def backlog() -> AsyncIterator[Frame]:
        nonlocal cursor
        while True:
            page = await store.events_after(session_id, cursor, _PAGE)
            for event in page:
                cursor = event.seq
                yield note_end(_event_frame(event))
            if len(page) < _PAGE:
                return

    def fresh(delta: Delta) -> Delta | None:
        """The part of `delta` not yet sent."""
        if delta.turn_id in ended:
            return None
        done = sent.get(delta.message_id, 0)
        end = delta.offset + len(delta.text)
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
        sent[delta.message_id] = end
        return delta

    def note_end(frame: Frame) -> Frame:
        if frame.terminal and frame.turn_id and frame.type != "interrupt.created":
            ended.add(frame.turn_id)
        return frame

    def wanted(frame_turn: str | None) -> bool:
        return turn_id is None or frame_turn == turn_id

    try:
        batch = [frame async for frame in backlog() if wanted(frame.turn_id)]
        partial = await bus.partial(session_id)
        if partial and (part := fresh(partial)) and wanted(part.turn_id):
            batch.append(_delta_frame(cursor, part))
        if batch:
            yield batch
        while True:
            items = await sub.get_all(idle_s)
            idle = not items and not sub.lagged
            batch = []
            if sub.lagged or idle:
                # lagged: items were dropped; idle: a publish may have been lost (a cluster
                # bus is at most once). Either way the store has every durable event, and
                # knows whether the session is still there (a lost `session.deleted`).
                sub.lagged = False
                items = []
                batch += [frame async for frame in backlog() if wanted(frame.turn_id)]
                if not batch and not await store.session_exists(session_id):
                    return
            pending: Delta | None = None  # consecutive deltas coalesce into one frame
            gone = False
            for item in items:
                if not isinstance(item, Delta) and any(e.type is _GONE for e in item):
                    gone = True  # purged: nothing more will come, and it cannot be resumed
                    break
                if isinstance(item, Delta):
                    if not wanted(item.turn_id) or not (part := fresh(item)):
                        continue
                    if pending and pending.message_id == part.message_id:
                        pending = Delta(
                            pending.session_id,
                            pending.turn_id,
                            pending.message_id,
                            pending.offset,
                            pending.text + part.text,
                        )
                    else:
                        if pending:
                            batch.append(_delta_frame(cursor, pending))
                        pending = part
                    continue
                if pending:
                    batch.append(_delta_frame(cursor, pending))
                    pending = None
                if item and item[0].seq > cursor + 1:
                    # a commit we have not been told of yet (out-of-order publish): fill the gap
                    batch += [frame async for frame in backlog() if wanted(frame.turn_id)]
                for event in item:
                    if event.seq <= cursor:
                        continue
                    cursor = event.seq
                    frame = note_end(_event_frame(event))
                    if wanted(frame.turn_id):
                        batch.append(frame)
            if pending:
                batch.append(_delta_frame(cursor, pending))
            if batch or idle:
                yield batch  # an empty batch after idle_s: time for a keep-alive
            if gone:
                return
    finally:
        bus.unsubscribe(sub)
