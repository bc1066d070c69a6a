"""How turns stop and end, inside a session write: the rules that keep a transcript valid for
the next model call whatever way a turn ends (DESIGN §3)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, insert, select, update

from tether import domain, views
from tether.domain import EventType, TurnStatus
from tether.store import records
from tether.store.schema import interrupts, messages, tool_runs, turns
from tether.store.session_write import ACTIVE, IS_UNFINISHED, SessionWrite


def has_unfinished(sw: SessionWrite) -> bool:
    row = sw.conn.execute(
        select(turns.c.id).where(turns.c.session_id == sw.id, IS_UNFINISHED).limit(1)
    ).first()
    return row is not None


def cancel_queued(sw: SessionWrite, reason: str) -> None:
    rows = sw.conn.execute(
        select(turns)
        .where(turns.c.session_id == sw.id, turns.c.status == TurnStatus.QUEUED.value)
        .order_by(turns.c.seq)
    ).all()
    for row in rows:
        stop_turn(sw, records.turn(row), domain.StopMode.INTERRUPT, reason)


def target_of(sw: SessionWrite) -> domain.Turn | None:
    """The session's active turn, or else the head of its queue."""
    rows = sw.conn.execute(
        select(turns).where(turns.c.session_id == sw.id, IS_UNFINISHED).order_by(turns.c.seq)
    ).all()
    active = [r for r in rows if r.status in ACTIVE]
    chosen = active[0] if active else (rows[0] if rows else None)
    return records.turn(chosen) if chosen is not None else None


def stop_all(sw: SessionWrite, mode: domain.StopMode, reason: str) -> list[str]:
    """Stop every unfinished turn of the session; answers the executors to wake."""
    rows = sw.conn.execute(
        select(turns).where(turns.c.session_id == sw.id, IS_UNFINISHED).order_by(turns.c.seq)
    ).all()
    woken = [stop_turn(sw, records.turn(r), mode, reason) for r in rows]
    return [w for w in woken if w]


def stop_turn(
    sw: SessionWrite, turn: domain.Turn, mode: domain.StopMode, reason: str
) -> str | None:
    """Stop one turn inside a session write; answers its id if an executor must act."""
    stop = {"mode": mode.value, "reason": reason}
    if turn.status is TurnStatus.RUNNING:
        row = sw.conn.execute(
            update(turns)
            .where(turns.c.id == turn.id, turns.c.status == TurnStatus.RUNNING.value)
            .values(status=TurnStatus.CANCELLING.value, stop=stop)
            .returning(*turns.c)
        ).first()
        assert row is not None
        sw.event(
            EventType.TURN_CANCELLING, turn.id, {"turn": views.turn(records.turn(row)), **stop}
        )
        return turn.id
    if turn.status is TurnStatus.CANCELLING:
        return turn.id  # already stopping: wake it again, the first stop's terms stand
    if turn.status in (TurnStatus.QUEUED, TurnStatus.WAITING):
        # no executor holds it: it ends here
        if turn.status is TurnStatus.WAITING:
            cancel_pending(sw, turn.id)
        row = sw.conn.execute(
            update(turns)
            .where(turns.c.id == turn.id, turns.c.status == turn.status.value)
            .values(
                status=TurnStatus.CANCELLED.value,
                stop=stop,
                reason=reason,
                finished_at=sw.now,
                claim_token=None,
                lease_expires_at=None,
            )
            .returning(*turns.c)
        ).first()
        assert row is not None
        ended(sw, row)
    return None


def ended(sw: SessionWrite, row: Row[Any]) -> None:
    """A turn reached a terminal state in this transaction: make its transcript valid
    for the next model call (or remove it, for a rollback), then say so."""
    ended = records.turn(row)
    rolled_back = (
        ended.status is TurnStatus.CANCELLED
        and (row.stop or {}).get("mode") == domain.StopMode.ROLLBACK.value
    )
    if rolled_back:
        sw.conn.execute(update(messages).where(messages.c.turn_id == ended.id).values(hidden=True))
        sw.rolled_back.add(ended.id)  # and those written in this transaction
    elif ended.status is not TurnStatus.COMPLETED:
        close_dangling_tool_calls(sw, ended.id)
    data: dict[str, Any] = {"turn": views.turn(ended)}
    if rolled_back:
        data["rolled_back"] = True
    sw.event(domain.TERMINAL_EVENT[ended.status], ended.id, data)


def close_dangling_tool_calls(sw: SessionWrite, turn_id: str) -> None:
    """Give every tool call of an ended turn a result, so the transcript stays valid for
    the next model call."""
    rows = sw.conn.execute(
        select(messages.c.role, messages.c.tool_calls, messages.c.tool_call_id)
        .where(messages.c.turn_id == turn_id, messages.c.hidden.is_(False))
        .order_by(messages.c.seq)
    ).all()
    answered = {r.tool_call_id for r in rows if r.role == "tool"}
    answered |= {m.tool_call_id for m in sw.pending_messages if m.role == "tool"}
    calls = [c for r in rows for c in r.tool_calls or []]
    calls += [c.as_dict() for m in sw.pending_messages for c in m.tool_calls]
    for call in calls:
        if call["id"] in answered:
            continue
        answered.add(call["id"])
        sw.message(
            turn_id,
            "tool",
            "Tool call not run: the turn ended before it ran.",
            tool_call_id=call["id"],
            name=call["name"],
        )
        sw.event(
            EventType.TOOL_COMPLETED,
            turn_id,
            {"tool_call_id": call["id"], "name": call["name"], "outcome": "not_run"},
        )


def mark_runs(
    conn: Connection, turn_id: str, calls: Sequence[tuple[str, str]], status: str, now: datetime
) -> None:
    """Ledger: set (call id, name) pairs of a turn to `status`; `started` also counts a run."""
    for call_id, name in calls:
        values: dict[str, Any] = {"status": status, "updated_at": now}
        if status == "started":
            values["runs"] = tool_runs.c.runs + 1
        updated = conn.execute(
            update(tool_runs)
            .where(tool_runs.c.turn_id == turn_id, tool_runs.c.tool_call_id == call_id)
            .values(values)
        ).rowcount
        if not updated:
            conn.execute(
                insert(tool_runs).values(
                    turn_id=turn_id,
                    tool_call_id=call_id,
                    name=name,
                    status=status,
                    runs=1 if status == "started" else 0,
                    updated_at=now,
                )
            )


def cancel_pending(sw: SessionWrite, turn_id: str) -> None:
    """A turn that ends while waiting leaves no interrupt pending."""
    rows = sw.conn.execute(
        update(interrupts)
        .where(
            interrupts.c.turn_id == turn_id,
            interrupts.c.status == domain.InterruptStatus.PENDING.value,
        )
        .values(status=domain.InterruptStatus.CANCELLED.value, resolved_at=sw.now)
        .returning(*interrupts.c)
    ).all()
    for row in rows:
        cancelled = records.interrupt(row)
        sw.event(EventType.INTERRUPT_RESOLVED, turn_id, {"interrupt": views.interrupt(cancelled)})
