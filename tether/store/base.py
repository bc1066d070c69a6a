"""The Store: every query Tether makes, in SQLAlchemy Core, for SQLite and PostgreSQL alike.

Each operation is a synchronous transaction body over a `Connection`; a dialect's `Runner`
decides how bodies run (SQLite: inline on the event loop, PostgreSQL: `run_sync` on asyncpg).
A body never awaits, so it cannot be interrupted half way by a cancellation.

Every write that touches a session goes through `_SessionWrite`, which numbers the events and
messages from the session's counters and re-derives the session status, so the event log never
disagrees with state (DESIGN §5).
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    String,
    and_,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from tether import domain, errors, ids, views
from tether.domain import EventType, TurnStatus, utcnow
from tether.store import records
from tether.store.schema import (
    Json,
    UTCDateTime,
    agents,
    events,
    interrupts,
    messages,
    sessions,
    tool_runs,
    turns,
)

T = TypeVar("T")
CommitHook = Callable[[str, list[domain.Event]], None]
_UNFINISHED = [s.value for s in domain.UNFINISHED]
_ACTIVE = [s.value for s in domain.ACTIVE]
_HELD = [TurnStatus.RUNNING.value, TurnStatus.CANCELLING.value]


class Runner(Protocol):
    """Runs a transaction body: a dialect's one job besides building the engine."""

    async def run(self, body: Callable[[Connection], T], *, write: bool) -> T: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class Page:
    items: list[Any]
    next_cursor: str | None


@dataclass(slots=True)
class Claim:
    """A turn this worker now holds, with the fencing token every later write must carry."""

    turn: domain.Turn
    agent_id: str
    token: str


@dataclass(slots=True)
class LeaseState:
    status: TurnStatus
    stop: dict[str, Any] | None


@dataclass(slots=True)
class Finish:
    """How a turn ends: written with the turn's last messages in one transaction."""

    status: TurnStatus
    reason: str | None = None
    error: domain.TurnError | None = None


def _status_in(statuses: Iterable[str]) -> ColumnElement[bool]:
    """`status IN (...)` for a fixed set, as plain equalities: an IN list is re-expanded at
    every execution, equalities are compiled once."""
    return or_(*(turns.c.status == s for s in statuses))


_IS_UNFINISHED = _status_in(_UNFINISHED)
_IS_ACTIVE = _status_in(_ACTIVE)
_IS_HELD = _status_in(_HELD)

# Hot statements, built once: building a statement costs more than SQLite takes to run it.
_SESSION_TURNS = select(turns.c.id, turns.c.status, turns.c.seq).where(
    turns.c.session_id == bindparam("sid"),
    or_(_IS_UNFINISHED, turns.c.seq == bindparam("last_seq")),
)  # the unfinished turns of a session and its last one
_SESSION_BUSY = (
    select(turns.c.id).where(turns.c.session_id == bindparam("sid"), _IS_ACTIVE).limit(1)
)
_CLAIM_TURN = (
    update(turns)
    .where(turns.c.id == bindparam("tid"), turns.c.status == TurnStatus.QUEUED.value)
    .values(
        status=TurnStatus.RUNNING.value,
        # attempts count lease losses (DESIGN §2), not claims: the first claim makes it 1
        attempt=case((turns.c.attempt == 0, 1), else_=turns.c.attempt),
        worker_id=bindparam("worker"),
        claim_token=bindparam("token"),
        lease_expires_at=bindparam("lease"),
        started_at=func.coalesce(turns.c.started_at, bindparam("now", type_=UTCDateTime)),
    )
    .returning(*turns.c)
)
_STEP = (
    update(turns)
    .where(
        turns.c.id == bindparam("tid"),
        turns.c.claim_token == bindparam("token"),
        turns.c.status == TurnStatus.RUNNING.value,
    )
    .values(
        step=turns.c.step + bindparam("step_inc"),
        usage=bindparam("usage", type_=Json),
        run_time_s=bindparam("run_time"),
    )
)
_FINISH = {
    target: update(turns)
    .where(
        turns.c.id == bindparam("tid"),
        turns.c.claim_token == bindparam("token"),
        _status_in(s.value for s in domain.sources_of(target)),
    )
    .values(
        status=target.value,
        step=turns.c.step + bindparam("step_inc"),
        usage=bindparam("usage", type_=Json),
        run_time_s=bindparam("run_time"),
        reason=func.coalesce(bindparam("reason", type_=String), turns.c.reason),
        error=bindparam("error", type_=Json),
        finished_at=bindparam("now", type_=UTCDateTime),
        claim_token=None,
        lease_expires_at=None,
    )
    .returning(*turns.c)
    for target in domain.TERMINAL
}
_HELD_BY = select(turns.c.status).where(
    turns.c.id == bindparam("tid"), turns.c.claim_token == bindparam("token")
)
_UPDATE_SESSION = update(sessions).where(sessions.c.id == bindparam("sid"))  # SET from params
_SESSION_BY_ID = select(sessions).where(sessions.c.id == bindparam("sid"))


