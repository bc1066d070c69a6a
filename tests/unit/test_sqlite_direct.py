"""SQLite statements run straight on the driver (store/sqlite_direct.py) answer exactly what
SQLAlchemy answers for them, and fall back to SQLAlchemy for anything they do not plan."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError, StatementError

from tether.store import migrations
from tether.store.schema import agents, events, sessions
from tether.store.sqlite import engine_for
from tether.store.sqlite_direct import DirectConnection

NOW = datetime(2026, 11, 30, 6, 0, 0, 123456, tzinfo=UTC)
SESSION = select(sessions).where(sessions.c.id == bindparam("sid"))
INSERT_SESSION = insert(sessions)
INSERT_EVENTS = insert(events)
EVENTS = (
    select(events.c.seq, events.c.data, events.c.created_at)
    .where(events.c.session_id == bindparam("sid"), events.c.seq > 1)
    .order_by(events.c.seq)
    .limit(5)
)
RENAME = update(sessions).where(sessions.c.id == bindparam("sid")).values(status="closed")
RETURNING = update(sessions).where(sessions.c.id == bindparam("sid")).returning(sessions.c.status)


@pytest.fixture
def conn() -> Iterator[DirectConnection]:
    engine = engine_for("sqlite:///:memory:")
    with engine.begin() as setup:
        migrations.upgrade(setup)
    conn = DirectConnection(engine)
    conn.info["tether_write"] = True
    with conn.begin():
        agent = {"id": "agt_a", "tenant_id": "t", "name": "a", "spec": {}}
        conn.execute(insert(agents), {**agent, "created_at": NOW, "updated_at": NOW})
        yield conn
    engine.dispose()


def _session(sid: str) -> dict[str, Any]:
    return {
        "id": sid,
        "tenant_id": "t",
        "agent_id": "agt_a",
        "status": "idle",
        "metadata": {"k": ["v", None]},
        "created_at": NOW,
        "updated_at": NOW,
    }


def _both(conn: DirectConnection, statement: Any, params: Any) -> tuple[Any, Any]:
    """The statement's rows through SQLAlchemy, then through the plan (its third run)."""
    through_sqlalchemy = Connection.execute(conn, statement, params).all()
    conn.execute(statement, params)  # seen once: SQLAlchemy's
    assert conn._plan(statement, params if isinstance(params, dict) else {}, False)
    return through_sqlalchemy, conn.execute(statement, params).all()


def test_planned_reads_answer_what_sqlalchemy_answers(conn: DirectConnection) -> None:
    conn.execute(INSERT_SESSION, _session("s1"))
    conn.execute(INSERT_SESSION, _session("s1b"))
    rows = [
        {
            "session_id": "s1",
            "seq": n,
            "type": "x",
            "turn_id": None,
            "data": {"n": n},
            "created_at": NOW,
            "v": 1,
        }
        for n in range(1, 9)
    ]
    conn.execute(INSERT_EVENTS, rows)
    conn.execute(INSERT_EVENTS, [{**r, "session_id": "s1b"} for r in rows])
    expected, direct = _both(conn, SESSION, {"sid": "s1"})
    assert direct == expected
    assert direct[0].metadata == {"k": ["v", None]}  # JSON decoded
    assert direct[0].created_at == NOW  # the stored text read back as an aware datetime
    assert direct[0]._mapping["tenant_id"] == "t"
    expected, direct = _both(conn, EVENTS, {"sid": "s1"})
    assert [r.seq for r in direct] == [2, 3, 4, 5, 6] == [r.seq for r in expected]  # LIMIT 5
    assert direct == expected
    # all planned writes stored what SQLAlchemy would have: every row reads back the same
    assert conn.execute(select(events.c.session_id)).all().count(("s1",)) == 8


def test_planned_writes_count_rows_and_return(conn: DirectConnection) -> None:
    for sid in ("a", "b", "c"):
        conn.execute(INSERT_SESSION, _session(sid))
    assert [conn.execute(RENAME, {"sid": s}).rowcount for s in ("a", "b", "nope")] == [1, 1, 0]
    assert conn._plan(RENAME, {"sid": "x"}, False) is not None  # the last two were planned
    assert conn.execute(SESSION, {"sid": "b"}).first().status == "closed"
    for _ in range(2):
        result = conn.execute(RETURNING, {"sid": "c", "status": "running"})
        assert result.scalar_one() == "running"


def test_a_missing_parameter_is_sqlalchemys_error(conn: DirectConnection) -> None:
    for _ in range(3):
        with pytest.raises(StatementError, match="sid"):
            conn.execute(SESSION, {})


def test_a_constraint_is_sqlalchemys_integrity_error(conn: DirectConnection) -> None:
    conn.execute(INSERT_SESSION, _session("dup"))
    conn.execute(INSERT_SESSION, _session("other"))  # planned from here on
    unique = r"UNIQUE constraint failed: sessions\.id"
    with pytest.raises(IntegrityError, match=unique), conn.begin_nested():
        conn.execute(INSERT_SESSION, _session("dup"))


def test_statements_built_per_call_are_not_kept(conn: DirectConnection) -> None:
    for n in range(50):
        conn.execute(select(sessions).where(sessions.c.id == f"s{n}")).all()
    assert len(conn._plans) < 5  # each died after its run (not 50 kept)
    assert not any(conn._plans.values())  # and none was compiled for a plan
