"""One write transaction on one session.

Every write that touches a session goes through `SessionWrite`: it numbers the events and
messages from the session's counters and re-derives the session status, so the event log never
disagrees with state (DESIGN §5). Its hot statements are built once: building a statement
costs more than SQLite takes to run it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, bindparam, insert, or_, select, update

from tether import domain, ids, views
from tether.domain import EventType, TurnStatus, utcnow
from tether.store import records
from tether.store.schema import events, messages, sessions, turns

UNFINISHED = [s.value for s in domain.UNFINISHED]
ACTIVE = [s.value for s in domain.ACTIVE]
HELD = [TurnStatus.RUNNING.value, TurnStatus.CANCELLING.value]


def status_in(statuses: Iterable[str]) -> ColumnElement[bool]:
    """`status IN (...)` for a fixed set, as plain equalities: an IN list is re-expanded at
    every execution, equalities are compiled once."""
    return or_(*(turns.c.status == s for s in statuses))


IS_UNFINISHED = status_in(UNFINISHED)
IS_ACTIVE = status_in(ACTIVE)
IS_HELD = status_in(HELD)

SESSION_TURNS = select(turns.c.id, turns.c.status, turns.c.seq).where(
    turns.c.session_id == bindparam("sid"),
    or_(IS_UNFINISHED, turns.c.seq == bindparam("last_seq")),
)  # the unfinished turns of a session and its last one
SESSION_BUSY = select(turns.c.id).where(turns.c.session_id == bindparam("sid"), IS_ACTIVE).limit(1)
UPDATE_SESSION = update(sessions).where(sessions.c.id == bindparam("sid"))  # SET from params
SESSION_BY_ID = select(sessions).where(sessions.c.id == bindparam("sid"))


class SessionWrite:
    """One transaction's changes to one session, flushed once at the end."""

    def __init__(self, conn: Connection, row: Row[Any]):
        self.conn = conn
        self.id: str = row.id
        self.tenant_id: str = row.tenant_id
        self.closed = row.closed_at is not None
        self.now = utcnow()
        self._status: str = row.status
        self._event_seq: int = row.last_event_seq
        self._message_seq: int = row.last_message_seq
        self.turn_seq: int = row.last_turn_seq
        self.events: list[domain.Event] = []
        self.pending_messages: list[domain.Message] = []  # inserted at flush
        self.rolled_back: set[str] = set()  # turns whose messages leave the transcript

    def event(self, type: EventType, turn_id: str | None, data: dict[str, Any]) -> None:
        self._event_seq += 1
        self.events.append(domain.Event(self.id, self._event_seq, type, turn_id, data, self.now))

    def message(
        self,
        turn_id: str,
        role: str,
        content: str | None,
        *,
        tool_calls: Sequence[domain.ToolCall] = (),
        tool_call_id: str | None = None,
        name: str | None = None,
        status: domain.MessageStatus = domain.MessageStatus.COMPLETED,
        message_id: str | None = None,
        provider_data: dict[str, Any] | None = None,
    ) -> domain.Message:
        self._message_seq += 1
        msg = domain.Message(
            id=message_id or ids.new("msg"),
            session_id=self.id,
            turn_id=turn_id,
            seq=self._message_seq,
            role=role,  # type: ignore[arg-type]
            content=content,
            tool_calls=list(tool_calls),
            tool_call_id=tool_call_id,
            name=name,
            status=status,
            created_at=self.now,
            provider_data=provider_data,
        )
        self.pending_messages.append(msg)
        self.event(EventType.MESSAGE_COMPLETED, turn_id, {"message": views.message(msg)})
        return msg

    def flush(self) -> None:
        rows = self.conn.execute(SESSION_TURNS, {"sid": self.id, "last_seq": self.turn_seq}).all()
        states = {TurnStatus(r.status) for r in rows if r.status in UNFINISHED}
        last = next((r for r in rows if r.seq == self.turn_seq), None)
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
                insert(messages),
                [
                    records.message_values(m, hidden=m.turn_id in self.rolled_back)
                    for m in self.pending_messages
                ],
            )
        if self.events:
            self.conn.execute(
                insert(events),
                [
                    {
                        "session_id": e.session_id,
                        "seq": e.seq,
                        "type": e.type.value,
                        "turn_id": e.turn_id,
                        "data": e.data,
                        "created_at": e.created_at,
                    }
                    for e in self.events
                ],
            )
        self.conn.execute(
            UPDATE_SESSION,
            {
                "sid": self.id,
                "status": status.value,
                "last_event_seq": self._event_seq,
                "last_message_seq": self._message_seq,
                "last_turn_seq": self.turn_seq,
                "last_turn_id": last.id if last else None,
                "last_turn_status": last.status if last else None,
                "updated_at": self.now,
            },
        )


def turn_values(t: domain.Turn) -> dict[str, Any]:
    return {
        "id": t.id,
        "session_id": t.session_id,
        "tenant_id": t.tenant_id,
        "seq": t.seq,
        "status": t.status.value,
        "input": t.input,
        "on_busy": t.on_busy,
        "attempt": t.attempt,
        "step": t.step,
        "usage": t.usage.as_dict(),
        "run_time_s": t.run_time_s,
        "created_at": t.created_at,
    }
