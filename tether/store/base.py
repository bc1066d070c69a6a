"""The Store: agents, sessions, turns, transcripts and events, in SQLAlchemy Core, for SQLite
and PostgreSQL alike. (The worker's side is in leases.py, interrupts in interrupts.py.)

Each operation is a synchronous transaction body over a `Connection`; a dialect's `Runner`
decides how bodies run (SQLite: inline on the event loop, PostgreSQL: `run_sync` on asyncpg).
A body never awaits, so it cannot be interrupted half way by a cancellation. Store modules use
`read`, `write` and `session_write`; nothing outside store/ should.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import (
    Connection,
    Row,
    Text,
    cast,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from tether import domain, errors, ids, views
from tether.domain import EventType, TurnStatus, utcnow
from tether.store import records, transitions
from tether.store.schema import (
    agents,
    events,
    idempotency_keys,
    interrupts,
    messages,
    sessions,
    tool_runs,
    turns,
)
from tether.store.session_write import (
    IS_HELD,
    IS_UNFINISHED,
    SESSION_BY_ID,
    SessionWrite,
    turn_values,
)

T = TypeVar("T")
CommitHook = Callable[[str, list[domain.Event]], None]


class Runner(Protocol):
    """Runs a transaction body: a dialect's one job besides building the engine."""

    async def run(
        self, body: Callable[[Connection], T], *, write: bool, urgent: bool = False
    ) -> T: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class Page:
    items: list[Any]
    next_cursor: str | None


_SESSION_FOR_UPDATE = SESSION_BY_ID.with_for_update()
_SESSION_SKIP_LOCKED = SESSION_BY_ID.with_for_update(skip_locked=True)

# Hot statements, built once: building a statement costs more than SQLite takes to run it.


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


