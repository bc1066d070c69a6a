"""Sessions and what they hold, as read: the session, its turns, its transcript and its event
log. (Every change to them is in lifecycle.py.)"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Row, Select, bindparam, func, select

from tether import domain, errors
from tether.store import rows
from tether.store.base import Database, Page, paged
from tether.store.schema import events, messages, sessions, turns
from tether.store.session_write import IS_UNFINISHED

_SESSION = select(sessions).where(
    sessions.c.id == bindparam("sid"), sessions.c.tenant_id == bindparam("tenant")
)
_EVENTS_AFTER = (
    select(events)
    .where(events.c.session_id == bindparam("sid"), events.c.seq > bindparam("after"))
    .order_by(events.c.seq)
    .limit(bindparam("limit"))
)
_VISIBLE = messages.c.hidden.is_(False)
_TRANSCRIPT = (
    select(messages)
    .where(messages.c.session_id == bindparam("sid"), _VISIBLE)
    .order_by(messages.c.seq)
)


def _session_row(conn: Connection, tenant_id: str, session_id: str) -> Row[Any]:
    row = conn.execute(_SESSION, {"sid": session_id, "tenant": tenant_id}).first()
    if row is None:
        raise errors.NotFound(f"session {session_id} not found")
    return row


class Sessions:
    def __init__(self, db: Database):
        self.db = db

    async def get(self, tenant_id: str, session_id: str) -> domain.Session:
        return rows.session(await self.db.read(lambda c: _session_row(c, tenant_id, session_id)))

    async def exists(self, session_id: str) -> bool:
        query = select(sessions.c.id).where(sessions.c.id == session_id)
        return await self.db.read(lambda conn: conn.execute(query).first() is not None)

    async def page(
        self,
        tenant_id: str,
        limit: int,
        cursor: str | None,
        status: domain.SessionStatus | None = None,
        agent_id: str | None = None,
    ) -> Page:
        """Newest first."""
        query = select(sessions).where(sessions.c.tenant_id == tenant_id)
        if status:
            query = query.where(sessions.c.status == status.value)
        if agent_id:
            query = query.where(sessions.c.agent_id == agent_id)
        query = paged(query, sessions.c.id, cursor, limit, newest_first=True)
        found = await self.db.read(lambda conn: conn.execute(query).all())
        return Page.of(found, limit, rows.session, lambda s: s.id)

    async def turn(self, tenant_id: str, session_id: str, turn_id: str) -> domain.Turn:
        row = await self.db.read(
            lambda conn: conn.execute(
                select(turns).where(
                    turns.c.id == turn_id,
                    turns.c.session_id == session_id,
                    turns.c.tenant_id == tenant_id,
                )
            ).first()
        )
        if row is None:
            raise errors.NotFound(f"turn {turn_id} not found")
        return rows.turn(row)

    async def turns(self, tenant_id: str, session_id: str, limit: int, cursor: int | None) -> Page:
        query = select(turns).where(turns.c.session_id == session_id)
        query = paged(query, turns.c.seq, cursor, limit)
        found = await self._in_session(tenant_id, session_id, query)
        return Page.of(found, limit, rows.turn, lambda t: str(t.seq))

    async def count_unfinished(self, tenant_id: str) -> dict[domain.TurnStatus, int]:
        """The tenant's unfinished turns by status."""
        found = await self.db.read(
            lambda conn: conn.execute(
                select(turns.c.status, func.count())
                .where(turns.c.tenant_id == tenant_id, IS_UNFINISHED)
                .group_by(turns.c.status)
            ).all()
        )
        return {domain.TurnStatus(status): n for status, n in found}

    async def messages(
        self, tenant_id: str, session_id: str, limit: int, cursor: int | None
    ) -> Page:
        """The visible transcript (not rolled back), oldest first."""
        query = select(messages).where(messages.c.session_id == session_id, _VISIBLE)
        query = paged(query, messages.c.seq, cursor, limit)
        found = await self._in_session(tenant_id, session_id, query)
        return Page.of(found, limit, rows.message, lambda m: str(m.seq))

    async def transcript(self, session_id: str) -> list[domain.Message]:
        """The whole visible transcript, for the model."""
        found = await self.db.read(
            lambda conn: conn.execute(_TRANSCRIPT, {"sid": session_id}).all()
        )
        return [rows.message(r) for r in found]

    async def events_after(self, session_id: str, after: int, limit: int) -> list[domain.Event]:
        found = await self.db.read(
            lambda conn: conn.execute(
                _EVENTS_AFTER, {"sid": session_id, "after": after, "limit": limit}
            ).all()
        )
        return [rows.event(r) for r in found]

    async def _in_session(
        self, tenant_id: str, session_id: str, query: Select[Any]
    ) -> Sequence[Row[Any]]:
        """`query`'s rows, once the session is known to be the tenant's (one read)."""

        def read(conn: Connection) -> Sequence[Row[Any]]:
            _session_row(conn, tenant_id, session_id)
            return conn.execute(query).all()

        return await self.db.read(read)
