"""The seam under every store module: a `Dialect` runs transaction bodies, and `Database`
gives the modules reads, writes and session writes over it.

Each operation is a synchronous transaction body over a `Connection`; the dialect decides how
bodies run (SQLite: inline on the event loop, PostgreSQL: `run_sync` on asyncpg). A body never
awaits, so it cannot be interrupted half way by a cancellation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Row, Select, Table, insert
from sqlalchemy.exc import IntegrityError

from tether import domain, errors
from tether.store.schema import sessions
from tether.store.session_write import SESSION_BY_ID, SessionWrite

T = TypeVar("T")


async def outlive_cancellation(work: asyncio.Future[T]) -> T:
    """`work`'s result, even if the caller is cancelled meanwhile: the cancellation then waits
    for `work` to end and lands at the caller's next await. A dialect's write answers through
    this, so a caller (a stop cancels a worker's task wherever it is) never sees
    CancelledError for a write that committed, and never loses track of what it wrote."""
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        me = asyncio.current_task()
        try:
            return await work  # its result, or its error
        finally:
            if me is not None:  # re-armed: delivered at the caller's next await
                me.uncancel()
                me.cancel()


P = TypeVar("P")
CommitHook = Callable[[str, list[domain.Event]], None]
OutboxHook = Callable[[], None]  # webhook deliveries were committed: wake the dispatchers


class Dialect(Protocol):
    """All that differs between SQLite and PostgreSQL. Shared code asks; it never checks which
    database it is on."""

    @property
    def exclusive(self) -> bool:
        """This process is the only one serving the store: a lease in it that this process
        does not hold belongs to a dead one."""
        ...

    async def run(
        self, body: Callable[[Connection], T], *, write: bool, urgent: bool = False
    ) -> T: ...

    def lock(self, query: Select[Any], *, skip_locked: bool) -> Select[Any]:
        """`query` reading a row that the transaction then writes (the lock policy)."""
        ...

    def insert(self, table: Table) -> Any:
        """An INSERT that offers `on_conflict_do_update` (an upsert)."""
        ...

    def constraint_of(self, exc: IntegrityError) -> str | None:
        """The name of the constraint `exc` violated, if known."""
        ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class Page:
    items: list[Any]
    next_cursor: str | None

    @classmethod
    def of(
        cls,
        rows: Sequence[Row[Any]],
        limit: int,
        convert: Callable[[Row[Any]], Any],
        cursor_of: Callable[[Any], str],
    ) -> Page:
        """`rows` read with `paged` (one more than `limit`, to know whether more follow)."""
        items = [convert(r) for r in rows[:limit]]
        return cls(items, cursor_of(items[-1]) if len(rows) > limit else None)


def paged(
    query: Select[Any], key: Any, cursor: Any, limit: int, *, newest_first: bool = False
) -> Select[Any]:
    """`query` from after `cursor` in the order of `key`, one more row than `limit`."""
    if cursor is not None:
        query = query.where(key < cursor if newest_first else key > cursor)
    return query.order_by(key.desc() if newest_first else key).limit(limit + 1)


class Database:
    """Reads, writes and session writes over a dialect; committed events go to `on_commit`,
    and `on_outbox` hears of committed webhook deliveries."""

    def __init__(
        self,
        dialect: Dialect,
        on_commit: CommitHook | None = None,
        on_outbox: OutboxHook | None = None,
    ):
        self.dialect = dialect
        self.on_commit = on_commit
        self.on_outbox = on_outbox
        # a session's row, locked (where the dialect locks) for the transaction that reads it
        self.session_row = dialect.lock(SESSION_BY_ID, skip_locked=False)
        self._session_row_skip_locked = dialect.lock(SESSION_BY_ID, skip_locked=True)

    async def read(self, body: Callable[[Connection], T]) -> T:
        return await self.dialect.run(body, write=False)

    async def write(self, body: Callable[[Connection], T], *, urgent: bool = False) -> T:
        return await self.dialect.run(body, write=True, urgent=urgent)

    async def session_write(
        self,
        session_id: str,
        body: Callable[[SessionWrite], T],
        tenant_id: str | None = None,
        *,
        skip_locked: bool = False,
        urgent: bool = False,
    ) -> T:
        """A write transaction on one session, its row read (and locked, where the dialect
        locks) first; its events reach `on_commit` after commit. NotFound if the session does
        not exist in `tenant_id` (or, with `skip_locked`, another writer holds it). `urgent`:
        a stop's, on connections of their own (the dialect's), not behind a burst of others."""
        query = self._session_row_skip_locked if skip_locked else self.session_row
        written: list[domain.Event] = []
        outbox = 0

        def tx(conn: Connection) -> T:
            nonlocal outbox
            written.clear()  # a body may run again (PostgreSQL retries deadlocks)
            row = conn.execute(query, {"sid": session_id}).first()
            if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
                raise errors.NotFound(f"session {session_id} not found")
            sw = SessionWrite(conn, row, self.dialect.insert)
            result = body(sw)
            sw.flush()
            written.extend(sw.events)
            outbox = sw.outbox
            return result

        result = await self.write(tx, urgent=urgent)
        if written and self.on_commit:
            self.on_commit(session_id, written)
        if outbox:
            self.outbox_written()
        return result

    async def create_session(
        self,
        prepare: Callable[[Connection], P],
        row: Callable[[P, datetime], dict[str, Any]],
        body: Callable[[SessionWrite, P], T],
    ) -> T:
        """One write transaction that makes a session and fills it: `prepare` reads what it
        needs, `row` gives the new session's row (from what was prepared, at the time of the
        write), then `body` changes it as a session write. Its events reach `on_commit`."""
        written: list[domain.Event] = []
        made: list[str] = []
        outbox = 0

        def tx(conn: Connection) -> T:
            nonlocal outbox
            written.clear()
            made.clear()
            prepared = prepare(conn)
            values = row(prepared, domain.utcnow())
            conn.execute(insert(sessions).values(values))
            sw = SessionWrite(
                conn, conn.execute(SESSION_BY_ID, {"sid": values["id"]}).one(), self.dialect.insert
            )
            result = body(sw, prepared)
            sw.flush()
            written.extend(sw.events)
            made.append(values["id"])
            outbox = sw.outbox
            return result

        result = await self.write(tx)
        if written and self.on_commit:
            self.on_commit(made[0], written)
        if outbox:
            self.outbox_written()
        return result

    def outbox_written(self) -> None:
        """Webhook deliveries were committed: the dispatchers may have work."""
        if self.on_outbox:
            self.on_outbox()

    def violated(self, exc: IntegrityError) -> str | None:
        """The constraint an integrity error is about (None: not known)."""
        return self.dialect.constraint_of(exc)