class Store:
    def __init__(self, runner: Runner, *, lock_rows: bool, on_commit: CommitHook | None = None):
        self.runner = runner
        self._lock_rows = lock_rows  # PostgreSQL: lock the session row of a session write
        self.on_commit = on_commit

    async def close(self) -> None:
        await self.runner.close()

    async def read(self, body: Callable[[Connection], T]) -> T:
        return await self.runner.run(body, write=False)

    async def write(self, body: Callable[[Connection], T], *, urgent: bool = False) -> T:
        return await self.runner.run(body, write=True, urgent=urgent)

    async def session_write(
        self,
        session_id: str,
        body: Callable[[SessionWrite], T],
        tenant_id: str | None = None,
        *,
        skip_locked: bool = False,
    ) -> T:
        """A write transaction on one session; its events reach `on_commit` after commit.
        With `skip_locked`, a session another transaction holds is NotFound at once (claims
        pass over sessions other workers are claiming)."""
        if not self._lock_rows:
            query = SESSION_BY_ID
        else:
            query = _SESSION_SKIP_LOCKED if skip_locked else _SESSION_FOR_UPDATE
        written: list[domain.Event] = []

        def tx(conn: Connection) -> T:
            written.clear()  # a body may run again (PostgreSQL retries deadlocks)
            row = conn.execute(query, {"sid": session_id}).first()
            if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
                raise errors.NotFound(f"session {session_id} not found")
            sw = SessionWrite(conn, row)
            result = body(sw)
            sw.flush()
            written.extend(sw.events)
            return result

        result = await self.write(tx)
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
                    spec=spec.stored(),
                    created_at=now,
                    updated_at=now,
                )
            )

        try:
            await self.write(tx)
        except IntegrityError as exc:
            raise errors.AlreadyExists(f"an agent named {spec.name!r} exists") from exc
        return agent

    async def get_agent(self, tenant_id: str, ref: str) -> domain.Agent:
        """An agent by id or by name, within the tenant."""
        column = agents.c.id if ref.startswith("agt_") else agents.c.name
        row = await self.read(
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
        row = await self.read(
            lambda conn: conn.execute(select(agents).where(agents.c.id == agent_id)).first()
        )
        if row is None:
            raise errors.NotFound(f"agent {agent_id} not found")
        return records.agent(row)

    async def agent_version(self, agent_id: str) -> datetime | None:
        """When the agent was last changed: enough to tell whether a cached copy is current."""
        return await self.read(
            lambda conn: conn.execute(
                select(agents.c.updated_at).where(agents.c.id == agent_id)
            ).scalar()
        )

    async def list_agents(self, tenant_id: str, limit: int, cursor: str | None) -> Page:
        query = select(agents).where(agents.c.tenant_id == tenant_id, agents.c.deleted_at.is_(None))
        if cursor:
            query = query.where(agents.c.id < cursor)
        query = query.order_by(agents.c.id.desc()).limit(limit + 1)
        rows = await self.read(lambda conn: conn.execute(query).all())
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
                .values(name=spec.name, spec=spec.stored(), updated_at=utcnow())
                .returning(*agents.c)
            ).first()

        try:
            row = await self.write(tx)
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

        if await self.write(tx) == 0:
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

        await self.write(tx)
        turn = None
        if first_input is not None:
            turn, _ = await self.create_turn(
                tenant_id, session_id, first_input, domain.OnBusy.ENQUEUE
            )
        return await self.get_session(tenant_id, session_id), turn

    async def get_session(self, tenant_id: str, session_id: str) -> domain.Session:
        return records.session(
            await self.read(lambda conn: _session_row(conn, tenant_id, session_id))
        )

    async def session_exists(self, session_id: str) -> bool:
        return await self.read(
            lambda conn: (
                conn.execute(select(sessions.c.id).where(sessions.c.id == session_id)).first()
                is not None
            )
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
        rows = await self.read(lambda conn: conn.execute(query).all())
        return _page(rows, limit, records.session, lambda s: s.id)

    async def close_session(self, tenant_id: str, session_id: str) -> domain.Session:
        """Accept no new turns; queued turns are cancelled. A running turn finishes."""

        def body(sw: SessionWrite) -> None:
            if not sw.closed:
                sw.conn.execute(
                    update(sessions).where(sessions.c.id == session_id).values(closed_at=sw.now)
                )
                sw.closed = True
                transitions.cancel_queued(sw, "session_closed")

        await self.session_write(session_id, body, tenant_id)
        return await self.get_session(tenant_id, session_id)

    async def purge_session(self, tenant_id: str, session_id: str) -> list[str]:
        """Delete the session and everything of it for good, in one transaction: its turns,
        messages, events, interrupts, tool runs, and the idempotency records whose answers
        name it. (The audit log keeps its records: it is the trail of who did this.) Answers
        the turns that were still held by an executor, to be woken so they let go; their
        later writes find nothing and they abandon the turn. Streams of the session hear a
        live `session.deleted` and end."""

        def tx(conn: Connection) -> tuple[list[str], int]:
            lock = _SESSION_FOR_UPDATE if self._lock_rows else SESSION_BY_ID
            row = conn.execute(lock, {"sid": session_id}).first()
            if row is None or row.tenant_id != tenant_id:
                raise errors.NotFound(f"session {session_id} not found")
            held = conn.execute(
                select(turns.c.id).where(turns.c.session_id == session_id, IS_HELD)
            ).scalars()
            held_ids = list(held)
            its_turns = select(turns.c.id).where(turns.c.session_id == session_id)
            conn.execute(delete(tool_runs).where(tool_runs.c.turn_id.in_(its_turns)))
            for table in (interrupts, messages, events):
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

        held, last_seq = await self.write(tx)
        if self.on_commit:
            gone = domain.Event(
                session_id, last_seq + 1, EventType.SESSION_DELETED, None, {}, utcnow()
            )
            self.on_commit(session_id, [gone])
        return held

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

        def body(sw: SessionWrite) -> tuple[domain.Turn, list[str]]:
            if sw.closed:
                raise errors.SessionClosed(f"session {session_id} is closed")
            to_wake: list[str] = []
            if on_busy is domain.OnBusy.REJECT and transitions.has_unfinished(sw):
                raise errors.SessionBusy(f"session {session_id} has an active turn")
            if on_busy in (domain.OnBusy.INTERRUPT, domain.OnBusy.ROLLBACK):
                mode = domain.StopMode(on_busy.value)
                to_wake = transitions.stop_all(sw, mode, "superseded_by_new_turn")
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
            sw.conn.execute(insert(turns), turn_values(turn))
            sw.event(EventType.TURN_QUEUED, turn.id, {"turn": views.turn(turn)})
            return turn, to_wake

        return await self.session_write(session_id, body, tenant_id)

    async def count_turns(self, tenant_id: str) -> dict[TurnStatus, int]:
        """The tenant's unfinished turns by status."""
        rows = await self.read(
            lambda conn: conn.execute(
                select(turns.c.status, func.count())
                .where(turns.c.tenant_id == tenant_id, IS_UNFINISHED)
                .group_by(turns.c.status)
            ).all()
        )
        return {TurnStatus(status): n for status, n in rows}

    async def get_turn(self, tenant_id: str, session_id: str, turn_id: str) -> domain.Turn:
        row = await self.read(
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

        return _page(await self.read(tx), limit, records.turn, lambda t: str(t.seq))

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

        def body(sw: SessionWrite) -> tuple[domain.Turn | None, list[str]]:
            if turn_id is not None:
                row = sw.conn.execute(
                    select(turns).where(turns.c.id == turn_id, turns.c.session_id == sw.id)
                ).first()
                if row is None:
                    raise errors.NotFound(f"turn {turn_id} not found")
                target: domain.Turn | None = records.turn(row)
            else:
                target = transitions.target_of(sw)
            to_wake: list[str] = []
            if target is not None and (wake := transitions.stop_turn(sw, target, mode, reason)):
                to_wake.append(wake)
            if scope is domain.StopScope.ALL:
                to_wake += transitions.stop_all(sw, mode, reason)
            if target is not None:
                row = sw.conn.execute(select(turns).where(turns.c.id == target.id)).first()
                assert row is not None
                target = records.turn(row)
            return target, to_wake

        return await self.session_write(session_id, body, tenant_id)

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

        return _page(await self.read(tx), limit, records.message, lambda m: str(m.seq))

    async def transcript(self, session_id: str) -> list[domain.Message]:
        """The whole visible transcript, for the model."""
        rows = await self.read(
            lambda conn: conn.execute(
                select(messages)
                .where(messages.c.session_id == session_id, messages.c.hidden.is_(False))
                .order_by(messages.c.seq)
            ).all()
        )
        return [records.message(r) for r in rows]

    async def events_after(self, session_id: str, after: int, limit: int) -> list[domain.Event]:
        rows = await self.read(
            lambda conn: conn.execute(
                select(events)
                .where(events.c.session_id == session_id, events.c.seq > after)
                .order_by(events.c.seq)
                .limit(limit)
            ).all()
        )
        return [records.event(r) for r in rows]

    # --- the worker's side: claim, heartbeat, checkpoint, finish -------------------------------

    # --- recovery ------------------------------------------------------------------------------

    async def ping(self) -> None:
        await self.read(lambda conn: conn.execute(select(1)))
