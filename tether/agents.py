"""Agent definitions as tenants manage them (DESIGN §7, §8): checked against the tools this
process has and what the operator allows, their own provider keys sealed at rest and never
handed back."""

from __future__ import annotations

import re
from typing import Any

from tether import domain, errors, ids, sealing, storable
from tether.config import Settings
from tether.runtime import providers
from tether.runtime.tools import ToolRegistry
from tether.store import Page, Store


class Agents:
    def __init__(self, store: Store, tools: ToolRegistry, settings: Settings):
        self.store = store
        self.tools = tools
        self.settings = settings
        self.sealer = sealing.Sealer(settings)

    def _check(self, spec: domain.AgentSpec) -> None:
        storable.check_metadata(spec.metadata, "agent", self.settings.max_metadata_bytes)
        unknown = [t.name for t in spec.tools if self.tools.get(t.name) is None]
        if unknown:
            raise errors.InvalidAgent(
                f"unknown tools: {', '.join(unknown)}",
                details={"unknown_tools": unknown, "available": self.tools.names()},
            )
        names = [t.name for t in spec.tools]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:  # which entry's policy would apply? Refuse rather than guess
            raise errors.InvalidAgent(
                f"tools lists {', '.join(repeated)} more than once: give each tool one entry",
                details={"duplicate_tools": repeated},
            )
        providers.check(spec.model, self.settings)

    def _seal(self, tenant: str, spec: domain.AgentSpec) -> domain.AgentSpec:
        """The agent as it is stored: its own API key, if any, sealed."""
        if spec.model.api_key is None:
            return spec
        sealed = self.sealer.seal(tenant, spec.model.api_key.get_secret_value())
        model = spec.model.model_copy(update={"api_key": None, "api_key_sealed": sealed})
        return spec.model_copy(update={"model": model})

    def _same_key(self, tenant: str, stored: domain.ModelSpec, given: domain.ModelSpec) -> bool:
        if given.api_key is None or stored.api_key_sealed is None:
            return given.api_key is None and stored.api_key_sealed is None
        try:
            stored_key = self.sealer.open(tenant, stored.api_key_sealed)
        except errors.ProviderKeyUnavailable:
            return False
        return stored_key == given.api_key.get_secret_value()

    async def create(self, tenant: str, spec: domain.AgentSpec) -> domain.Agent:
        self._check(spec)
        return await self.store.agents.create(tenant, self._seal(tenant, spec))

    async def upsert(self, tenant: str, spec: domain.AgentSpec) -> domain.Agent:
        """Create or replace the agent of that name (agents files, the demo agent)."""
        self._check(spec)
        try:
            current = await self.store.agents.get(tenant, spec.name)
        except errors.NotFound:
            return await self.store.agents.create(tenant, self._seal(tenant, spec))
        if current.spec.model_dump() == spec.model_dump() and self._same_key(
            tenant, current.spec.model, spec.model
        ):
            return current
        return await self.store.agents.update(tenant, current.id, self._seal(tenant, spec))

    async def find(self, tenant: str, ref: str) -> domain.Agent:
        """An agent by id or by name. A ref that is neither names nothing, and is not looked
        up (the store could not even compare some text, such as a NUL, with its names)."""
        named = len(ref) <= 128 and re.fullmatch(domain.AGENT_NAME_PATTERN, ref)
        if not named and not ids.valid("agt", ref):
            raise errors.NotFound(f"agent {ref!r} not found")
        return await self.store.agents.get(tenant, ref)

    async def get(self, tenant: str, agent_id: str) -> domain.Agent:
        return await self.store.agents.get(tenant, ids.check("agt", agent_id))

    async def page(self, tenant: str, limit: int, cursor: str | None) -> Page:
        return await self.store.agents.page(tenant, limit, cursor)

    async def update(self, tenant: str, agent_id: str, changes: dict[str, Any]) -> domain.Agent:
        """`changes` replace whole fields (`model` too); an own API key already stored is
        kept while the provider and base URL stay the same and no other key is named."""
        current = await self.get(tenant, agent_id)
        merged = {**current.spec.model_dump(mode="json"), **changes}
        try:
            spec = domain.AgentSpec.model_validate(merged)
        except ValueError as exc:
            raise errors.InvalidAgent(str(exc)) from exc
        spec = self._keep_key(current.spec.model, spec, changes.get("model"))
        self._check(spec)
        return await self.store.agents.update(tenant, agent_id, self._seal(tenant, spec))

    @staticmethod
    def _keep_key(
        before: domain.ModelSpec, spec: domain.AgentSpec, model_changes: dict[str, Any] | None
    ) -> domain.AgentSpec:
        """The stored own key carried into an updated agent, where that is what the update
        means. Sent elsewhere, a key the caller cannot read must be given again: otherwise a
        change of base URL could send it to a host of anyone's choosing."""
        if before.api_key_sealed is None:
            return spec
        after = spec.model
        if model_changes is not None and (
            "api_key" in model_changes or after.api_key_env is not None
        ):
            return spec  # a new key, or none (null), or a server-held one: as asked
        if (after.provider, after.base_url) != (before.provider, before.base_url):
            raise errors.InvalidAgent(
                "model.provider or model.base_url changed: give model.api_key again (or "
                "null to use a key held by the server)",
                details={"field": "model.api_key"},
            )
        model = after.model_copy(update={"api_key_sealed": before.api_key_sealed})
        return spec.model_copy(update={"model": model})

    async def delete(self, tenant: str, agent_id: str) -> None:
        await self.store.agents.delete(tenant, ids.check("agt", agent_id))