class _SessionWrite:
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
        )
        self.pending_messages.append(msg)
        self.event(EventType.MESSAGE_COMPLETED, turn_id, {"message": views.message(msg)})
        return msg

    def flush(self) -> None:
        rows = self.conn.execute(_SESSION_TURNS, {"sid": self.id, "last_seq": self.turn_seq}).all()
        states = {TurnStatus(r.status) for r in rows if r.status in _UNFINISHED}
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
            _UPDATE_SESSION,
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


def _turn_values(t: domain.Turn) -> dict[str, Any]:
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


def _session_row(conn: Connection, tenant_id: str, session_id: str) -> Row[Any]:
    row = conn.execute(
        select(sessions).where(sessions.c.id == session_id, sessions.c.tenant_id == tenant_id)
    ).first()
    if row is None:
        raise errors.NotFound(f"session {session_id} not found")
    return row


def _page(
    rows: Sequence[Row[Any]],
    limit: int,
    convert: Callable[[Row[Any]], Any],
    cursor_of: Callable[[Any], str],
) -> Page:
    items = [convert(r) for r in rows[:limit]]
    return Page(items, cursor_of(items[-1]) if len(rows) > limit else None)


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


def cancel_pending(sw: _SessionWrite, turn_id: str) -> None:
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


class Store:
    def __init__(self, runner: Runner, *, lock_rows: bool, on_commit: CommitHook | None = None):
        self.runner = runner
        self._lock_rows = lock_rows  # PostgreSQL: lock the session row of a session write
        self.on_commit = on_commit

    async def close(self) -> None:
        await self.runner.close()

    async def _read(self, body: Callable[[Connection], T]) -> T:
        return await self.runner.run(body, write=False)

    async def _write(self, body: Callable[[Connection], T]) -> T:
        return await self.runner.run(body, write=True)

    async def _session_write(
        self, session_id: str, body: Callable[[_SessionWrite], T], tenant_id: str | None = None
    ) -> T:
        """A write transaction on one session; its events reach `on_commit` after commit."""
        written: list[domain.Event] = []

        def tx(conn: Connection) -> T:
            query = _SESSION_BY_ID.with_for_update() if self._lock_rows else _SESSION_BY_ID
            row = conn.execute(query, {"sid": session_id}).first()
            if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
                raise errors.NotFound(f"session {session_id} not found")
            sw = _SessionWrite(conn, row)
            result = body(sw)
            sw.flush()
            written.extend(sw.events)
            return result

        result = await self._write(tx)
        if written and self.on_commit:
            self.on_commit(session_id, written)
        return result

    # --- agents --------------------------------------------------------------------------------

    async def create_agent(self, tenant_id: str, spec: domain.AgentSpec) -> domain.Agent:
        now = utcnow()
        agent = domain.Agent(ids.new("agt"), tenant_id, spec, now, now)

        def tx(conn: Connection) -> None:
            conn.execute(
                insert(agents).values(
                    id=agent.id,
                    tenant_id=tenant_id,
                    name=spec.name,
                    spec=spec.model_dump(mode="json"),
                    created_at=now,
                    updated_at=now,
                )
            )

        try:
            await self._write(tx)
        except IntegrityError as exc:
            raise errors.AlreadyExists(f"an agent named {spec.name!r} exists") from exc
        return agent

    async def get_agent(self, tenant_id: str, ref: str) -> domain.Agent:
        """An agent by id or by name, within the tenant."""
        column = agents.c.id if ref.startswith("agt_") else agents.c.name
        row = await self._read(
            lambda conn: conn.execute(
                select(agents).where(
                    column == ref, agents.c.tenant_id == tenant_id, agents.c.deleted_at.is_(None)
                )
            ).first()
        )
        if row is None:
            raise errors.NotFound(f"agent {ref} not found")
        return records.agent(row)

    async def agent_by_id(self, agent_id: str) -> domain.Agent:
        """For workers: the definition of a session's agent, even if since deleted."""
        row = await self._read(
            lambda conn: conn.execute(select(agents).where(agents.c.id == agent_id)).first()
        )
        if row is None:
            raise errors.NotFound(f"agent {agent_id} not found")
        return records.agent(row)

    async def list_agents(self, tenant_id: str, limit: int, cursor: str | None) -> Page:
        query = select(agents).where(agents.c.tenant_id == tenant_id, agents.c.deleted_at.is_(None))
        if cursor:
            query = query.where(agents.c.id < cursor)
        query = query.order_by(agents.c.id.desc()).limit(limit + 1)
        rows = await self._read(lambda conn: conn.execute(query).all())
        return _page(rows, limit, records.agent, lambda a: a.id)

    async def update_agent(
        self, tenant_id: str, agent_id: str, spec: domain.AgentSpec
    ) -> domain.Agent:
        def tx(conn: Connection) -> Row[Any] | None:
            return conn.execute(
                update(agents)
                .where(
                    agents.c.id == agent_id,
                    agents.c.tenant_id == tenant_id,
                    agents.c.deleted_at.is_(None),
                )
                .values(name=spec.name, spec=spec.model_dump(mode="json"), updated_at=utcnow())
                .returning(*agents.c)
            ).first()

        try:
            row = await self._write(tx)
        except IntegrityError as exc:
            raise errors.AlreadyExists(f"an agent named {spec.name!r} exists") from exc
        if row is None:
            raise errors.NotFound(f"agent {agent_id} not found")
        return records.agent(row)

    async def delete_agent(self, tenant_id: str, agent_id: str) -> None:
        # A soft delete: sessions keep pointing at the definition they ran with.
        def tx(conn: Connection) -> int:
            return conn.execute(
                update(agents)
                .where(
                    agents.c.id == agent_id,
                    agents.c.tenant_id == tenant_id,
                    agents.c.deleted_at.is_(None),
                )
                .values(deleted_at=utcnow())
            ).rowcount

        if await self._write(tx) == 0:
            raise errors.NotFound(f"agent {agent_id} not found")

    # --- sessions ------------------------------------------------------------------------------

    async def create_session(
        self,
        tenant_id: str,
        agent_id: str,
        zone: str,
        metadata: dict[str, Any],
        first_input: list[dict[str, Any]] | None,
    ) -> tuple[domain.Session, domain.Turn | None]:
        session_id = ids.new_session_id(zone)
        now = utcnow()

        def tx(conn: Connection) -> None:
            conn.execute(
                insert(sessions).values(
                    id=session_id,
                    tenant_id=tenant_id,
                    agent_id=agent_id,
                    status=domain.SessionStatus.IDLE.value,
                    metadata=metadata,
                    created_at=now,
                    updated_at=now,
                )
            )

        await self._write(tx)
        turn = None
        if first_input is not None:
            turn, _ = await self.create_turn(
                tenant_id, session_id, first_input, domain.OnBusy.ENQUEUE
            )
        return await self.get_session(tenant_id, session_id), turn

    async def get_session(self, tenant_id: str, session_id: str) -> domain.Session:
        return records.session(
            await self._read(lambda conn: _session_row(conn, tenant_id, session_id))
        )

    async def list_sessions(
        self,
        tenant_id: str,
        limit: int,
        cursor: str | None,
        status: domain.SessionStatus | None = None,
        agent_id: str | None = None,
    ) -> Page:
        query = select(sessions).where(sessions.c.tenant_id == tenant_id)
        if status:
            query = query.where(sessions.c.status == status.value)
        if agent_id:
            query = query.where(sessions.c.agent_id == agent_id)
        if cursor:
            query = query.where(sessions.c.id < cursor)
        query = query.order_by(sessions.c.id.desc()).limit(limit + 1)
        rows = await self._read(lambda conn: conn.execute(query).all())
        return _page(rows, limit, records.session, lambda s: s.id)

    async def close_session(self, tenant_id: str, session_id: str) -> domain.Session:
        """Accept no new turns; queued turns are cancelled. A running turn finishes."""

        def body(sw: _SessionWrite) -> None:
            if not sw.closed:
                sw.conn.execute(
                    update(sessions).where(sessions.c.id == session_id).values(closed_at=sw.now)
                )
                sw.closed = True
                self._cancel_queued(sw, "session_closed")

        await self._session_write(session_id, body, tenant_id)
        return await self.get_session(tenant_id, session_id)

    # --- turns ---------------------------------------------------------------------------------

    async def create_turn(
        self,
        tenant_id: str,
        session_id: str,
        input: list[dict[str, Any]],
        on_busy: domain.OnBusy,
    ) -> tuple[domain.Turn, list[str]]:
        """Queue a turn. With on_busy interrupt/rollback, the turns ahead of it are stopped in
        the same transaction; answers the new turn and the running turns whose executors
        must be woken to stop."""

        def body(sw: _SessionWrite) -> tuple[domain.Turn, list[str]]:
            if sw.closed:
                raise errors.SessionClosed(f"session {session_id} is closed")
            to_wake: list[str] = []
            if on_busy is domain.OnBusy.REJECT and self._has_unfinished(sw):
                raise errors.SessionBusy(f"session {session_id} has an active turn")
            if on_busy in (domain.OnBusy.INTERRUPT, domain.OnBusy.ROLLBACK):
                mode = domain.StopMode(on_busy.value)
                to_wake = self._stop_all(sw, mode, "superseded_by_new_turn")
            sw.turn_seq += 1
            turn = domain.Turn(
                id=ids.new("turn"),
                session_id=session_id,
                tenant_id=tenant_id,
                seq=sw.turn_seq,
                status=TurnStatus.QUEUED,
                input=input,
                on_busy=on_busy.value,
                attempt=0,
                step=0,
                usage=domain.Usage(),
                run_time_s=0.0,
                reason=None,
                error=None,
                created_at=sw.now,
                started_at=None,
                finished_at=None,
            )
            sw.conn.execute(insert(turns), _turn_values(turn))
            sw.event(EventType.TURN_QUEUED, turn.id, {"turn": views.turn(turn)})
            return turn, to_wake

        return await self._session_write(session_id, body, tenant_id)

    @staticmethod
    def _has_unfinished(sw: _SessionWrite) -> bool:
        row = sw.conn.execute(
            select(turns.c.id).where(turns.c.session_id == sw.id, _IS_UNFINISHED).limit(1)
        ).first()
        return row is not None

    def _cancel_queued(self, sw: _SessionWrite, reason: str) -> None:
        rows = sw.conn.execute(
            select(turns)
            .where(turns.c.session_id == sw.id, turns.c.status == TurnStatus.QUEUED.value)
            .order_by(turns.c.seq)
        ).all()
        for row in rows:
            self._stop_turn(sw, records.turn(row), domain.StopMode.INTERRUPT, reason)

    async def count_turns(self, tenant_id: str) -> dict[TurnStatus, int]:
        """The tenant's unfinished turns by status."""
        rows = await self._read(
            lambda conn: conn.execute(
                select(turns.c.status, func.count())
                .where(turns.c.tenant_id == tenant_id, _IS_UNFINISHED)
                .group_by(turns.c.status)
            ).all()
        )
        return {TurnStatus(status): n for status, n in rows}

    async def get_turn(self, tenant_id: str, session_id: str, turn_id: str) -> domain.Turn:
        row = await self._read(
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
        return records.turn(row)

    async def list_turns(
        self, tenant_id: str, session_id: str, limit: int, cursor: int | None
    ) -> Page:
        query = select(turns).where(turns.c.session_id == session_id)
        if cursor is not None:
            query = query.where(turns.c.seq > cursor)
        query = query.order_by(turns.c.seq).limit(limit + 1)

        def tx(conn: Connection) -> Sequence[Row[Any]]:
            _session_row(conn, tenant_id, session_id)
            return conn.execute(query).all()

        return _page(await self._read(tx), limit, records.turn, lambda t: str(t.seq))

    # --- control: stop, interrupt, rollback (DESIGN §3) ---------------------------------------

    async def request_stop(
        self,
        tenant_id: str,
        session_id: str,
        turn_id: str | None,
        mode: domain.StopMode,
        scope: domain.StopScope,
        reason: str,
    ) -> tuple[domain.Turn | None, list[str]]:
        """Write a stop. The target is `turn_id`, or the session's active turn, or else the
        head of its queue. A queued or waiting turn is cancelled at once; a running one
        becomes `cancelling` and its executor must be woken (the ids answered). Stopping a
        finished turn or an idle session changes nothing."""

        def body(sw: _SessionWrite) -> tuple[domain.Turn | None, list[str]]:
            if turn_id is not None:
                row = sw.conn.execute(
                    select(turns).where(turns.c.id == turn_id, turns.c.session_id == sw.id)
                ).first()
                if row is None:
                    raise errors.NotFound(f"turn {turn_id} not found")
                target: domain.Turn | None = records.turn(row)
            else:
                target = self._target_of(sw)
            to_wake: list[str] = []
            if target is not None and (wake := self._stop_turn(sw, target, mode, reason)):
                to_wake.append(wake)
            if scope is domain.StopScope.ALL:
                to_wake += self._stop_all(sw, mode, reason)
            if target is not None:
                row = sw.conn.execute(select(turns).where(turns.c.id == target.id)).first()
                assert row is not None
                target = records.turn(row)
            return target, to_wake

        return await self._session_write(session_id, body, tenant_id)

    @staticmethod
    def _target_of(sw: _SessionWrite) -> domain.Turn | None:
        """The session's active turn, or else the head of its queue."""
        rows = sw.conn.execute(
            select(turns).where(turns.c.session_id == sw.id, _IS_UNFINISHED).order_by(turns.c.seq)
        ).all()
        active = [r for r in rows if r.status in _ACTIVE]
        chosen = active[0] if active else (rows[0] if rows else None)
        return records.turn(chosen) if chosen is not None else None

    def _stop_all(self, sw: _SessionWrite, mode: domain.StopMode, reason: str) -> list[str]:
        """Stop every unfinished turn of the session; answers the executors to wake."""
        rows = sw.conn.execute(
            select(turns).where(turns.c.session_id == sw.id, _IS_UNFINISHED).order_by(turns.c.seq)
        ).all()
        woken = [self._stop_turn(sw, records.turn(r), mode, reason) for r in rows]
        return [w for w in woken if w]

    def _stop_turn(
        self, sw: _SessionWrite, turn: domain.Turn, mode: domain.StopMode, reason: str
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
            self._ended(sw, row)
        return None

    def _ended(self, sw: _SessionWrite, row: Row[Any]) -> None:
        """A turn reached a terminal state in this transaction: make its transcript valid
        for the next model call (or remove it, for a rollback), then say so."""
        ended = records.turn(row)
        rolled_back = (
            ended.status is TurnStatus.CANCELLED
            and (row.stop or {}).get("mode") == domain.StopMode.ROLLBACK.value
        )
        if rolled_back:
            sw.conn.execute(
                update(messages).where(messages.c.turn_id == ended.id).values(hidden=True)
            )
            sw.rolled_back.add(ended.id)  # and those written in this transaction
        elif ended.status is not TurnStatus.COMPLETED:
            self._close_dangling_tool_calls(sw, ended.id)
        data: dict[str, Any] = {"turn": views.turn(ended)}
        if rolled_back:
            data["rolled_back"] = True
        sw.event(domain.TERMINAL_EVENT[ended.status], ended.id, data)

    # --- messages and events -------------------------------------------------------------------

    async def list_messages(
        self, tenant_id: str, session_id: str, limit: int, cursor: int | None
    ) -> Page:
        query = select(messages).where(
            messages.c.session_id == session_id, messages.c.hidden.is_(False)
        )
        if cursor is not None:
            query = query.where(messages.c.seq > cursor)
        query = query.order_by(messages.c.seq).limit(limit + 1)

        def tx(conn: Connection) -> Sequence[Row[Any]]:
            _session_row(conn, tenant_id, session_id)
            return conn.execute(query).all()

        return _page(await self._read(tx), limit, records.message, lambda m: str(m.seq))

    async def transcript(self, session_id: str) -> list[domain.Message]:
        """The whole visible transcript, for the model."""
        rows = await self._read(
            lambda conn: conn.execute(
                select(messages)
                .where(messages.c.session_id == session_id, messages.c.hidden.is_(False))
                .order_by(messages.c.seq)
            ).all()
        )
        return [records.message(r) for r in rows]

    async def events_after(self, session_id: str, after: int, limit: int) -> list[domain.Event]:
        rows = await self._read(
            lambda conn: conn.execute(
                select(events)
                .where(events.c.session_id == session_id, events.c.seq > after)
                .order_by(events.c.seq)
                .limit(limit)
            ).all()
        )
        return [records.event(r) for r in rows]

    # --- the worker's side: claim, heartbeat, checkpoint, finish -------------------------------

    async def claim(self, worker_id: str, limit: int, lease_ttl_s: float) -> list[Claim]:
        """Take up to `limit` runnable turns: the head of the queue of sessions with no active
        turn, oldest first. First attempts put the turn's input into the transcript."""
        head = (
            select(func.min(turns.c.seq))
            .where(turns.c.session_id == sessions.c.id, turns.c.status == TurnStatus.QUEUED.value)
            .correlate(sessions)
            .scalar_subquery()
        )
        query = (
            select(turns.c.id, turns.c.session_id, sessions.c.agent_id)
            .join(sessions, sessions.c.id == turns.c.session_id)
            .where(
                sessions.c.status == domain.SessionStatus.QUEUED.value,
                turns.c.status == TurnStatus.QUEUED.value,
                turns.c.seq == head,
            )
            .order_by(turns.c.created_at)
            .limit(limit)
        )
        candidates = await self._read(lambda conn: conn.execute(query).all())
        claims: list[Claim] = []
        for cand in candidates:
            # each claim re-checks under the session's write: a candidate may have gone
            claim = await self._session_write(
                cand.session_id,
                functools.partial(
                    self._claim_one,
                    turn_id=cand.id,
                    agent_id=cand.agent_id,
                    worker_id=worker_id,
                    lease_ttl_s=lease_ttl_s,
                ),
            )
            if claim:
                claims.append(claim)
        return claims

    @staticmethod
    def _claim_one(
        sw: _SessionWrite, turn_id: str, agent_id: str, worker_id: str, lease_ttl_s: float
    ) -> Claim | None:
        if sw.conn.execute(_SESSION_BUSY, {"sid": sw.id}).first() is not None:
            return None
        token = secrets.token_hex(16)
        row = sw.conn.execute(
            _CLAIM_TURN,
            {
                "tid": turn_id,
                "worker": worker_id,
                "token": token,
                "lease": sw.now + timedelta(seconds=lease_ttl_s),
                "now": sw.now,
            },
        ).first()
        if row is None:
            return None
        turn = records.turn(row)
        if (
            turn.step == 0
            and not sw.conn.execute(
                select(messages.c.id).where(messages.c.turn_id == turn.id).limit(1)
            ).first()
        ):
            for item in turn.input:
                sw.message(turn.id, item["role"], item["content"])
        sw.event(EventType.TURN_STARTED, turn.id, {"attempt": turn.attempt})
        return Claim(turn, agent_id, token)

    async def heartbeat(self, tokens: Iterable[str], lease_ttl_s: float) -> dict[str, LeaseState]:
        """Renew the leases still held; answer each held turn's status and requested stop.
        A token missing from the answer has lost its lease."""
        held_tokens = list(tokens)
        if not held_tokens:
            return {}

        def tx(conn: Connection) -> dict[str, LeaseState]:
            mine = and_(turns.c.claim_token.in_(held_tokens), _IS_HELD)
            conn.execute(
                update(turns)
                .where(mine)
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease_ttl_s))
            )
            rows = conn.execute(
                select(turns.c.claim_token, turns.c.status, turns.c.stop).where(mine)
            ).all()
            return {r.claim_token: LeaseState(TurnStatus(r.status), r.stop) for r in rows}

        return await self._write(tx)

    async def checkpoint(
        self,
        turn: domain.Turn,
        token: str,
        *,
        usage: domain.Usage,
        run_time_s: float,
        new_messages: Sequence[domain.Message] = (),
        tool_events: Sequence[tuple[EventType, dict[str, Any]]] = (),
        started: Sequence[domain.ToolCall] = (),
        step_done: bool = False,
        finish: Finish | None = None,
    ) -> None:
        """Commit one step of a turn held under `token`: its messages, usage, step counter and
        the events describing them, and, if `finish`, the turn's end. All or nothing. Raises
        StopRequested if a stop was written meanwhile, LeaseLost if the token no longer holds
        the turn."""
        params: dict[str, Any] = {
            "tid": turn.id,
            "token": token,
            "step_inc": 1 if step_done else 0,
            "usage": usage.as_dict(),
            "run_time": run_time_s,
        }

        def body(sw: _SessionWrite) -> None:
            if finish is None:
                written = sw.conn.execute(_STEP, params).rowcount == 1
                row = None
            else:
                error = finish.error
                row = sw.conn.execute(
                    _FINISH[finish.status],
                    {
                        **params,
                        "reason": finish.reason,
                        "error": {"code": error.code, "message": error.message} if error else None,
                        "now": sw.now,
                    },
                ).first()
                written = row is not None
            if not written:
                held = sw.conn.execute(_HELD_BY, {"tid": turn.id, "token": token}).scalar()
                if held == TurnStatus.CANCELLING.value:
                    raise errors.StopRequested(f"turn {turn.id} is being stopped")
                raise errors.LeaseLost(f"turn {turn.id} is no longer held by this worker")
            for m in new_messages:
                sw.message(
                    m.turn_id,
                    m.role,
                    m.content,
                    tool_calls=m.tool_calls,
                    tool_call_id=m.tool_call_id,
                    name=m.name,
                    status=m.status,
                    message_id=m.id,
                )
            for type_, data in tool_events:
                sw.event(type_, turn.id, data)
            # the ledger: `started` before a call runs, `finished` with its result
            mark_runs(sw.conn, turn.id, [(c.id, c.name) for c in started], "started", sw.now)
            finished = [
                (m.tool_call_id or "", m.name or "") for m in new_messages if m.role == "tool"
            ]
            mark_runs(sw.conn, turn.id, finished, "finished", sw.now)
            if row is not None:
                if row.reason is None and row.status == TurnStatus.CANCELLED.value:
                    # a requested stop ends with its own reason
                    stop_reason = (row.stop or {}).get("reason", "client_cancelled")
                    row = sw.conn.execute(
                        update(turns)
                        .where(turns.c.id == turn.id)
                        .values(reason=stop_reason)
                        .returning(*turns.c)
                    ).one()
                self._ended(sw, row)

        await self._session_write(turn.session_id, body)

    @staticmethod
    def _close_dangling_tool_calls(sw: _SessionWrite, turn_id: str) -> None:
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

    async def release(self, turn: domain.Turn, token: str) -> bool:
        """Hand a running turn back to the queue (graceful shutdown); not an attempt lost."""

        def body(sw: _SessionWrite) -> bool:
            row = sw.conn.execute(
                update(turns)
                .where(
                    turns.c.id == turn.id,
                    turns.c.claim_token == token,
                    turns.c.status == TurnStatus.RUNNING.value,
                )
                .values(
                    status=TurnStatus.QUEUED.value,
                    claim_token=None,
                    lease_expires_at=None,
                    worker_id=None,
                )
                .returning(*turns.c)
            ).first()
            if row is not None:
                sw.event(
                    EventType.TURN_QUEUED,
                    turn.id,
                    {"turn": views.turn(records.turn(row)), "resumed": True},
                )
            return row is not None

        return await self._session_write(turn.session_id, body)

    # --- recovery ------------------------------------------------------------------------------

    async def expired_leases(self, now: datetime) -> list[tuple[str, str]]:
        rows = await self._read(
            lambda conn: conn.execute(
                select(turns.c.session_id, turns.c.id).where(
                    _IS_HELD, turns.c.lease_expires_at < now
                )
            ).all()
        )
        return [(r.session_id, r.id) for r in rows]

    async def recover_lease(
        self, session_id: str, turn_id: str, max_attempts: int, now: datetime
    ) -> TurnStatus | None:
        """Return an expired lease (DESIGN §2): running -> queued (resume) or failed
        `worker_lost` after max attempts; cancelling -> cancelled."""

        def body(sw: _SessionWrite) -> TurnStatus | None:
            row = sw.conn.execute(
                select(turns).where(
                    turns.c.id == turn_id,
                    _IS_HELD,
                    turns.c.lease_expires_at < now,
                )
            ).first()
            if row is None:
                return None  # renewed or ended meanwhile
            current = records.turn(row)
            extra: dict[str, Any] = {}
            if current.status is TurnStatus.RUNNING and current.attempt < max_attempts:
                target = TurnStatus.QUEUED
                extra = {"attempt": current.attempt + 1}
            elif current.status is TurnStatus.RUNNING:
                target = TurnStatus.FAILED
                extra = {
                    "reason": "worker_lost",
                    "error": {
                        "code": "worker_lost",
                        "message": f"worker lost {current.attempt} times",
                    },
                    "finished_at": sw.now,
                }
            else:
                target = TurnStatus.CANCELLED
                stop = row.stop or {}
                extra = {"reason": stop.get("reason", "client_cancelled"), "finished_at": sw.now}
            updated = sw.conn.execute(
                update(turns)
                .where(turns.c.id == turn_id, turns.c.status == current.status.value)
                .values(
                    status=target.value,
                    claim_token=None,
                    lease_expires_at=None,
                    worker_id=None,
                    **extra,
                )
                .returning(*turns.c)
            ).first()
            assert updated is not None
            if target is TurnStatus.QUEUED:
                resumed = views.turn(records.turn(updated))
                sw.event(EventType.TURN_QUEUED, turn_id, {"turn": resumed, "resumed": True})
            else:
                self._ended(sw, updated)
            return target

        return await self._session_write(session_id, body)

    async def expire_all_leases(self) -> int:
        """Embedded mode at start: this process holds the data dir, so every lease left in the
        store belongs to a dead process. Expire them now rather than after their TTL."""
        return await self._write(
            lambda conn: (
                conn.execute(
                    update(turns)
                    .where(_IS_HELD)
                    .values(lease_expires_at=utcnow() - timedelta(seconds=1))
                ).rowcount
            )
        )

    async def ping(self) -> None:
        await self._read(lambda conn: conn.execute(select(1)))
