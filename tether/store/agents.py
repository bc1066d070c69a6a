"""Agent definitions, per tenant. A name is unique among a tenant's live agents; a deleted
agent keeps its row, so its sessions still run with the definition they started with."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, insert, select, update
from sqlalchemy.exc import IntegrityError

from tether import domain, errors, ids, specs
from tether.store import rows
from tether.store.base import Database, Page, paged
from tether.store.schema import agents

_UNIQUE_NAME = "ux_agents_tenant_name"
_LIVE = agents.c.deleted_at.is_(None)


class Agents:
    def __init__(self, db: Database):
        self.db = db

    async def create(self, tenant_id: str, spec: specs.AgentSpec) -> domain.Agent:
        now = domain.utcnow()
        agent = domain.Agent(ids.new("agt"), tenant_id, spec, now, now)
        values = {**rows.AGENT.values(agent), "name": spec.name}
        await self._named(spec, self.db.write(lambda c: c.execute(insert(agents).values(values))))
        return agent

    async def get(self, tenant_id: str, ref: str) -> domain.Agent:
        """An agent by id or by name, within the tenant."""
        column = agents.c.id if ref.startswith("agt_") else agents.c.name
        row = await self.db.read(
            lambda conn: conn.execute(
                select(agents).where(column == ref, agents.c.tenant_id == tenant_id, _LIVE)
            ).first()
        )
        if row is None:
            raise errors.NotFound(f"agent {ref} not found")
        return rows.agent(row)

    async def by_id(self, agent_id: str) -> domain.Agent:
        """For workers: the definition of a session's agent, even if since deleted."""
        row = await self.db.read(
            lambda conn: conn.execute(select(agents).where(agents.c.id == agent_id)).first()
        )
        if row is None:
            raise errors.NotFound(f"agent {agent_id} not found")
        return rows.agent(row)

    async def version(self, agent_id: str) -> datetime | None:
        """When the agent was last changed: enough to tell whether a cached copy is current."""
        return await self.db.read(
            lambda conn: conn.execute(
                select(agents.c.updated_at).where(agents.c.id == agent_id)
            ).scalar()
        )

    async def page(self, tenant_id: str, limit: int, cursor: str | None) -> Page:
        query = select(agents).where(agents.c.tenant_id == tenant_id, _LIVE)
        query = paged(query, agents.c.id, cursor, limit, newest_first=True)
        found = await self.db.read(lambda conn: conn.execute(query).all())
        return Page.of(found, limit, rows.agent, lambda a: a.id)

    async def update(self, tenant_id: str, agent_id: str, spec: specs.AgentSpec) -> domain.Agent:
        def tx(conn: Connection) -> Row[Any] | None:
            return conn.execute(
                update(agents)
                .where(agents.c.id == agent_id, agents.c.tenant_id == tenant_id, _LIVE)
                .values(name=spec.name, spec=spec.stored(), updated_at=domain.utcnow())
                .returning(*agents.c)
            ).first()

        row = await self._named(spec, self.db.write(tx))
        if row is None:
            raise errors.NotFound(f"agent {agent_id} not found")
        return rows.agent(row)

    async def delete(self, tenant_id: str, agent_id: str) -> None:
        def tx(conn: Connection) -> int:
            return conn.execute(
                update(agents)
                .where(agents.c.id == agent_id, agents.c.tenant_id == tenant_id, _LIVE)
                .values(deleted_at=domain.utcnow())
            ).rowcount

        if await self.db.write(tx) == 0:
            raise errors.NotFound(f"agent {agent_id} not found")

    async def _named(self, spec: specs.AgentSpec, write: Any) -> Any:
        """`write`'s result; AlreadyExists if it broke the uniqueness of names."""
        try:
            return await write
        except IntegrityError as exc:
            if self.db.violated(exc) == _UNIQUE_NAME:
                raise errors.AlreadyExists(f"an agent named {spec.name!r} exists") from exc
            raise
