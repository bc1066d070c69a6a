"""Agent definitions as tenants manage them (DESIGN §7, §8, §10): checked against the tools
and MCP servers this process has and what the operator allows, their own provider keys and
MCP headers sealed at rest and never handed back."""

from __future__ import annotations

import re
from typing import Any

from tether import domain, errors, ids, sealing, specs, storable
from tether.config import Settings
from tether.runtime import mcp_servers, providers, toolbox
from tether.runtime.tools import ToolRegistry
from tether.store import Page, Store


class Agents:
    def __init__(
        self,
        store: Store,
        tools: ToolRegistry,
        settings: Settings,
        mcp: mcp_servers.Servers | None = None,
    ):
        self.store = store
        self.tools = tools
        self.settings = settings
        self.sealer = sealing.Sealer(settings)
        self.mcp = mcp or mcp_servers.from_settings(settings)

    def _check(self, spec: specs.AgentSpec) -> None:
        storable.check_metadata(spec.metadata, "agent", self.settings.max_metadata_bytes)
        self.mcp.check(spec.mcp_servers)
        unknown = [t.name for t in spec.tools if not self._known(spec, t.name)]
        if unknown:
            servers = [s.name for s in spec.mcp_servers]
            raise errors.InvalidAgent(
                f"unknown tools: {', '.join(unknown)} (name a Python tool, `<server>.<tool>` "
                "of a server in mcp_servers, or a pattern such as `<server>.*`)",
                details={
                    "unknown_tools": unknown,
                    "available": self.tools.names(),
                    "mcp_servers": servers,
                },
            )
        names = [t.name for t in spec.tools]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:  # which entry's policy would apply? Refuse rather than guess
            raise errors.InvalidAgent(
                f"tools lists {', '.join(repeated)} more than once: give each tool one entry",
                details={"duplicate_tools": repeated},
            )
        providers.check(spec.model, self.settings)

    def _known(self, spec: specs.AgentSpec, name: str) -> bool:
        """Whether a tool entry names something. A pattern may match nothing (a server's
        tools change). An exact `<server>.<tool>` of a listed server is taken on trust: its
        tools are known only once a worker reaches it, and making an agent must not depend
        on a server being up (nor start servers on an API node). Anything else is refused:
        a typo would otherwise be a policy that silently applies to nothing."""
        if toolbox.is_pattern(name) or self.tools.get(name) is not None:
            return True
        server, dot, tool = name.partition(".")
        return bool(dot and tool) and any(s.name == server for s in spec.mcp_servers)

    def _seal(self, tenant: str, spec: specs.AgentSpec) -> specs.AgentSpec:
        """The agent as it is stored: its own API key and its MCP servers' headers, if any,
        sealed."""
        if spec.model.api_key is not None:
            sealed = self.sealer.seal(tenant, spec.model.api_key.get_secret_value())
            model = spec.model.model_copy(update={"api_key": None, "api_key_sealed": sealed})
            spec = spec.model_copy(update={"model": model})
        if any(s.headers is not None for s in spec.mcp_servers):
            servers = [self._seal_headers(tenant, s) for s in spec.mcp_servers]
            spec = spec.model_copy(update={"mcp_servers": servers})
        return spec

    def _seal_headers(self, tenant: str, server: specs.McpServerSpec) -> specs.McpServerSpec:
        if server.headers is None:
            return server
        plain = {k: v.get_secret_value() for k, v in server.headers.items()}
        try:
            sealed = self.sealer.seal(tenant, mcp_servers.seal_headers(plain)) if plain else None
        except errors.SecretKeyMissing as exc:
            raise errors.SecretKeyMissing(
                f"this server cannot store the headers of MCP server {server.name!r}: "
                "TETHER_SECRET_KEY is not configured; ask the operator to set a secret key",
                details={"field": "mcp_servers"},
            ) from exc
        return server.model_copy(update={"headers": None, "headers_sealed": sealed})

    def _same_headers(self, tenant: str, stored: specs.AgentSpec, given: specs.AgentSpec) -> bool:
        before = {s.name: s.headers_sealed for s in stored.mcp_servers}
        for server in given.mcp_servers:
            sealed = before.get(server.name)
            plain = {k: v.get_secret_value() for k, v in (server.headers or {}).items()}
            if sealed is None or not plain:
                if bool(sealed) != bool(plain):
                    return False
                continue
            try:
                opened = mcp_servers.unseal_headers(self.sealer.open(tenant, sealed))
            except errors.ProviderKeyUnavailable:
                return False
            if opened != plain:
                return False
        return True

    def _same_key(self, tenant: str, stored: specs.ModelSpec, given: specs.ModelSpec) -> bool:
        if given.api_key is None or stored.api_key_sealed is None:
            return given.api_key is None and stored.api_key_sealed is None
        try:
            stored_key = self.sealer.open(tenant, stored.api_key_sealed)
        except errors.ProviderKeyUnavailable:
            return False
        return stored_key == given.api_key.get_secret_value()

    async def create(self, tenant: str, spec: specs.AgentSpec) -> domain.Agent:
        self._check(spec)
        return await self.store.agents.create(tenant, self._seal(tenant, spec))

    async def upsert(self, tenant: str, spec: specs.AgentSpec) -> domain.Agent:
        """Create or replace the agent of that name (agents files, the demo agent)."""
        self._check(spec)
        try:
            current = await self.store.agents.get(tenant, spec.name)
        except errors.NotFound:
            return await self.store.agents.create(tenant, self._seal(tenant, spec))
        if (
            current.spec.model_dump() == spec.model_dump()
            and self._same_key(tenant, current.spec.model, spec.model)
            and self._same_headers(tenant, current.spec, spec)
        ):
            return current
        return await self.store.agents.update(tenant, current.id, self._seal(tenant, spec))

    async def find(self, tenant: str, ref: str) -> domain.Agent:
        """An agent by id or by name. A ref that is neither names nothing, and is not looked
        up (the store could not even compare some text, such as a NUL, with its names)."""
        named = len(ref) <= 128 and re.fullmatch(specs.AGENT_NAME_PATTERN, ref)
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
            spec = specs.AgentSpec.model_validate(merged)
        except ValueError as exc:
            raise errors.InvalidAgent(str(exc)) from exc
        spec = self._keep_key(current.spec.model, spec, changes.get("model"))
        spec = self._keep_headers(current.spec, spec, "mcp_servers" in changes)
        self._check(spec)
        return await self.store.agents.update(tenant, agent_id, self._seal(tenant, spec))

    @staticmethod
    def _keep_key(
        before: specs.ModelSpec, spec: specs.AgentSpec, model_changes: dict[str, Any] | None
    ) -> specs.AgentSpec:
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

    @staticmethod
    def _keep_headers(
        before: specs.AgentSpec, spec: specs.AgentSpec, servers_changed: bool
    ) -> specs.AgentSpec:
        """The stored headers of each MCP server carried into an updated agent, unless new
        ones are given (`{}`: none). As with the model's key, headers the caller cannot read
        are not sent to another URL: a server whose URL changed must be given them again."""
        stored = {s.name: s for s in before.mcp_servers if s.headers_sealed is not None}
        if not stored:
            return spec
        kept: list[specs.McpServerSpec] = []
        for server in spec.mcp_servers:
            old = stored.get(server.name)
            if old is None or server.headers is not None:
                kept.append(server)
                continue
            if servers_changed and server.url != old.url:
                raise errors.InvalidAgent(
                    f"the url of MCP server {server.name!r} changed: give its headers again "
                    "({} for none)",
                    details={"field": "mcp_servers"},
                )
            kept.append(server.model_copy(update={"headers_sealed": old.headers_sealed}))
        return spec.model_copy(update={"mcp_servers": kept})

    async def delete(self, tenant: str, agent_id: str) -> None:
        await self.store.agents.delete(tenant, ids.check("agt", agent_id))
