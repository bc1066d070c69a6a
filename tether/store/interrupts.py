"""Interrupts (DESIGN §4) and the ledger of tool runs: pausing a turn, answering, expiring,
and what a resumed turn needs to know."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, insert, select, update

from tether import domain, errors, ids, views
from tether.domain import EventType, InterruptStatus, TurnStatus
from tether.runtime.loop import Resume
from tether.store import leases, records, transitions
from tether.store.base import Page, Store
from tether.store.leases import held_running, refused
from tether.store.schema import interrupts, tool_runs, turns
from tether.store.session_write import SessionWrite
from tether.store.transitions import cancel_pending, mark_runs

_PENDING = InterruptStatus.PENDING.value


class InterruptStore:
    def __init__(self, store: Store):
        self.store = store

    # --- pausing -------------------------------------------------------------------------------

    async def pause(
        self,
        turn: domain.Turn,
        token: str,
        *,
        usage: domain.Usage,
        run_time_s: float,
        results: Sequence[domain.Message],
        outcomes: Sequence[str],
        requests: Sequence[domain.InterruptRequest],
        on_expire: str,
    ) -> list[domain.Interrupt]:
        """The turn waits: its finished calls and the interrupts it waits on are committed,
        and it gives up its lease (no worker holds a waiting turn)."""

        def body(sw: SessionWrite) -> list[domain.Interrupt]:
            row = sw.conn.execute(
                update(turns)
                .where(held_running(turn.id, token))
                .values(
                    status=TurnStatus.WAITING.value,
                    usage=usage.as_dict(),
                    run_time_s=run_time_s,
                    claim_token=None,
                    lease_expires_at=None,
                    worker_id=None,
                )
                .returning(turns.c.step)
            ).first()
            if row is None:
                refused(sw.conn, turn.id, token)
            for result, outcome in zip(results, outcomes, strict=True):
                sw.message(
                    turn.id,
                    "tool",
                    result.content,
                    tool_call_id=result.tool_call_id,
                    name=result.name,
                    message_id=result.id,
                )
                sw.event(
                    EventType.TOOL_COMPLETED,
                    turn.id,
                    {"tool_call_id": result.tool_call_id, "name": result.name, "outcome": outcome},
                )
            mark_runs(
                sw.conn,
                turn.id,
                [(r.tool_call_id or "", r.name or "") for r in results],
                "finished",
                sw.now,
            )
            mark_runs(
                sw.conn,
                turn.id,
                [(r.tool_call_id, r.tool_name) for r in requests],
                "paused",
                sw.now,
            )
            created = []
            for i, req in enumerate(requests):
                interrupt = domain.Interrupt(
                    id=ids.new("int"),
                    tenant_id=turn.tenant_id,
                    session_id=turn.session_id,
                    turn_id=turn.id,
                    type=req.type,
                    tool_call_id=req.tool_call_id,
                    tool_name=req.tool_name,
                    request=req.request,
                    response=None,
                    status=InterruptStatus.PENDING,
                    step=row.step,
                    created_at=sw.now,
                    expires_at=sw.now + timedelta(seconds=req.ttl_s) if req.ttl_s else None,
                    on_expire=on_expire,
                )
                sw.conn.execute(insert(interrupts).values(_values(interrupt)))
                data: dict[str, Any] = {"interrupt": views.interrupt(interrupt)}
                if i == len(requests) - 1:
                    data["turn_waiting"] = True  # a turn's stream ends here, to resume later
                sw.event(EventType.INTERRUPT_CREATED, turn.id, data)
                created.append(interrupt)
            return created

        return await leases.fenced_write(self.store, turn, body)

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
                update(interrupts)
                .where(interrupts.c.id == interrupt_id, interrupts.c.status == _PENDING)
                .values(
                    status=InterruptStatus.RESOLVED.value,
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
                    interrupts.c.status == _PENDING, interrupts.c.expires_at < now
                )
            ).all(),
            write=False,
        )
        for row in due:
            with contextlib.suppress(errors.NotFound):  # its session was deleted meanwhile
                await self.store.session_write(
                    row.session_id, functools.partial(_expire_one, self.store, iid=row.id, now=now)
                )
        return len(due)

    # --- resuming ------------------------------------------------------------------------------

    async def resume_state(self, turn_id: str) -> Resume:
        def read(conn: Connection) -> Resume:
            resume = Resume()
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
                        tool_runs.c.turn_id == turn_id, tool_runs.c.status == "started"
                    )
                ).scalars()
            )
            return resume

        return await self.store.runner.run(read, write=False)


def _values(i: domain.Interrupt) -> dict[str, Any]:
    return {
        "id": i.id,
        "tenant_id": i.tenant_id,
        "session_id": i.session_id,
        "turn_id": i.turn_id,
        "type": i.type,
        "tool_call_id": i.tool_call_id,
        "tool_name": i.tool_name,
        "request": i.request,
        "response": i.response,
        "status": i.status.value,
        "step": i.step,
        "created_at": i.created_at,
        "expires_at": i.expires_at,
        "on_expire": i.on_expire,
    }


def _resume_if_settled(sw: SessionWrite, turn_id: str) -> bool:
    """A waiting turn with nothing left pending goes back to the queue."""
    pending = sw.conn.execute(
        select(interrupts.c.id)
        .where(interrupts.c.turn_id == turn_id, interrupts.c.status == _PENDING)
        .limit(1)
    ).first()
    if pending is not None:
        return False
    row = sw.conn.execute(
        update(turns)
        .where(turns.c.id == turn_id, turns.c.status == TurnStatus.WAITING.value)
        .values(status=TurnStatus.QUEUED.value)
        .returning(*turns.c)
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
        update(interrupts)
        .where(
            and_(
                interrupts.c.id == interrupt_id,
                interrupts.c.status == _PENDING,
                interrupts.c.expires_at < now,
            )
        )
        .values(status=InterruptStatus.EXPIRED.value, resolved_at=sw.now)
        .returning(*interrupts.c)
    ).first()
    if row is None:
        return  # answered meanwhile
    expired = records.interrupt(row)
    sw.event(EventType.INTERRUPT_EXPIRED, expired.turn_id, {"interrupt": views.interrupt(expired)})
    if expired.on_expire == "fail":
        turn_row = sw.conn.execute(
            update(turns)
            .where(turns.c.id == expired.turn_id, turns.c.status == TurnStatus.WAITING.value)
            .values(
                status=TurnStatus.FAILED.value,
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
