"""The SQLite dialect: WAL, `BEGIN IMMEDIATE` for writers, busy_timeout, foreign keys.

Transaction bodies run inline on the event loop over one connection. A statement here takes
microseconds, less than the hop to a driver thread would; and since a body never awaits,
bodies are serialized by construction: no write lock, no pool, no SQLITE_BUSY in-process, and
no row locks to take.

A process that serves the store (the server, not a one-off CLI command) holds a lock on the
database's directory: one such process at a time, so every lease it finds at start belongs to
a dead one.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Index,
    PrimaryKeyConstraint,
    Select,
    Table,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.pool import StaticPool

from tether import errors, storable
from tether.store import migrations, schema
from tether.store.base import outlive_cancellation
from tether.store.sqlite_direct import DirectConnection

T = TypeVar("T")
# "UNIQUE constraint failed: agents.tenant_id, agents.name" (SQLite names columns, not the
# constraint: the schema says which constraint has exactly those)
_UNIQUE_FAILED = re.compile(r"UNIQUE constraint failed: (.+)$")


class DataDirLocked(errors.TetherError):
    """Another Tether process is using this data directory."""

    code = "data_dir_locked"


class DataDirUnusable(errors.TetherError):
    """The data directory cannot be created or written."""

    code = "data_dir_unusable"


class MigrationFailed(errors.TetherError):
    """The store could not be brought to the current schema."""

    code = "migration_failed"


def engine_for(url: str) -> Engine:
    parsed = make_url(url).set(drivername="sqlite")  # pysqlite: we never hand it to threads
    database = parsed.database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    # stored JSON is read back repaired if it must be (storable.loads_stored)
    engine = create_engine(parsed, poolclass=StaticPool, json_deserializer=storable.loads_stored)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let the begin hook below decide how each transaction begins.
        dbapi_conn.isolation_level = None
        for pragma in (
            "journal_mode=WAL",
            "synchronous=NORMAL",  # survives process crashes; WAL keeps it consistent
            "busy_timeout=10000",  # another process (a CLI command) may hold the lock briefly
            "foreign_keys=ON",
        ):
            dbapi_conn.execute(f"PRAGMA {pragma}")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front, so a read-then-write transaction can never
        # fail half way with SQLITE_BUSY on lock upgrade (another process may be writing).
        # Straight to the driver: through exec_driver_sql this BEGIN cost as much as a
        # whole statement (a tenth of the server's time starting many turns at once).
        write = conn.info.get("tether_write", False)
        driver = conn.connection.driver_connection
        assert driver is not None
        statement = "BEGIN IMMEDIATE" if write else "BEGIN"
        try:
            driver.execute(statement)
        except sqlite3.Error as exc:  # as SQLAlchemy raises it (locked: OperationalError)
            raise DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc

    return engine


def _constraints() -> dict[tuple[str, frozenset[str]], str]:
    """(table, columns) -> the name of the unique constraint or index on exactly those."""
    found: dict[tuple[str, frozenset[str]], str] = {}
    for table in schema.metadata.tables.values():
        keyed: list[PrimaryKeyConstraint | UniqueConstraint | Index] = [
            c for c in table.constraints if isinstance(c, PrimaryKeyConstraint | UniqueConstraint)
        ]
        keyed += [i for i in table.indexes if i.unique]
        for item in keyed:
            if isinstance(item.name, str):
                found[(table.name, frozenset(c.name for c in item.columns))] = item.name
    return found


_BY_COLUMNS = _constraints()


class SQLite:
    exclusive = True  # one serving process (`serve`) or a command: never two servers

    def __init__(self, engine: Engine, lock: IO[Any] | None = None):
        self.engine = engine
        self._conn = DirectConnection(engine)  # the store's statements skip SQLAlchemy's layer
        self._lock = lock
        self._writes: list[tuple[Callable[[Connection], Any], asyncio.Future[Any]]] = []

    @classmethod
    def open(cls, url: str, *, serve: bool) -> SQLite:
        """Connect and migrate; `serve`: hold the lock of the database's directory."""
        lock = _lock_dir(url) if serve else None
        engine = engine_for(url)
        try:
            if serve and make_url(url).database not in (None, "", ":memory:"):
                _migrate_apart(engine, url)
            with engine.begin() as conn:
                migrations.upgrade(conn)  # a serving process's store is at head: a check
        except BaseException:
            engine.dispose()
            if lock:
                lock.close()
            raise
        return cls(engine, lock)

    async def run(self, body: Callable[[Connection], T], *, write: bool, urgent: bool = False) -> T:
        """A read, or an `urgent` write (a stop's), runs at once. Another write joins the
        writes queued in the same turn of the event loop: one transaction, one commit for all
        (`_commit_writes`). A commit is most of a short write's cost, and a burst of turns
        (500 starting at once, a claim of many) writes many at a time; but under load a turn
        of the loop is long, and a stop must not wait for it.

        A cancellation arriving meanwhile waits for the group's commit
        (`outlive_cancellation`, as on PostgreSQL)."""
        conn = self._conn
        if urgent or not write:
            conn.info["tether_write"] = write
            with conn.begin():
                return body(conn)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        self._writes.append((body, done))
        if len(self._writes) == 1:
            loop.call_soon(self._commit_writes)
        return await outlive_cancellation(done)

    def _commit_writes(self) -> None:
        """The queued writes in one transaction, each in a savepoint of its own: one that
        fails is undone alone, and fails alone. A failed commit fails them all (nothing of
        them was written)."""
        group, self._writes = self._writes, []
        conn = self._conn
        conn.info["tether_write"] = True
        outcomes: list[tuple[asyncio.Future[Any], BaseException | None, Any]] = []
        try:
            with conn.begin():
                if len(group) == 1:  # no savepoint: a failure rolls the transaction back
                    body, done = group[0]
                    outcomes.append((done, None, body(conn)))
                else:
                    driver = conn.connection.driver_connection
                    assert driver is not None
                    for body, done in group:
                        outcomes.append((done, *_in_savepoint(driver, conn, body)))
        except Exception as exc:
            for _, done in group:
                _settle(done, exc, None)
            return
        for done, error, value in outcomes:
            _settle(done, error, value)

    def lock(self, query: Select[Any], *, skip_locked: bool) -> Select[Any]:
        return query  # bodies are serialized: nothing to lock against

    def insert(self, table: Table) -> Any:
        return sqlite_insert(table)

    def constraint_of(self, exc: IntegrityError) -> str | None:
        match = _UNIQUE_FAILED.search(str(exc.orig))
        if match is None:
            return None
        qualified = [c.strip().split(".", 1) for c in match.group(1).split(",")]
        tables = {t for t, _ in qualified}
        if len(tables) != 1:
            return None
        return _BY_COLUMNS.get((tables.pop(), frozenset(c for _, c in qualified)))

    async def close(self) -> None:
        self._conn.close()
        self.engine.dispose()
        if self._lock:
            self._lock.close()


