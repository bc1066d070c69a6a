"""The Store: every query Tether makes, in SQLAlchemy Core, for SQLite and PostgreSQL alike.

Dialect files (sqlite.py, postgres.py) only build the engine and say how writers serialize.
Every write that touches a session goes through `_SessionWrite`, which numbers the events and
messages from the session's counters and re-derives the session status, so the event log never
disagrees with state (DESIGN §5).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, and_, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether import domain, errors, ids, views
from tether.domain import EventType, TurnStatus, utcnow
from tether.store import records
from tether.store.schema import agents, events, messages, sessions, turns

CommitHook = Callable[[str, list[domain.Event]], None]


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


class _SessionWrite:
    """One transaction's changes to one session, flushed once at the end."""

    def __init__(self, conn: AsyncConnection, row: Row[Any]):
        self.conn = conn
        self.id: str = row.id
        self.tenant_id: str = row.tenant_id
        self.agent_id: str = row.agent_id
        self.closed = row.closed_at is not None
        self.now = utcnow()
        self._status: str = row.status
        self._event_seq: int = row.last_event_seq
        self._message_seq: int = row.last_message_seq
        self.turn_seq: int = row.last_turn_seq
        self._events: list[domain.Event] = []
        self._messages: list[domain.Message] = []

    def event(self, type: EventType, turn_id: str | None, data: dict[str, Any]) -> None:
        self._event_seq += 1
        self._events.append(domain.Event(self.id, self._event_seq, type, turn_id, data, self.now))

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
        self._messages.append(msg)
        self.event(EventType.MESSAGE_COMPLETED, turn_id, {"message": views.message(msg)})
        return msg

    async def flush(self) -> list[domain.Event]:
        unfinished = (
            await self.conn.execute(
                select(turns.c.status).where(
                    turns.c.session_id == self.id,
                    turns.c.status.in_([s.value for s in domain.UNFINISHED]),
                )
            )
        ).scalars()
        states = {TurnStatus(s) for s in unfinished}
        active = next((s for s in states if s in domain.ACTIVE), None)
        status = domain.derive_session_status(self.closed, active, TurnStatus.QUEUED in states)
        last = (
            await self.conn.execute(
                select(turns.c.id, turns.c.status)
                .where(turns.c.session_id == self.id)
                .order_by(turns.c.seq.desc())
                .limit(1)
            )
        ).first()
        if status.value != self._status:
            self.event(
                EventType.SESSION_UPDATED,
                None,
                {
                    "status": status.value,
                    "last_turn": {"id": last.id, "status": last.status} if last else None,
                },
            )
        if self._messages:
            await self.conn.execute(
                insert(messages), [records.message_values(m) for m in self._messages]
            )
        if self._events:
            await self.conn.execute(
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
                    for e in self._events
                ],
            )
        await self.conn.execute(
            update(sessions)
            .where(sessions.c.id == self.id)
            .values(
                status=status.value,
                last_event_seq=self._event_seq,
                last_message_seq=self._message_seq,
                last_turn_seq=self.turn_seq,
                last_turn_id=last.id if last else None,
                last_turn_status=last.status if last else None,
                updated_at=self.now,
            )
        )
        return self._events


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


