"""Storage: one schema, one Store, a small file per dialect."""

from __future__ import annotations

from sqlalchemy.engine import make_url

from tether import errors
from tether.store import migrations
from tether.store.base import CommitHook, Page, Runner, Store
from tether.store.leases import Claim, Finish, Leases, LeaseState, Unstartable

__all__ = [
    "Claim",
    "CommitHook",
    "Finish",
    "LeaseState",
    "Leases",
    "Page",
    "Runner",
    "Store",
    "Unstartable",
    "open_store",
]


async def open_store(url: str, on_commit: CommitHook | None = None, pool_size: int = 10) -> Store:
    """Connect, apply migrations, and return the Store for `url`."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        from tether.store import sqlite

        engine = sqlite.engine_for(url)
        with engine.begin() as conn:
            migrations.upgrade(conn)
        return Store(sqlite.SQLiteRunner(engine), lock_rows=False, on_commit=on_commit)
    if backend == "postgresql":
        from tether.store import postgres

        runner = await postgres.open_runner(url, pool_size)
        return Store(runner, lock_rows=True, on_commit=on_commit)
    raise errors.InvalidRequest(
        f"unsupported store URL {url!r}: sqlite:///path or postgresql://user@host/db"
    )
