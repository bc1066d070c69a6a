"""The use cases: what clients can ask of Tether, over the store and the bus."""

from __future__ import annotations

from typing import Any

from tether import domain, errors, ids
from tether.bus import Bus
from tether.runtime.tools import ToolRegistry
from tether.store import Page, Store

DEFAULT_TENANT = "default"


def normalize_input(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`input` is a string (one user message) or a list of {role, content} messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not value:
        raise errors.InvalidRequest("input must not be empty")
    return [{"role": item["role"], "content": item["content"]} for item in value]


class Service:
    def __init__(self, store: Store, bus: Bus, tools: ToolRegistry, zone: str):
        self.store = store
        self.bus = bus
        self.tools = tools
        self.zone = zone

    # --- agents --------------------------------------------------------------------------------

    def _check_agent(self, spec: domain.AgentSpec) -> None:
        unknown = [t.name for t in spec.tools if self.tools.get(t.name) is None]
        if unknown:
            raise errors.InvalidAgent(
                f"unknown tools: {', '.join(unknown)}",
                details={"unknown_tools": unknown, "available": self.tools.names()},
            )

    async def create_agent(self, tenant: str, spec: domain.AgentSpec) -> domain.Agent:
        self._check_agent(spec)
        return await self.store.create_agent(tenant, spec)

    async def upsert_agent(self, tenant: str, spec: domain.AgentSpec) -> domain.Agent:
        """Create or replace the agent of that name (agents files, the demo agent)."""
        self._check_agent(spec)
        try:
            current = await self.store.get_agent(tenant, spec.name)
        except errors.NotFound:
            return await self.store.create_agent(tenant, spec)
        if current.spec == spec:
            return current
        return await self.store.update_agent(tenant, current.id, spec)

    async def get_agent(self, tenant: str, agent_id: str) -> domain.Agent:
        return await self.store.get_agent(tenant, ids.check("agt", agent_id))

    async def list_agents(self, tenant: str, limit: int, cursor: str | None) -> Page:
        return await self.store.list_agents(tenant, limit, cursor)

    async def update_agent(
        self, tenant: str, agent_id: str, changes: dict[str, Any]
    ) -> domain.Agent:
        current = await self.get_agent(tenant, agent_id)
        merged = {**current.spec.model_dump(mode="json"), **changes}
        try:
            spec = domain.AgentSpec.model_validate(merged)
        except ValueError as exc:
            raise errors.InvalidAgent(str(exc)) from exc
        self._check_agent(spec)
        return await self.store.update_agent(tenant, agent_id, spec)

    async def delete_agent(self, tenant: str, agent_id: str) -> None:
        await self.store.delete_agent(tenant, ids.check("agt", agent_id))

    # --- sessions ------------------------------------------------------------------------------

    async def create_session(
        self,
        tenant: str,
        agent_ref: str,
        metadata: dict[str, Any] | None = None,
        input: str | list[dict[str, Any]] | None = None,
    ) -> tuple[domain.Session, domain.Turn | None]:
        """`agent_ref` is an agent id or, for convenience, an agent's name."""
        agent = await self.store.get_agent(tenant, agent_ref)
        first = normalize_input(input) if input is not None else None
        session, turn = await self.store.create_session(
            tenant, agent.id, self.zone, metadata or {}, first
        )
        if turn:
            self.bus.notify_work()
        return session, turn

    async def get_session(self, tenant: str, session_id: str) -> domain.Session:
        return await self.store.get_session(tenant, ids.check_session(session_id))

    async def list_sessions(
        self,
        tenant: str,
        limit: int,
        cursor: str | None,
        status: domain.SessionStatus | None,
        agent_id: str | None,
    ) -> Page:
        return await self.store.list_sessions(tenant, limit, cursor, status, agent_id)

    async def close_session(self, tenant: str, session_id: str) -> domain.Session:
        return await self.store.close_session(tenant, ids.check_session(session_id))

    # --- turns ---------------------------------------------------------------------------------

    async def start_turn(
        self,
        tenant: str,
        session_id: str,
        input: str | list[dict[str, Any]],
        on_busy: domain.OnBusy = domain.OnBusy.ENQUEUE,
    ) -> domain.Turn:
        turn = await self.store.create_turn(
            tenant, ids.check_session(session_id), normalize_input(input), on_busy
        )
        self.bus.notify_work()
        return turn

    async def get_turn(self, tenant: str, session_id: str, turn_id: str) -> domain.Turn:
        return await self.store.get_turn(
            tenant, ids.check_session(session_id), ids.check("turn", turn_id)
        )

    async def list_turns(
        self, tenant: str, session_id: str, limit: int, cursor: int | None
    ) -> Page:
        return await self.store.list_turns(tenant, ids.check_session(session_id), limit, cursor)

    async def list_messages(
        self, tenant: str, session_id: str, limit: int, cursor: int | None
    ) -> Page:
        return await self.store.list_messages(tenant, ids.check_session(session_id), limit, cursor)

    async def events_after(
        self, tenant: str, session_id: str, after: int, limit: int
    ) -> list[domain.Event]:
        await self.get_session(tenant, session_id)
        return await self.store.events_after(session_id, after, limit)
