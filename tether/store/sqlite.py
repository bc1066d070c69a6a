"""The SQLite dialect: WAL, `BEGIN IMMEDIATE` for writers, busy_timeout, foreign keys.

Transaction bodies run inline on the event loop over one connection. A statement here takes
microseconds, less than the hop to a driver thread would; and since a body never awaits,
bodies are serialized by construction: no write lock, no pool, no SQLITE_BUSY in-process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from tether import storable

T = TypeVar("T")


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
        write = conn.info.get("tether_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


class SQLiteRunner:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._conn = engine.connect()

    async def run(self, body: Callable[[Connection], T], *, write: bool, urgent: bool = False) -> T:
        # `urgent` needs nothing here: bodies run inline, nothing queues ahead of them
        conn = self._conn
        conn.info["tether_write"] = write
        with conn.begin():
            return body(conn)

    async def close(self) -> None:
        self._conn.close()
        self.engine.dispose()
