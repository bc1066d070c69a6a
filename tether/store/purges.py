"""Erasing a session for good (`DELETE /v1/sessions/{sid}?purge=true`): an admin's way to
remove a transcript, which no status change can do."""

from __future__ import annotations

from sqlalchemy import Connection, Text, cast, delete, select

from tether import domain, errors
from tether.domain import EventType
from tether.store import schema
from tether.store.base import Database
from tether.store.schema import events, idempotency_keys, messages, sessions, turns
from tether.store.session_write import IS_HELD


class Purges:
    def __init__(self, db: Database):
        self.db = db

    async def purge(self, tenant_id: str, session_id: str) -> list[str]:
        """Delete the session and everything of it for good, in one transaction: its turns,
        messages, events, interrupts, tool runs, and the idempotency records whose answers
        name it. (The audit log keeps its records: it is the trail of who did this.) Answers
        the turns that were still held by an executor, to be woken so they let go; their
        later writes find nothing and they abandon the turn. Streams of the session hear a
        live `session.deleted` and end."""

        def tx(conn: Connection) -> tuple[list[str], int]:
            row = conn.execute(self.db.session_row, {"sid": session_id}).first()
            if row is None or row.tenant_id != tenant_id:
                raise errors.NotFound(f"session {session_id} not found")
            held = conn.execute(
                select(turns.c.id).where(turns.c.session_id == session_id, IS_HELD)
            ).scalars()
            held_ids = list(held)
            its_turns = select(turns.c.id).where(turns.c.session_id == session_id)
            ledger = schema.tool_runs
            conn.execute(delete(ledger).where(ledger.c.turn_id.in_(its_turns)))
            deliveries = schema.webhook_deliveries  # their attempts go with them (CASCADE)
            conn.execute(delete(deliveries).where(deliveries.c.session_id == session_id))
            for table in (schema.interrupts, schema.steers, messages, events):
                conn.execute(delete(table).where(table.c.session_id == session_id))
            conn.execute(delete(turns).where(turns.c.session_id == session_id))
            conn.execute(delete(sessions).where(sessions.c.id == session_id))
            # Ids are unique, so an answer holding this one is an answer about this session
            # (its creation, a turn of it, a refusal naming it); replaying it would be a lie.
            conn.execute(
                delete(idempotency_keys).where(
                    idempotency_keys.c.tenant_id == tenant_id,
                    cast(idempotency_keys.c.response, Text).contains(session_id, autoescape=True),
                )
            )
            return held_ids, row.last_event_seq

        held, last_seq = await self.db.write(tx)
        if self.db.on_commit:
            gone = domain.Event(
                session_id, last_seq + 1, EventType.SESSION_DELETED, None, {}, domain.utcnow()
            )
            self.db.on_commit(session_id, [gone])
        return held
