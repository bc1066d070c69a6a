"""Interrupts (DESIGN §4) and the ledger of tool runs: pausing a turn, answering, expiring,
and what a resumed turn needs to know."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from tether import domain, errors, views
from tether.domain import EventType, InterruptMove, InterruptStatus, ToolRunStatus, TurnMove
from tether.store import guards, records, transitions
from tether.store.base import Page, Store
from tether.store.schema import interrupts, tool_runs, turns
from tether.store.session_write import SessionWrite
from tether.store.transitions import cancel_pending

_PENDING = guards.status_in(interrupts.c.status, {InterruptStatus.PENDING})


class InterruptStore:
    def __init__(self, store: Store):
        self.store = store

    # --- answering -----------------------------------------------------------------------------

    async def get(self, tenant_id: str, interrupt_id: str) -> domain.Interrupt:
        row = await self.store.runner.run(
            lambda conn: conn.execute(
                select(interrupts).where(
                    interrupts.c.id == interrupt_id, interrupts.c.tenant_id == tenant_id
                )
            ).first(),
            write=False,
        )
        if row is None:
            raise errors.NotFound(f"interrupt {interrupt_id} not found")
        return records.interrupt(row)

    async def list(
        self,
        tenant_id: str,
        session_id: str,
        status: InterruptStatus | None,
        limit: int,
        cursor: str | None,
    ) -> Page:
        await self.store.get_session(tenant_id, session_id)
        query = select(interrupts).where(interrupts.c.session_id == session_id)
        if status:
            query = query.where(interrupts.c.status == status.value)
        if cursor:
            query = query.where(interrupts.c.id > cursor)
        query = query.order_by(interrupts.c.id).limit(limit + 1)
        rows = await self.store.runner.run(lambda conn: conn.execute(query).all(), write=False)
        items = [records.interrupt(r) for r in rows[:limit]]
        return Page(items, items[-1].id if len(rows) > limit else None)

    async def respond(
        self, tenant_id: str, interrupt_id: str, response: Any, resolved_by: str | None
    ) -> tuple[domain.Interrupt, bool]:
        """Record the answer (first answer wins); when the turn has no other pending interrupt
        it is queued again to resume. Answers the interrupt and whether the turn resumes."""
        current = await self.get(tenant_id, interrupt_id)

        def body(sw: SessionWrite) -> tuple[domain.Interrupt, bool]:
            row = sw.conn.execute(
                guards.update(interrupts, InterruptMove.RESOLVE)
                .where(interrupts.c.id == interrupt_id)
                .values(
                    response=response,
                    resolved_at=sw.now,
                    resolved_by=resolved_by,
                )
                .returning(*interrupts.c)
            ).first()
            if row is None:
                status = sw.conn.execute(
                    select(interrupts.c.status).where(interrupts.c.id == interrupt_id)
                ).scalar()
                raise errors.InterruptNotPending(f"interrupt {interrupt_id} is {status}")
            resolved = records.interrupt(row)
            sw.event(
                EventType.INTERRUPT_RESOLVED,
                resolved.turn_id,
                {"interrupt": views.interrupt(resolved)},
            )
            return resolved, _resume_if_settled(sw, resolved.turn_id)

        return await self.store.session_write(current.session_id, body, tenant_id)

    async def expire(self, now: datetime) -> int:
        """Pending interrupts past their time become `expired` (never a human denial); the
        agent's on_expire applies: `deny` resumes the turn (the call is not run), `fail` ends
        it `failed` with reason approval_expired."""
        due = await self.store.runner.run(
            lambda conn: conn.execute(
                select(interrupts.c.id, interrupts.c.session_id).where(
                    _PENDING, interrupts.c.expires_at < now
                )
            ).all(),
            write=False,
        )
        for row in due:
            await self.store.session_write(
                row.session_id, functools.partial(_expire_one, self.store, iid=row.id, now=now)
            )
        return len(due)

    # --- resuming ------------------------------------------------------------------------------

    async def resume_state(self, turn_id: str) -> domain.ResumeState:
        def read(conn: Connection) -> domain.ResumeState:
            resume = domain.ResumeState()
            for row in conn.execute(
                select(interrupts)
                .where(interrupts.c.turn_id == turn_id)
                .order_by(interrupts.c.created_at, interrupts.c.id)
            ):
                if row.tool_call_id:
                    resume.interrupts.setdefault(row.tool_call_id, []).append(
                        records.interrupt(row)
                    )
            resume.started = set(
                conn.execute(
                    select(tool_runs.c.tool_call_id).where(
                        tool_runs.c.turn_id == turn_id,
                        guards.status_in(tool_runs.c.status, {ToolRunStatus.STARTED}),
                    )
                ).scalars()
            )
            return resume

        return await self.store.runner.run(read, write=False)


def _resume_if_settled(sw: SessionWrite, turn_id: str) -> bool:
    """A waiting turn with nothing left pending goes back to the queue."""
    pending = sw.conn.execute(
        select(interrupts.c.id).where(interrupts.c.turn_id == turn_id, _PENDING).limit(1)
    ).first()
    if pending is not None:
        return False
    row = sw.conn.execute(
        guards.update(turns, TurnMove.RESUME).where(turns.c.id == turn_id).returning(*turns.c)
    ).first()
    if row is None:
        return False
    sw.event(
        EventType.TURN_QUEUED, turn_id, {"turn": views.turn(records.turn(row)), "resumed": True}
    )
    return True


def _expire_one(store: Store, sw: SessionWrite, *, iid: str, now: datetime) -> None:
    interrupt_id = iid
    row = sw.conn.execute(
        guards.update(interrupts, InterruptMove.EXPIRE)
        .where(interrupts.c.id == interrupt_id, interrupts.c.expires_at < now)
        .values(resolved_at=sw.now)
        .returning(*interrupts.c)
    ).first()
    if row is None:
        return  # answered meanwhile
    expired = records.interrupt(row)
    sw.event(EventType.INTERRUPT_EXPIRED, expired.turn_id, {"interrupt": views.interrupt(expired)})
    if expired.on_expire == "fail":
        turn_row = sw.conn.execute(
            guards.update(turns, TurnMove.EXPIRE)
            .where(turns.c.id == expired.turn_id)
            .values(
                reason="approval_expired",
                error={
                    "code": "approval_expired",
                    "message": f"interrupt {expired.id} expired unanswered",
                },
                finished_at=sw.now,
            )
            .returning(*turns.c)
        ).first()
        if turn_row is not None:
            cancel_pending(sw, expired.turn_id)
            transitions.ended(sw, turn_row)
        return
    _resume_if_settled(sw, expired.turn_id)
