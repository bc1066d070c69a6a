"""Storage: one schema, a small file per dialect, and a module per concept. `Store` gathers
the concepts over one database; `open_store` picks the dialect from the URL."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.engine import make_url

from tether import errors
from tether.store import (
    agents,
    audit,
    forks,
    idempotency,
    interrupts,
    keys,
    leases,
    lifecycle,
    outbox,
    purges,
    sessions,
    tool_runs,
    webhooks,
)
from tether.store.base import CommitHook, Database, Dialect, OutboxHook, Page
from tether.store.leases import Claim, LeaseState, Unstartable

__all__ = ["Claim", "CommitHook", "LeaseState", "Page", "Store", "Unstartable", "open_store"]


class Store:
    def __init__(self, db: Database):
        self.db = db
        self.agents = agents.Agents(db)
        self.sessions = sessions.Sessions(db)  # sessions, turns, transcripts, events: reads
        self.lifecycle = lifecycle.Lifecycle(db)  # every change of a turn's status
        self.forks = forks.Forks(db)  # new sessions from another's history
        self.purges = purges.Purges(db)  # sessions erased for good
        self.leases = leases.Leases(db)
        self.interrupts = interrupts.Interrupts(db)
        self.tool_runs = tool_runs.ToolRuns(db)
        self.keys = keys.ApiKeys(db)
        self.audit = audit.AuditLog(db)
        self.idempotency = idempotency.IdempotencyKeys(db)
        self.webhooks = webhooks.Webhooks(db)  # endpoints, and their deliveries' log
        self.outbox = outbox.Outbox(db)  # the deliveries as dispatchers claim and send them

    @property
    def exclusive(self) -> bool:
        """This process is the store's only server: every lease in it that this process does
        not hold belongs to a dead one."""
        return self.db.dialect.exclusive

    async def ping(self) -> None:
        await self.db.read(lambda conn: conn.execute(select(1)))

    async def close(self) -> None:
        await self.db.dialect.close()


async def open_store(
    url: str,
    *,
    on_commit: CommitHook | None = None,
    on_outbox: OutboxHook | None = None,
    pool_size: int = 10,
    serve: bool = False,
) -> Store:
    """Connect, apply migrations, and return the Store for `url`. `serve`: this process serves
    the store (API or workers), not a one-off command; an embedded store admits one such."""
    backend = make_url(url).get_backend_name()
    dialect: Dialect
    if backend == "sqlite":
        from tether.store.sqlite import SQLite

        dialect = SQLite.open(url, serve=serve)
    elif backend == "postgresql":
        from tether.store.postgres import Postgres

        dialect = await Postgres.open(url, pool_size=pool_size)
    else:
        raise errors.InvalidRequest(
            f"unsupported store URL {url!r}: sqlite:///path or postgresql://user@host/db"
        )
    return Store(Database(dialect, on_commit, on_outbox))
