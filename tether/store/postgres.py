"""The PostgreSQL dialect: asyncpg under SQLAlchemy, the same synchronous transaction bodies
run through `run_sync`, session rows locked `FOR UPDATE`, claims `SKIP LOCKED`. Many processes
serve one database: none is exclusive.

Bodies are re-run on a deadlock or serialization failure (they are pure functions of the
connection). A lost or refused connection is `Unavailable` (503 with Retry-After), never a
500: the database restarting is an outage to wait out, not a bug.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Select, Table, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tether import errors, storable
from tether.store import migrations
from tether.store.base import outlive_cancellation

T = TypeVar("T")

_RETRIED_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock
_RETRIES = 5
# Any constant: nodes starting together take turns applying migrations.
_MIGRATION_LOCK = 0x7E7E_0001


def engine_for(url: str, pool_size: int, max_overflow: int) -> AsyncEngine:
    parsed = make_url(url).set(drivername="postgresql+asyncpg")
    parsed = parsed.update_query_dict({"prepared_statement_cache_size": "500"})
    return create_async_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=10,
        # no pre-ping (a round trip per transaction): a connection a restarted server left
        # dead fails its first use (503), and the pool then replaces all it holds
        connect_args={"timeout": 5, "command_timeout": 30},
        # the store has more distinct statements than asyncpg's default cache of 100
        query_cache_size=1200,
        json_deserializer=storable.loads_stored,  # repaired if it must be, to be readable
    )


def _sqlstate(exc: DBAPIError) -> str | None:
    orig = exc.orig
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        state = _sqlstate(exc) or ""
        # class 08: connection exception; 57P0x: admin/crash shutdown, cannot connect now
        return state.startswith("08") or state.startswith("57P")
    return isinstance(exc, OSError | ConnectionError)


class Postgres:
    """`urgent` bodies (lease renewals, stops and the ends they bring) have connections of
    their own: a pool drained by a burst of API requests or checkpoints must not delay a
    heartbeat past its lease, nor a stop."""

    exclusive = False

    def __init__(self, engine: AsyncEngine, urgent: AsyncEngine):
        self.engine = engine
        self.urgent = urgent
        # Reads run without BEGIN/COMMIT (two round trips fewer). Nothing is lost: under READ
        # COMMITTED each statement takes its own snapshot even inside a transaction.
        self.reader = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def run(self, body: Callable[[Connection], T], *, write: bool, urgent: bool = False) -> T:
        """Run `body` in a transaction; a cancellation arriving meanwhile waits for it to end
        (`outlive_cancellation`)."""
        return await outlive_cancellation(
            asyncio.ensure_future(self._run(body, write=write, urgent=urgent))
        )

    async def _run(self, body: Callable[[Connection], T], *, write: bool, urgent: bool) -> T:
        engine = self.urgent if urgent else self.engine if write else self.reader
        for attempt in range(_RETRIES):
            try:
                async with engine.begin() as conn:
                    return await conn.run_sync(body)
            except DBAPIError as exc:
                # Not retried: a lost connection (its COMMIT may have been applied). The pool
                # drops its other connections then, so the next request gets a fresh one.
                if _sqlstate(exc) in _RETRIED_SQLSTATES and attempt + 1 < _RETRIES:
                    await asyncio.sleep(0.005 * (attempt + 1))
                    continue
                if _unavailable(exc):
                    raise errors.Unavailable("the database is unavailable, retry") from exc
                raise
            except (OSError, ConnectionError) as exc:
                raise errors.Unavailable("the database is unavailable, retry") from exc
        raise AssertionError("unreachable")

    def lock(self, query: Select[Any], *, skip_locked: bool) -> Select[Any]:
        return query.with_for_update(skip_locked=skip_locked)

    def insert(self, table: Table) -> Any:
        return pg_insert(table)

    def constraint_of(self, exc: IntegrityError) -> str | None:
        # asyncpg's own error (the cause of SQLAlchemy's) names the constraint
        cause = exc.orig.__cause__ if exc.orig is not None else None
        name = getattr(cause, "constraint_name", None)
        return name if isinstance(name, str) else None

    async def close(self) -> None:
        await self.engine.dispose()
        await self.urgent.dispose()

    @classmethod
    async def open(cls, url: str, *, pool_size: int) -> Postgres:
        """Connect and migrate (nodes starting together take turns)."""
        engine = engine_for(url, pool_size, max_overflow=pool_size)

        def upgrade(conn: Connection) -> None:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            migrations.upgrade(conn)

        try:
            async with engine.begin() as conn:
                await conn.run_sync(upgrade)
        except BaseException as exc:
            await engine.dispose()
            if _unavailable(exc):
                raise errors.Unavailable(f"cannot reach the database: {exc}") from exc
            raise
        return cls(engine, engine_for(url, 2, max_overflow=4))