class Store:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        serialize_writes: bool,
        lock_rows: bool,
        on_commit: CommitHook | None = None,
    ):
        self.engine = engine
        # SQLite has one writer at a time: queue writers on an asyncio lock rather than on
        # SQLite's busy handler, which sleeps and retries.
        self._write_lock: AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if serialize_writes else nullcontext()
        )
        self._lock_rows = lock_rows
        self.on_commit = on_commit

    async def close(self) -> None:
        await self.engine.dispose()

    # --- transactions ------------------------------------------------------------------------

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with self._write_lock, self.engine.connect() as conn:
            conn = await conn.execution_options(tether_write=True)
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def _session_write(self, session_id: str) -> AsyncIterator[_SessionWrite]:
        """A write transaction on one session; its events reach `on_commit` after commit."""
        async with self._write_lock:
            async with self.engine.connect() as conn:
                conn = await conn.execution_options(tether_write=True)
                async with conn.begin():
                    query = select(sessions).where(sessions.c.id == session_id)
                    if self._lock_rows:
                        query = query.with_for_update()
                    row = (await conn.execute(query)).first()
                    if row is None:
                        raise errors.NotFound(f"session {session_id} not found")
                    sw = _SessionWrite(conn, row)
                    yield sw
                    new_events = await sw.flush()
            # still under the write lock: subscribers see commits in commit order
            if new_events and self.on_commit:
                self.on_commit(session_id, new_events)

    # --- agents --------------------------------------------------------------------------------

    async def create_agent(self, tenant_id: str, spec: domain.AgentSpec) -> domain.Agent:
        now = utcnow()
        agent = domain.Agent(ids.new("agt"), tenant_id, spec, now, now)
        try:
            async with self._write() as conn:
                await conn.execute(
                    insert(agents).values(
                        id=agent.id,
                        tenant_id=tenant_id,
                        name=spec.name,
                        spec=spec.model_dump(mode="json"),
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError as exc:
            raise errors.AlreadyExists(f"an agent named {spec.name!r} exists") from exc
        return agent

    async def get_agent(self, tenant_id: str, ref: str) -> domain.Agent:
        """An agent by id or by name, within the tenant."""
        column = agents.c.id if ref.startswith("agt_") else agents.c.name
        async with self._read() as conn:
            row = (
                await conn.execute(
                    select(agents).where(
                        column == ref,
                        agents.c.tenant_id == tenant_id,
                        agents.c.deleted_at.is_(None),
                    )
                )
            ).first()
        if row is None:
            raise errors.NotFound(f"agent {ref} not found")
        return records.agent(row)

    async def agent_by_id(self, agent_id: str) -> domain.Agent:
        """For workers: the definition of a session's agent, even if since deleted."""
        async with self._read() as conn:
            row = (await conn.execute(select(agents).where(agents.c.id == agent_id))).first()
        if row is None:
            raise errors.NotFound(f"agent {agent_id} not found")
        return records.agent(row)

    async def list_agents(self, tenant_id: str, limit: int, cursor: str | None) -> Page:
        query = select(agents).where(agents.c.tenant_id == tenant_id, agents.c.deleted_at.is_(None))
        if cursor:
            query = query.where(agents.c.id < cursor)
        async with self._read() as conn:
            rows = (await conn.execute(query.order_by(agents.c.id.desc()).limit(limit + 1))).all()
        items = [records.agent(r) for r in rows[:limit]]
        return Page(items, items[-1].id if len(rows) > limit else None)

    async def update_agent(
        self, tenant_id: str, agent_id: str, spec: domain.AgentSpec
    ) -> domain.Agent:
        try:
            async with self._write() as conn:
                result = await conn.execute(
                    update(agents)
                    .where(
                        agents.c.id == agent_id,
                        agents.c.tenant_id == tenant_id,
                        agents.c.deleted_at.is_(None),
                    )
                    .values(name=spec.name, spec=spec.model_dump(mode="json"), updated_at=utcnow())
                )
        except IntegrityError as exc:
            raise errors.AlreadyExists(f"an agent named {spec.name!r} exists") from exc
        if result.rowcount == 0:
            raise errors.NotFound(f"agent {agent_id} not found")
        return await self.get_agent(tenant_id, agent_id)

    async def delete_agent(self, tenant_id: str, agent_id: str) -> None:
        # A soft delete: sessions keep pointing at the definition they ran with.
        async with self._write() as conn:
            result = await conn.execute(
                update(agents)
                .where(
                    agents.c.id == agent_id,
                    agents.c.tenant_id == tenant_id,
                    agents.c.deleted_at.is_(None),
                )
                .values(deleted_at=utcnow())
            )
        if result.rowcount == 0:
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
        async with self._write() as conn:
            await conn.execute(
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
        turn = None
        if first_input is not None:
            turn = await self.create_turn(tenant_id, session_id, first_input, domain.OnBusy.ENQUEUE)
        return await self.get_session(tenant_id, session_id), turn

    async def get_session(self, tenant_id: str, session_id: str) -> domain.Session:
        async with self._read() as conn:
            row = (
                await conn.execute(
                    select(sessions).where(
                        sessions.c.id == session_id, sessions.c.tenant_id == tenant_id
                    )
                )
            ).first()
        if row is None:
            raise errors.NotFound(f"session {session_id} not found")
        return records.session(row)

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
        async with self._read() as conn:
            rows = (await conn.execute(query.order_by(sessions.c.id.desc()).limit(limit + 1))).all()
        items = [records.session(r) for r in rows[:limit]]
        return Page(items, items[-1].id if len(rows) > limit else None)

    async def close_session(self, tenant_id: str, session_id: str) -> domain.Session:
        """Accept no new turns; queued turns are cancelled. A running turn finishes."""
        await self.get_session(tenant_id, session_id)
        async with self._session_write(session_id) as sw:
            if not sw.closed:
                await sw.conn.execute(
                    update(sessions).where(sessions.c.id == session_id).values(closed_at=sw.now)
                )
                sw.closed = True
                await self._cancel_queued(sw, "session_closed")
        return await self.get_session(tenant_id, session_id)

    # --- turns ---------------------------------------------------------------------------------

    async def create_turn(
        self,
        tenant_id: str,
        session_id: str,
        input: list[dict[str, Any]],
        on_busy: domain.OnBusy,
    ) -> domain.Turn:
        await self.get_session(tenant_id, session_id)  # tenant scope before any write
        async with self._session_write(session_id) as sw:
            if sw.closed:
                raise errors.SessionClosed(f"session {session_id} is closed")
            if on_busy is domain.OnBusy.REJECT and await self._has_unfinished(sw):
                raise errors.SessionBusy(f"session {session_id} has an active turn")
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
            await sw.conn.execute(insert(turns).values(_turn_values(turn)))
            sw.event(EventType.TURN_QUEUED, turn.id, {"turn": views.turn(turn)})
        return turn

    async def _has_unfinished(self, sw: _SessionWrite) -> bool:
        row = (
            await sw.conn.execute(
                select(turns.c.id)
                .where(
                    turns.c.session_id == sw.id,
                    turns.c.status.in_([s.value for s in domain.UNFINISHED]),
                )
                .limit(1)
            )
        ).first()
        return row is not None

    async def _cancel_queued(self, sw: _SessionWrite, reason: str) -> None:
        rows = (
            await sw.conn.execute(
                update(turns)
                .where(turns.c.session_id == sw.id, turns.c.status == TurnStatus.QUEUED.value)
                .values(status=TurnStatus.CANCELLED.value, reason=reason, finished_at=sw.now)
                .returning(*turns.c)
            )
        ).all()
        for row in sorted(rows, key=lambda r: r.seq):
            sw.event(EventType.TURN_CANCELLED, row.id, {"turn": views.turn(records.turn(row))})

    async def get_turn(self, tenant_id: str, session_id: str, turn_id: str) -> domain.Turn:
        async with self._read() as conn:
            row = (
                await conn.execute(
                    select(turns).where(
                        turns.c.id == turn_id,
                        turns.c.session_id == session_id,
                        turns.c.tenant_id == tenant_id,
                    )
                )
            ).first()
        if row is None:
            raise errors.NotFound(f"turn {turn_id} not found")
        return records.turn(row)

    async def list_turns(
        self, tenant_id: str, session_id: str, limit: int, cursor: int | None
    ) -> Page:
        await self.get_session(tenant_id, session_id)
        query = select(turns).where(turns.c.session_id == session_id)
        if cursor is not None:
            query = query.where(turns.c.seq > cursor)
        async with self._read() as conn:
            rows = (await conn.execute(query.order_by(turns.c.seq).limit(limit + 1))).all()
        items = [records.turn(r) for r in rows[:limit]]
        return Page(items, str(items[-1].seq) if len(rows) > limit else None)

    # --- messages and events -------------------------------------------------------------------

    async def list_messages(
        self, tenant_id: str, session_id: str, limit: int, cursor: int | None
    ) -> Page:
        await self.get_session(tenant_id, session_id)
        query = select(messages).where(
            messages.c.session_id == session_id, messages.c.hidden.is_(False)
        )
        if cursor is not None:
            query = query.where(messages.c.seq > cursor)
        async with self._read() as conn:
            rows = (await conn.execute(query.order_by(messages.c.seq).limit(limit + 1))).all()
        items = [records.message(r) for r in rows[:limit]]
        return Page(items, str(items[-1].seq) if len(rows) > limit else None)

    async def transcript(self, session_id: str) -> list[domain.Message]:
        """The whole visible transcript, for the model."""
        async with self._read() as conn:
            rows = (
                await conn.execute(
                    select(messages)
                    .where(messages.c.session_id == session_id, messages.c.hidden.is_(False))
                    .order_by(messages.c.seq)
                )
            ).all()
        return [records.message(r) for r in rows]

    async def events_after(self, session_id: str, after: int, limit: int) -> list[domain.Event]:
        async with self._read() as conn:
            rows = (
                await conn.execute(
                    select(events)
                    .where(events.c.session_id == session_id, events.c.seq > after)
                    .order_by(events.c.seq)
                    .limit(limit)
                )
            ).all()
        return [records.event(r) for r in rows]

    # --- the worker's side: claim, heartbeat, checkpoint, finish -------------------------------

    async def claim(self, worker_id: str, limit: int, lease_ttl_s: float) -> list[Claim]:
        """Take up to `limit` runnable turns: the head of the queue of sessions with no active
        turn, oldest first. First attempts put the turn's input into the transcript."""
        head = (
            select(func.min(turns.c.seq))
            .where(
                turns.c.session_id == sessions.c.id,
                turns.c.status == TurnStatus.QUEUED.value,
            )
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
        claims: list[Claim] = []
        async with self._read() as conn:
            candidates = (await conn.execute(query)).all()
        for cand in candidates:
            # each claim re-checks under the session's write: a candidate may have gone
            claim = await self._claim_one(
                cand.session_id, cand.id, cand.agent_id, worker_id, lease_ttl_s
            )
            if claim:
                claims.append(claim)
        return claims

    async def _claim_one(
        self, session_id: str, turn_id: str, agent_id: str, worker_id: str, lease_ttl_s: float
    ) -> Claim | None:
        token = secrets.token_hex(16)
        async with self._session_write(session_id) as sw:
            if await self._session_has_active(sw):
                return None
            row = (
                await sw.conn.execute(
                    update(turns)
                    .where(turns.c.id == turn_id, turns.c.status == TurnStatus.QUEUED.value)
                    .values(
                        status=TurnStatus.RUNNING.value,
                        attempt=turns.c.attempt + 1,
                        worker_id=worker_id,
                        claim_token=token,
                        lease_expires_at=sw.now + timedelta(seconds=lease_ttl_s),
                        started_at=func.coalesce(turns.c.started_at, sw.now),
                    )
                    .returning(*turns.c)
                )
            ).first()
            if row is None:
                return None
            turn = records.turn(row)
            if turn.attempt == 1:
                for item in turn.input:
                    sw.message(turn.id, item["role"], item["content"])
            sw.event(EventType.TURN_STARTED, turn.id, {"attempt": turn.attempt})
        return Claim(turn, agent_id, token)

    async def _session_has_active(self, sw: _SessionWrite) -> bool:
        row = (
            await sw.conn.execute(
                select(turns.c.id)
                .where(
                    turns.c.session_id == sw.id,
                    turns.c.status.in_([s.value for s in domain.ACTIVE]),
                )
                .limit(1)
            )
        ).first()
        return row is not None

    async def heartbeat(self, tokens: Iterable[str], lease_ttl_s: float) -> dict[str, LeaseState]:
        """Renew the leases still held; answer each held turn's status and requested stop.
        A token missing from the answer has lost its lease."""
        tokens = list(tokens)
        if not tokens:
            return {}
        held = [TurnStatus.RUNNING.value, TurnStatus.CANCELLING.value]
        async with self._write() as conn:
            await conn.execute(
                update(turns)
                .where(turns.c.claim_token.in_(tokens), turns.c.status.in_(held))
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease_ttl_s))
            )
            rows = (
                await conn.execute(
                    select(turns.c.claim_token, turns.c.status, turns.c.stop).where(
                        turns.c.claim_token.in_(tokens), turns.c.status.in_(held)
                    )
                )
            ).all()
        return {r.claim_token: LeaseState(TurnStatus(r.status), r.stop) for r in rows}

    async def checkpoint(
        self,
        turn: domain.Turn,
        token: str,
        *,
        new_messages: Sequence[domain.Message] = (),
        tool_events: Sequence[tuple[EventType, dict[str, Any]]] = (),
        step_done: bool = False,
        usage: domain.Usage | None = None,
        run_time_s: float | None = None,
        finish: Finish | None = None,
    ) -> list[domain.Message]:
        """Commit one step of a turn held under `token`: its messages, usage, step counter and
        the events describing them, and, if `finish`, the turn's end. All or nothing; raises
        LeaseLost if the token no longer holds the turn."""
        async with self._session_write(turn.session_id) as sw:
            values: dict[str, Any] = {}
            if step_done:
                values["step"] = turns.c.step + 1
            if usage is not None:
                values["usage"] = usage.as_dict()
            if run_time_s is not None:
                values["run_time_s"] = run_time_s
            guard = [turns.c.id == turn.id, turns.c.claim_token == token]
            if finish is not None:
                sources = [s.value for s in domain.sources_of(finish.status)]
                values.update(
                    status=finish.status.value,
                    reason=finish.reason,
                    error={"code": finish.error.code, "message": finish.error.message}
                    if finish.error
                    else None,
                    finished_at=sw.now,
                    claim_token=None,
                    lease_expires_at=None,
                )
                guard.append(turns.c.status.in_(sources))
            else:
                guard.append(turns.c.status == TurnStatus.RUNNING.value)
            row = (
                await sw.conn.execute(
                    update(turns).where(and_(*guard)).values(values).returning(*turns.c)
                )
            ).first()
            if row is None:
                raise errors.LeaseLost(f"turn {turn.id} is no longer held by this worker")
            written = [
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
                for m in new_messages
            ]
            for type_, data in tool_events:
                sw.event(type_, turn.id, data)
            if finish is not None:
                ended = records.turn(row)
                if finish.status is not TurnStatus.COMPLETED:
                    await self._close_dangling_tool_calls(sw, ended.id)
                sw.event(domain.TERMINAL_EVENT[finish.status], turn.id, {"turn": views.turn(ended)})
        return written

    async def _close_dangling_tool_calls(self, sw: _SessionWrite, turn_id: str) -> None:
        """Give every tool call of an ended turn a result, so the transcript stays valid for
        the next model call."""
        rows = (
            await sw.conn.execute(
                select(messages.c.role, messages.c.tool_calls, messages.c.tool_call_id)
                .where(messages.c.turn_id == turn_id, messages.c.hidden.is_(False))
                .order_by(messages.c.seq)
            )
        ).all()
        answered = {r.tool_call_id for r in rows if r.role == "tool"}
        for r in rows:
            for call in r.tool_calls or []:
                if call["id"] not in answered:
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
        """Hand a running turn back to the queue (graceful shutdown). The attempt it used is
        given back too: nothing went wrong with it."""
        async with self._session_write(turn.session_id) as sw:
            row = (
                await sw.conn.execute(
                    update(turns)
                    .where(
                        turns.c.id == turn.id,
                        turns.c.claim_token == token,
                        turns.c.status == TurnStatus.RUNNING.value,
                    )
                    .values(
                        status=TurnStatus.QUEUED.value,
                        attempt=turns.c.attempt - 1,
                        claim_token=None,
                        lease_expires_at=None,
                        worker_id=None,
                    )
                    .returning(*turns.c)
                )
            ).first()
            if row is not None:
                sw.event(
                    EventType.TURN_QUEUED,
                    turn.id,
                    {"turn": views.turn(records.turn(row)), "resumed": True},
                )
        return row is not None

    # --- recovery ------------------------------------------------------------------------------

    async def expired_leases(self, now: datetime) -> list[tuple[str, str]]:
        held = [TurnStatus.RUNNING.value, TurnStatus.CANCELLING.value]
        async with self._read() as conn:
            rows = (
                await conn.execute(
                    select(turns.c.session_id, turns.c.id).where(
                        turns.c.status.in_(held), turns.c.lease_expires_at < now
                    )
                )
            ).all()
        return [(r.session_id, r.id) for r in rows]

    async def recover_lease(
        self, session_id: str, turn_id: str, max_attempts: int, now: datetime
    ) -> TurnStatus | None:
        """Return an expired lease (DESIGN §2): running -> queued (resume) or failed
        `worker_lost` after max attempts; cancelling -> cancelled."""
        async with self._session_write(session_id) as sw:
            row = (
                await sw.conn.execute(
                    select(turns).where(
                        turns.c.id == turn_id,
                        turns.c.status.in_([TurnStatus.RUNNING.value, TurnStatus.CANCELLING.value]),
                        turns.c.lease_expires_at < now,
                    )
                )
            ).first()
            if row is None:
                return None  # renewed or ended meanwhile
            current = records.turn(row)
            lease_free = {"claim_token": None, "lease_expires_at": None, "worker_id": None}
            if current.status is TurnStatus.RUNNING and current.attempt < max_attempts:
                target, extra = TurnStatus.QUEUED, {}
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
                stop = row.stop or {}
                target = TurnStatus.CANCELLED
                extra = {"reason": stop.get("reason", "client_cancelled"), "finished_at": sw.now}
            updated = (
                await sw.conn.execute(
                    update(turns)
                    .where(turns.c.id == turn_id, turns.c.status == current.status.value)
                    .values(status=target.value, **lease_free, **extra)
                    .returning(*turns.c)
                )
            ).first()
            assert updated is not None
            ended = records.turn(updated)
            if target is TurnStatus.QUEUED:
                sw.event(
                    EventType.TURN_QUEUED, turn_id, {"turn": views.turn(ended), "resumed": True}
                )
            else:
                await self._close_dangling_tool_calls(sw, turn_id)
                sw.event(domain.TERMINAL_EVENT[target], turn_id, {"turn": views.turn(ended)})
        return target

    async def expire_all_leases(self) -> int:
        """Embedded mode at start: this process holds the data dir, so every lease left in the
        store belongs to a dead process. Expire them now rather than after their TTL."""
        async with self._write() as conn:
            result = await conn.execute(
                update(turns)
                .where(turns.c.status.in_([TurnStatus.RUNNING.value, TurnStatus.CANCELLING.value]))
                .values(lease_expires_at=utcnow() - timedelta(seconds=1))
            )
        return int(result.rowcount)

    async def ping(self) -> None:
        async with self._read() as conn:
            await conn.execute(select(1))
