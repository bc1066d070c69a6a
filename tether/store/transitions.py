"""How turns stop and end, inside a session write: the rules that keep a transcript valid for
the next model call whatever way a turn ends (DESIGN §3)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, insert, select, update

from tether import domain, ids, views
from tether.domain import EventType, ToolOutcome, TurnStatus
from tether.store import guards, records
from tether.store.schema import interrupts, messages, tool_runs, turns
from tether.store.session_write import IS_UNFINISHED, SessionWrite

_QUEUED = guards.status_in(turns.c.status, {TurnStatus.QUEUED})


def has_unfinished(sw: SessionWrite) -> bool:
    row = sw.conn.execute(
        select(turns.c.id).where(turns.c.session_id == sw.id, IS_UNFINISHED).limit(1)
    ).first()
    return row is not None


def cancel_queued(sw: SessionWrite, reason: str) -> None:
    rows = sw.conn.execute(
        select(turns).where(turns.c.session_id == sw.id, _QUEUED).order_by(turns.c.seq)
    ).all()
    for row in rows:
        stop_turn(sw, records.turn(row), domain.StopMode.INTERRUPT, reason)


def target_of(sw: SessionWrite) -> domain.Turn | None:
    """The session's active turn, or else the head of its queue."""
    rows = sw.conn.execute(
        select(turns).where(turns.c.session_id == sw.id, IS_UNFINISHED).order_by(turns.c.seq)
    ).all()
    active = [r for r in rows if r.status in domain.ACTIVE]
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
    if turn.status in domain.TurnMove.STOP.sources:
        row = sw.conn.execute(
            guards.update(turns, domain.TurnMove.STOP)
            .where(turns.c.id == turn.id)
            .values(stop=stop)
            .returning(*turns.c)
        ).first()
        assert row is not None
        sw.event(
            EventType.TURN_CANCELLING, turn.id, {"turn": views.turn(records.turn(row)), **stop}
        )
        return turn.id
    if turn.status in domain.HELD:
        return turn.id  # already stopping: wake it again, the first stop's terms stand
    if turn.status in domain.TurnMove.CANCEL.sources:
        # no executor holds it: it ends here
        if turn.status is TurnStatus.WAITING:  # only a waiting turn has pending interrupts
            cancel_pending(sw, turn.id)
        row = sw.conn.execute(
            guards.update(turns, domain.TurnMove.CANCEL)
            .where(turns.c.id == turn.id)
            .values(
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


def ended(sw: SessionWrite, row: Row[Any], interrupted: Collection[str] = ()) -> None:
    """A turn reached a terminal state in this transaction: make its transcript valid
    for the next model call (or remove it, for a rollback), then say so. `interrupted`: the
    calls its executor had running."""
    ended = records.turn(row)
    rolled_back = (
        ended.status is TurnStatus.CANCELLED
        and (row.stop or {}).get("mode") == domain.StopMode.ROLLBACK.value
    )
    if rolled_back:
        sw.conn.execute(update(messages).where(messages.c.turn_id == ended.id).values(hidden=True))
        sw.rolled_back.add(ended.id)  # and those written in this transaction
    if ended.status is not TurnStatus.COMPLETED:
        close_tool_calls(sw, ended.id, interrupted)
    data: dict[str, Any] = {"turn": views.turn(ended)}
    if rolled_back:
        data["rolled_back"] = True
    sw.event(domain.TERMINAL_EVENT[ended.status], ended.id, data)


_CLOSED = {
    ToolOutcome.INTERRUPTED: "Tool call interrupted: the turn was stopped.",
    ToolOutcome.NOT_RUN: "Tool call not run: the turn ended before it ran.",
}


def close_tool_calls(sw: SessionWrite, turn_id: str, interrupted: Collection[str] = ()) -> None:
    """The rule of DESIGN §3: every tool call of an ended turn gets an outcome and a result
    message, so the transcript stays valid for the next model call. A call without a result
    was running (`interrupted`: its executor says so) or never ran (`not_run`)."""
    rows = sw.conn.execute(
        select(messages.c.role, messages.c.tool_calls, messages.c.tool_call_id)
        .where(messages.c.turn_id == turn_id, messages.c.hidden.is_(False))
        .order_by(messages.c.seq)
    ).all()
    answered = {r.tool_call_id for r in rows if r.role == "tool"}
    answered |= {m.tool_call_id for m in sw.pending_messages if m.role == "tool"}
    calls = [domain.ToolCall(**c) for r in rows for c in r.tool_calls or []]
    calls += [c for m in sw.pending_messages for c in m.tool_calls]
    closed: list[domain.ToolResult] = []
    for call in calls:
        if call.id in answered:
            continue
        answered.add(call.id)
        outcome = ToolOutcome.INTERRUPTED if call.id in interrupted else ToolOutcome.NOT_RUN
        message = domain.Message.tool_result(sw.id, turn_id, call, _CLOSED[outcome])
        closed.append(domain.ToolResult(message, outcome))
    record_results(sw, turn_id, closed)


def start_tool_calls(sw: SessionWrite, turn_id: str, calls: Sequence[domain.ToolCall]) -> None:
    """These calls are about to run: `started` in the ledger, before they run."""
    for call in calls:
        data = {"tool_call_id": call.id, "name": call.name, "arguments": call.arguments}
        sw.event(EventType.TOOL_STARTED, turn_id, data)
    mark_runs(sw.conn, turn_id, [(c.id, c.name) for c in calls], "started", sw.now)


def record_results(sw: SessionWrite, turn_id: str, results: Sequence[domain.ToolResult]) -> None:
    """Tool calls settled: each result joins the transcript with the `tool.completed` event
    that says what became of the call, and the call is `finished` in the ledger."""
    for result in results:
        message = sw.add_message(result.message)
        sw.event(
            EventType.TOOL_COMPLETED,
            turn_id,
            {"tool_call_id": message.tool_call_id, "name": message.name, "outcome": result.outcome},
        )
    finished = [(r.message.tool_call_id or "", r.message.name or "") for r in results]
    mark_runs(sw.conn, turn_id, finished, "finished", sw.now)


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


def create_interrupts(
    sw: SessionWrite, turn: domain.Turn, asks: Sequence[domain.InterruptRequest]
) -> list[domain.Interrupt]:
    """A turn pauses: the interrupts it waits on, each `pending` (its calls `paused`)."""
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
            status=domain.InterruptStatus.PENDING,
            step=turn.step,
            created_at=sw.now,
            expires_at=sw.now + timedelta(seconds=ask.ttl_s) if ask.ttl_s else None,
            on_expire=ask.on_expire,
        )
        sw.conn.execute(insert(interrupts).values(records.interrupt_values(interrupt)))
        data: dict[str, Any] = {"interrupt": views.interrupt(interrupt)}
        if i == len(asks) - 1:
            data["turn_waiting"] = True  # a turn's stream ends here, to resume later
        sw.event(EventType.INTERRUPT_CREATED, turn.id, data)
        created.append(interrupt)
    mark_runs(sw.conn, turn.id, [(a.tool_call_id, a.tool_name) for a in asks], "paused", sw.now)
    return created


def cancel_pending(sw: SessionWrite, turn_id: str) -> None:
    """A turn that ends while waiting leaves no interrupt pending."""
    rows = sw.conn.execute(
        guards.update(interrupts, domain.InterruptMove.CANCEL)
        .where(interrupts.c.turn_id == turn_id)
        .values(resolved_at=sw.now)
        .returning(*interrupts.c)
    ).all()
    for row in rows:
        cancelled = records.interrupt(row)
        sw.event(EventType.INTERRUPT_RESOLVED, turn_id, {"interrupt": views.interrupt(cancelled)})