def _lock_dir(url: str) -> IO[Any] | None:
    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    directory = Path(database).parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = open(directory / "tether.lock", "a+")  # noqa: SIM115 - held while it is open
    except FileExistsError as exc:
        raise DataDirUnusable(f"data dir {directory} is a file, not a directory") from exc
    except NotADirectoryError as exc:
        raise DataDirUnusable(f"data dir {directory} is under a file, not a directory") from exc
    except OSError as exc:
        raise DataDirUnusable(f"data dir {directory} is not writable: {exc.strerror}") from exc
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        lock.close()
        raise DataDirLocked(f"another tether process is using the data dir {directory}") from exc
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def _migrate_apart(engine: Engine, url: str) -> None:
    """A store behind the current schema is migrated by a short-lived process of its own
    (`python -m tether.store.migrations`): alembic, and what running it leaves behind, is
    ~9 MB that a serving process would otherwise hold for good."""
    with engine.connect() as conn:
        if migrations.current(conn) == migrations.HEAD:
            return
    command = [sys.executable, "-m", "tether.store.migrations", url]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise MigrationFailed(f"migrating the store failed: {lines[-1]}")


def _in_savepoint(
    driver: Any, conn: Connection, body: Callable[[Connection], Any]
) -> tuple[BaseException | None, Any]:
    """(error, result) of `body`, its writes undone if it failed."""
    driver.execute("SAVEPOINT write")
    try:
        value = body(conn)
    except Exception as exc:
        driver.execute("ROLLBACK TO write")
        driver.execute("RELEASE write")
        return exc, None
    driver.execute("RELEASE write")
    return None, value


def _settle(done: asyncio.Future[Any], error: BaseException | None, value: Any) -> None:
    if done.done():
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(value)
