"""Interrupts (DESIGN §4): created when a turn pauses, then answered, expired or cancelled,
each a move of `machines.InterruptMove`. What those do to the turn is in lifecycle.py. Read by
session, or across a tenant's sessions as the approvals inbox (console, CLI): what needs a
human soonest first."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, literal, select, tuple_

from tether import domain, errors, ids, views
from tether.domain import EventType, InterruptStatus
from tether.machines import InterruptMove
from tether.store import guards, rows
from tether.store.base import Database, Page, paged
from tether.store.schema import UTCDateTime, interrupts
from tether.store.session_write import SessionWrite

PENDING = guards.status_in(interrupts.c.status, {InterruptStatus.PENDING})
# The inbox's order: expiry first (those that never expire last, as if they expired at
# _NEVER), then age, then id: total, so a keyset cursor resumes it exactly.
_NEVER = datetime(9999, 12, 31, tzinfo=UTC)
_EXPIRY = func.coalesce(interrupts.c.expires_at, literal(_NEVER, UTCDateTime()))


def create(
    sw: SessionWrite, turn: domain.Turn, asks: Sequence[domain.InterruptRequest]
) -> list[domain.Interrupt]:
    """The interrupts a pausing turn waits on, each `pending`."""
    created = []
    for i, ask in enumerate(asks):
        interrupt = domain.Interrupt(
            id=ids.new("int"),
            tenant_id=turn.tenant_id,
            session_id=turn.session_id,
            turn_id=turn.id,
            type=ask.type,
            tool_call_id=ask.tool_call_id,
            tool_name=ask.tool_name,
            request=ask.request,
            response=None,
            status=InterruptStatus.PENDING,
            step=turn.step,
            created_at=sw.now,
            expires_at=sw.now + timedelta(seconds=ask.ttl_s) if ask.ttl_s else None,
            on_expire=ask.on_expire,
        )
        sw.conn.execute(insert(interrupts).values(rows.INTERRUPT.values(interrupt)))
        data: dict[str, Any] = {"interrupt": views.interrupt(interrupt)}
        if i == len(asks) - 1:
            data["turn_waiting"] = True  # a turn's stream ends here, to resume later
        sw.event(EventType.INTERRUPT_CREATED, turn.id, data)
        created.append(interrupt)
    return created


def resolve(
    sw: SessionWrite, interrupt_id: str, response: Any, resolved_by: str | None
) -> domain.Interrupt:
    """Record the answer: the first answer wins (InterruptNotPending for any later one)."""
    row = sw.conn.execute(
        guards.update(interrupts, InterruptMove.RESOLVE)
        .where(interrupts.c.id == interrupt_id)
        .values(response=response, resolved_at=sw.now, resolved_by=resolved_by)
        .returning(*interrupts.c)
    ).first()
    if row is None:
        status = sw.conn.execute(
            select(interrupts.c.status).where(interrupts.c.id == interrupt_id)
        ).scalar()
        raise errors.InterruptNotPending(f"interrupt {interrupt_id} is {status}")
    resolved = rows.interrupt(row)
    sw.event(
        EventType.INTERRUPT_RESOLVED, resolved.turn_id, {"interrupt": views.interrupt(resolved)}
    )
    return resolved


def expire(sw: SessionWrite, interrupt_id: str, now: datetime) -> domain.Interrupt | None:
    """`expired` if still pending past its time (None: answered meanwhile)."""
    row = sw.conn.execute(
        guards.update(interrupts, InterruptMove.EXPIRE)
        .where(interrupts.c.id == interrupt_id, interrupts.c.expires_at < now)
        .values(resolved_at=sw.now)
        .returning(*interrupts.c)
    ).first()
    if row is None:
        return None
    expired = rows.interrupt(row)
    sw.event(EventType.INTERRUPT_EXPIRED, expired.turn_id, {"interrupt": views.interrupt(expired)})
    return expired


def cancel_pending(sw: SessionWrite, turn_id: str) -> None:
    """A turn that ends while waiting leaves no interrupt pending."""
    cancelled = sw.conn.execute(
        guards.update(interrupts, InterruptMove.CANCEL)
        .where(interrupts.c.turn_id == turn_id)
        .values(resolved_at=sw.now)
        .returning(*interrupts.c)
    ).all()
    for row in cancelled:
        data = {"interrupt": views.interrupt(rows.interrupt(row))}
        sw.event(EventType.INTERRUPT_RESOLVED, turn_id, data)


def any_pending(sw: SessionWrite, turn_id: str) -> bool:
    found = sw.conn.execute(
        select(interrupts.c.id).where(interrupts.c.turn_id == turn_id, PENDING).limit(1)
    ).first()
    return found is not None


class Interrupts:
    def __init__(self, db: Database):
        self.db = db

    async def get(self, tenant_id: str, interrupt_id: str) -> domain.Interrupt:
        row = await self.db.read(
            lambda conn: conn.execute(
                select(interrupts).where(
                    interrupts.c.id == interrupt_id, interrupts.c.tenant_id == tenant_id
                )
            ).first()
        )
        if row is None:
            raise errors.NotFound(f"interrupt {interrupt_id} not found")
        return rows.interrupt(row)

    async def page(
        self,
        tenant_id: str,
        session_id: str,
        status: InterruptStatus | None,
        limit: int,
        cursor: str | None,
    ) -> Page:
        """A session's interrupts, oldest first (the caller checked the session's tenant)."""
        query = select(interrupts).where(
            interrupts.c.session_id == session_id, interrupts.c.tenant_id == tenant_id
        )
        if status:
            query = query.where(guards.status_in(interrupts.c.status, {status}))
        query = paged(query, interrupts.c.id, cursor, limit)
        found = await self.db.read(lambda conn: conn.execute(query).all())
        return Page.of(found, limit, rows.interrupt, lambda i: i.id)

    async def inbox(
        self,
        tenant_id: str,
        status: InterruptStatus | None,
        limit: int,
        after: tuple[datetime, datetime, str] | None,
    ) -> Page:
        """One page of the tenant's interrupts (of one status, if given), soonest expiry
        first, from after the (expiry, creation, id) key of a cursor (api/cursors.py reads the
        cursors `_inbox_cursor` writes)."""
        query = select(interrupts).where(interrupts.c.tenant_id == tenant_id)
        if status is not None:
            query = query.where(guards.status_in(interrupts.c.status, {status}))
        if after is not None:
            expires, created, interrupt_id = after
            query = query.where(
                tuple_(_EXPIRY, interrupts.c.created_at, interrupts.c.id)
                > tuple_(
                    literal(expires, UTCDateTime()),
                    literal(created, UTCDateTime()),
                    literal(interrupt_id),
                )
            )
        query = query.order_by(_EXPIRY, interrupts.c.created_at, interrupts.c.id).limit(limit + 1)
        found = await self.db.read(lambda conn: conn.execute(query).all())
        return Page.of(found, limit, rows.interrupt, _inbox_cursor)

    async def due(self, now: datetime) -> list[tuple[str, str]]:
        """(session, interrupt) of the pending interrupts past their time."""
        found = await self.db.read(
            lambda conn: conn.execute(
                select(interrupts.c.session_id, interrupts.c.id).where(
                    PENDING, interrupts.c.expires_at < now
                )
            ).all()
        )
        return [(r.session_id, r.id) for r in found]


def _inbox_cursor(item: domain.Interrupt) -> str:
    """(expiry, creation, id) as base64url JSON: read back by api/cursors.py `inbox_cursor`."""
    key = [(item.expires_at or _NEVER).isoformat(), item.created_at.isoformat(), item.id]
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")
