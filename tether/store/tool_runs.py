"""A turn's tool calls: the ledger of their runs (DESIGN §5), their results and outcomes, and
what a resumed turn needs to know of them.

A call is `started` in the ledger in the transaction that says it is about to run, and leaves
that state only with its outcome; after a crash, a call still `started` may or may not have
run. Every ledger write is one of `machines.ToolRunMove`: an upsert that creates the row of a
call the ledger has not seen, and otherwise moves it only from the move's sources (a
`finished` call never runs again).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence
from typing import Any

from sqlalchemy import Connection, Insert, and_, bindparam, select

from tether import domain, machines, versions
from tether.domain import EventType, ToolOutcome
from tether.machines import ToolRunMove
from tether.store import guards, rows
from tether.store.base import Database
from tether.store.leases import holder_write
from tether.store.schema import interrupts, messages, tool_runs, turns
from tether.store.session_write import SessionWrite

_CLOSED = {
    ToolOutcome.INTERRUPTED: "Tool call interrupted: the turn was stopped.",
    ToolOutcome.NOT_RUN: "Tool call not run: the turn ended before it ran.",
}


@functools.cache
def _ledger(insert: Callable[[Any], Any], move: machines.Move[domain.ToolRunStatus]) -> Insert:
    """The upsert of `move`, built once per dialect: `runs` counts the starts."""
    runs = 1 if move is ToolRunMove.START else 0
    statement = insert(tool_runs).values(
        turn_id=bindparam("tid"),
        tool_call_id=bindparam("cid"),
        name=bindparam("name"),
        status=move.target.value,
        runs=runs,
        updated_at=bindparam("now"),
        v=versions.RESUME_VERSION,
    )
    changes: dict[str, Any] = {
        "status": move.target.value,
        "updated_at": statement.excluded.updated_at,
        "v": versions.RESUME_VERSION,
    }
    if runs:
        changes["runs"] = tool_runs.c.runs + 1
    upsert: Insert = statement.on_conflict_do_update(
        index_elements=[tool_runs.c.turn_id, tool_runs.c.tool_call_id],
        set_=changes,
        where=guards.guard(tool_runs.c.status, move),
    )
    return upsert


def _mark(
    sw: SessionWrite,
    move: machines.Move[domain.ToolRunStatus],
    turn_id: str,
    calls: Sequence[tuple[str, str]],
) -> None:
    """Ledger: (call id, name) pairs of a turn make `move`."""
    if calls:
        params = [{"tid": turn_id, "cid": cid, "name": name, "now": sw.now} for cid, name in calls]
        sw.conn.execute(_ledger(sw.insert, move), params)


def start(sw: SessionWrite, turn_id: str, calls: Sequence[domain.ToolCall]) -> None:
    """These calls are about to run: `started`, before they run."""
    for call in calls:
        data = {"tool_call_id": call.id, "name": call.name, "arguments": call.arguments}
        sw.event(EventType.TOOL_STARTED, turn_id, data)
    _mark(sw, ToolRunMove.START, turn_id, [(c.id, c.name) for c in calls])


def pause(sw: SessionWrite, turn_id: str, asks: Sequence[domain.InterruptRequest]) -> None:
    """These calls wait on interrupts."""
    _mark(sw, ToolRunMove.PAUSE, turn_id, [(a.tool_call_id, a.tool_name) for a in asks])


def record_results(sw: SessionWrite, turn_id: str, results: Sequence[domain.ToolResult]) -> None:
    """Calls settled: each result joins the transcript with the `tool.completed` event that
    says what became of the call (the one place that event is built), and the call is
    `finished`."""
    for result in results:
        message = sw.add_message(result.message)
        data = {
            "tool_call_id": message.tool_call_id,
            "name": message.name,
            "outcome": result.outcome,
        }
        sw.event(EventType.TOOL_COMPLETED, turn_id, data)
    finished = [(r.message.tool_call_id or "", r.message.name or "") for r in results]
    _mark(sw, ToolRunMove.FINISH, turn_id, finished)


def close(sw: SessionWrite, turn_id: str, interrupted: Collection[str] = ()) -> None:
    """The rule of DESIGN §3, for every way a turn ends: each of its tool calls gets an
    outcome and a result message, so the transcript stays valid for the next model call. A
    call without a result was running (its executor says so: `interrupted`) or never ran
    (`not_run`)."""
    stored = sw.conn.execute(
        select(messages.c.role, messages.c.tool_calls, messages.c.tool_call_id)
        .where(messages.c.turn_id == turn_id, messages.c.hidden.is_(False))
        .order_by(messages.c.seq)
    ).all()
    answered = {r.tool_call_id for r in stored if r.role == "tool"}
    answered |= {m.tool_call_id for m in sw.pending_messages if m.role == "tool"}
    calls = [domain.ToolCall(**c) for r in stored for c in r.tool_calls or ()]
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


# a call still running, of a turn still held (running) by the token
_RUNNING_CALL = (
    select(tool_runs.c.status)
    .join(turns, turns.c.id == tool_runs.c.turn_id)
    .where(
        and_(
            turns.c.id == bindparam("tid"),
            turns.c.claim_token == bindparam("token"),
            guards.status_in(turns.c.status, {domain.TurnStatus.RUNNING}),
            tool_runs.c.tool_call_id == bindparam("cid"),
            guards.status_in(tool_runs.c.status, {domain.ToolRunStatus.STARTED}),
            tool_runs.c.v == versions.RESUME_VERSION,
        )
    )
)


class ToolRuns:
    def __init__(self, db: Database):
        self.db = db

    async def progress(
        self, turn: domain.Turn, token: str, call: domain.ToolCall, data: dict[str, Any]
    ) -> bool:
        """A running call's progress report, as a `tool.progress` event. Written only while
        the call is `started` under a turn `token` holds: a report that comes after the
        call's result (or the turn's stop) is dropped, so none ever follows `tool.completed`.
        Answers whether it was written."""

        def body(sw: SessionWrite) -> bool:
            params = {"tid": turn.id, "token": token, "cid": call.id}
            if sw.conn.execute(_RUNNING_CALL, params).first() is None:
                return False
            event = {"tool_call_id": call.id, "name": call.name, **data}
            sw.event(EventType.TOOL_PROGRESS, turn.id, event)
            return True

        return await holder_write(self.db, turn, body)

    async def resume_state(self, turn_id: str) -> domain.ResumeState:
        """What the turn's earlier attempts left: its interrupts by call, in order, and the
        calls a crash left `started`."""

        def read(conn: Connection) -> domain.ResumeState:
            resume = domain.ResumeState()
            for row in conn.execute(
                select(interrupts)
                .where(interrupts.c.turn_id == turn_id, interrupts.c.tool_call_id.is_not(None))
                .order_by(interrupts.c.created_at, interrupts.c.id)
            ):
                resume.interrupts.setdefault(row.tool_call_id, []).append(rows.interrupt(row))
            ledger = conn.execute(
                select(tool_runs.c.tool_call_id, tool_runs.c.status, tool_runs.c.v).where(
                    tool_runs.c.turn_id == turn_id
                )
            )
            resume.started = {
                r.tool_call_id
                for r in ledger
                if versions.ledger_status(r.v, r.status) == domain.ToolRunStatus.STARTED
            }
            return resume

        return await self.db.read(read)
