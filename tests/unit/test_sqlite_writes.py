"""SQLite's writes queued in one turn of the event loop commit together (store/sqlite.py):
each still succeeds or fails alone, and a cancelled caller's write is never lost track of."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection, event, text
from sqlalchemy.exc import IntegrityError

from tether.store.sqlite import SQLite

INSERT = text(
    "INSERT INTO audit_log (id, tenant_id, action, target, created_at) "
    "VALUES (:id, 't', 'x', 'y', '2026-11-30 00:00:00')"
)
IDS = text("SELECT id FROM audit_log ORDER BY id")


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SQLite]:
    db = SQLite.open(f"sqlite:///{tmp_path}/w.db", serve=False)
    yield db
    db.engine.dispose()


def _insert(row_id: str, fail: bool = False) -> Callable[[Connection], str]:
    def body(conn: Connection) -> str:
        conn.execute(INSERT, {"id": row_id})
        if fail:
            raise LookupError(row_id)
        return row_id

    return body


async def _ids(db: SQLite) -> list[str]:
    return await db.run(lambda c: [r.id for r in c.execute(IDS)], write=False)


async def test_writes_of_one_moment_commit_together_and_fail_alone(db: SQLite) -> None:
    commits = 0

    def count(*_: object) -> None:
        nonlocal commits
        commits += 1

    event.listen(db.engine, "commit", count)
    writes = [db.run(_insert(f"r{n}", fail=n == 2), write=True) for n in range(5)]
    outcomes = await asyncio.gather(*writes, return_exceptions=True)
    assert outcomes[:2] == ["r0", "r1"] and outcomes[3:] == ["r3", "r4"]
    assert isinstance(outcomes[2], LookupError)
    assert commits == 1
    assert await _ids(db) == ["r0", "r1", "r3", "r4"]  # the failed one's insert undone
    # a write alone fails alone, its insert undone
    with pytest.raises(LookupError):
        await db.run(_insert("r5", fail=True), write=True)
    assert await _ids(db) == ["r0", "r1", "r3", "r4"]


async def test_a_duplicate_in_a_group_fails_only_its_writer(db: SQLite) -> None:
    await db.run(_insert("dup"), write=True)
    outcomes = await asyncio.gather(
        db.run(_insert("a"), write=True),
        db.run(_insert("dup"), write=True),
        db.run(_insert("b"), write=True),
        return_exceptions=True,
    )
    assert outcomes[0] == "a" and outcomes[2] == "b"
    assert isinstance(outcomes[1], IntegrityError)
    assert await _ids(db) == ["a", "b", "dup"]


async def test_a_cancelled_writer_still_learns_its_write_committed(db: SQLite) -> None:
    reached = asyncio.Event()
    result: list[str] = []

    async def writer() -> None:
        reached.set()
        result.append(await db.run(_insert("kept"), write=True))
        await asyncio.sleep(3600)  # the cancellation lands here, after the write's answer

    task = asyncio.create_task(writer())
    await reached.wait()
    task.cancel()  # while its write waits for the group's commit
    with pytest.raises(asyncio.CancelledError):
        await task
    assert result == ["kept"]
    assert await _ids(db) == ["kept"]
