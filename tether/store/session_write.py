"""One write transaction on one session.

Every write that touches a session goes through `SessionWrite`: it numbers the events and
messages from the session's counters and re-derives the session status, so the event log never
disagrees with state (DESIGN §5). Its hot statements are built once: building a statement
costs more than SQLite takes to run it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Row, Table, bindparam, insert, or_, select, update

from tether import domain, ids, views
from tether.domain import EventType, TurnStatus, utcnow
from tether.store import rows
from tether.store.guards import status_in
from tether.store.schema import events, messages, sessions, turns

UNFINISHED = [s.value for s in domain.UNFINISHED]

IS_UNFINISHED = status_in(turns.c.status, domain.UNFINISHED)
IS_ACTIVE = status_in(turns.c.status, domain.ACTIVE)
IS_HELD = status_in(turns.c.status, domain.HELD)

SESSION_TURNS = select(turns.c.id, turns.c.status, turns.c.seq).where(
    turns.c.session_id == bindparam("sid"),
    or_(IS_UNFINISHED, turns.c.seq == bindparam("last_seq")),
)  # the unfinished turns of a session and its last one
SESSION_BUSY = select(turns.c.id).where(turns.c.session_id == bindparam("sid"), IS_ACTIVE).limit(1)
UPDATE_SESSION = update(sessions).where(sessions.c.id == bindparam("sid"))  # SET from params
SESSION_BY_ID = select(sessions).where(sessions.c.id == bindparam("sid"))
INSERT_MESSAGES = insert(messages)
INSERT_EVENTS = insert(events)


class SessionWrite:
    """One transaction's changes to one session, flushed once at the end."""

    def __init__(self, conn: Connection, row: Row[Any], insert: Callable[[Table], Any]):
        self.conn = conn
        self.insert = insert  # the dialect's INSERT, which offers upserts
        self.id: str = row.id
        self.tenant_id: str = row.tenant_id
        self.closed = row.closed_at is not None
        self.now = utcnow()
        self._status: str = row.status
        self._event_seq: int = row.last_event_seq
        self._message_seq: int = row.last_message_seq
        self.turn_seq: int = row.last_turn_seq
        self.pending_steers: int = row.pending_steers  # kept up to date by store/steers.py
        self.events: list[domain.Event] = []
        self.pending_messages: list[domain.Message] = []  # inserted at flush
        self.rolled_back: set[str] = set()  # turns whose messages leave the transcript
        self.outbox = 0  # webhook deliveries written (store/webhooks.py): wake dispatchers
        self.after_flush: list[Callable[[], None]] = []  # what needs the session as it ends

    @property
    def event_seq(self) -> int:
        """The seq of the last event of the session, this write's included."""
        return self._event_seq

    def event(self, type: EventType, turn_id: str | None, data: dict[str, Any]) -> None:
        self._event_seq += 1
        self.events.append(domain.Event(self.id, self._event_seq, type, turn_id, data, self.now))

    def new_message(
        self,
        turn_id: str,
        role: domain.MessageRole,
        content: str | None,
        *,
        tool_call_id: str | None = None,
        name: str | None = None,
        message_id: str | None = None,
    ) -> domain.Message:
        """A message the store writes itself (a turn's input, a closed call's result, a
        steer); `message_id` when its id was given out before (a steer's)."""
        message = domain.Message(
            id=message_id or ids.new("msg"),
            session_id=self.id,
            turn_id=turn_id,
            seq=0,
            role=role,
            content=content,
            tool_call_id=tool_call_id,
            name=name,
        )
        return self.add_message(message)

    def add_message(self, message: domain.Message) -> domain.Message:
        """Append `message` to the transcript: numbered here, inserted at flush."""
        self._message_seq += 1
        numbered = dataclasses.replace(
            message, session_id=self.id, seq=self._message_seq, created_at=self.now
        )
        self.pending_messages.append(numbered)
        self.event(
            EventType.MESSAGE_COMPLETED, numbered.turn_id, {"message": views.message(numbered)}
        )
        return numbered

    def flush(self) -> None:
        found = self.conn.execute(SESSION_TURNS, {"sid": self.id, "last_seq": self.turn_seq})
        turn_rows = found.all()
        states = {TurnStatus(r.status) for r in turn_rows if r.status in UNFINISHED}
        last = next((r for r in turn_rows if r.seq == self.turn_seq), None)
        active = next((s for s in states if s in domain.ACTIVE), None)
        status = domain.derive_session_status(self.closed, active, TurnStatus.QUEUED in states)
        if status.value != self._status:
            self.event(
                EventType.SESSION_UPDATED,
                None,
                {
                    "status": status.value,
                    "last_turn": {"id": last.id, "status": last.status} if last else None,
                },
            )
        if self.pending_messages:
            self.conn.execute(
                INSERT_MESSAGES,
                [
                    {**rows.MESSAGE.values(m), "hidden": m.turn_id in self.rolled_back}
                    for m in self.pending_messages
                ],
            )
        if self.events:
            self.conn.execute(
                INSERT_EVENTS,
                [rows.EVENT.values(e) for e in self.events],
            )
        self.conn.execute(
            UPDATE_SESSION,
            {
                "sid": self.id,
                "status": status.value,
                "last_event_seq": self._event_seq,
                "last_message_seq": self._message_seq,
                "last_turn_seq": self.turn_seq,
                "pending_steers": self.pending_steers,
                "last_turn_id": last.id if last else None,
                "last_turn_status": last.status if last else None,
                "updated_at": self.now,
            },
        )
        for then in self.after_flush:
            then()
